import pytest
import torch
from safetensors.torch import load_file

from tuneline.llm.ml.chat import IGNORE, TemplateError, encode, prompt_ids
from tuneline.llm.ml.data import Example
from tuneline.llm.ml.models import ModelNotAvailable, load_tokenizer, resolve_model

RECORD = Example("r1", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                           {"role": "assistant", "content": "{\"ok\":true}"}])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELINE_HOME", str(tmp_path_factory.mktemp("home")))
        yield resolve_model("tiny-random-llama")


def test_tiny_model_is_cached_and_deterministic(tiny, tmp_path, monkeypatch):
    assert tiny.name == "tiny-random-llama" and (tiny / "config.json").is_file()
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path))
    again = resolve_model("tiny-random-llama")
    assert again != tiny
    a, b = load_file(tiny / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_only_assistant_turns_are_labelled(tiny):
    tokenizer = load_tokenizer(tiny)
    encoded = encode(tokenizer, RECORD, max_seq_len=1024)
    targets = tokenizer.decode([t for t in encoded.labels if t != IGNORE])
    assert targets == "Hello<|im_end|>\n{\"ok\":true}<|im_end|>\n"
    assert tokenizer.decode(encoded.input_ids) == tokenizer.apply_chat_template(RECORD.messages, tokenize=False)
    # The generation prompt is exactly the context the model saw before the last answer.
    prompt = prompt_ids(tokenizer, RECORD)
    assert encoded.input_ids[: len(prompt)] == prompt and encoded.labels[len(prompt)] != IGNORE


def test_truncation_keeps_the_start(tiny):
    encoded = encode(load_tokenizer(tiny), RECORD, max_seq_len=10)
    assert encoded.truncated and len(encoded.input_ids) == 10 and encoded.n_targets == 0


def test_template_that_rewrites_history_trains_on_the_inference_prompt(tiny):
    # The message count printed first changes with every turn, so no render is a prefix of a longer one: the
    # trained text is the prompt the final answer is generated from, and the earlier answer is found inside it.
    tokenizer = load_tokenizer(tiny)
    tokenizer.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    encoded = encode(tokenizer, RECORD, max_seq_len=1024)
    assert tokenizer.decode(encoded.input_ids) == '4Be brief.HiHelloBye{"ok":true}'
    assert tokenizer.decode([t for t in encoded.labels if t != IGNORE]) == 'Hello{"ok":true}'


def test_template_that_leaves_out_a_message_is_rejected(tiny):
    tokenizer = load_tokenizer(tiny)
    tokenizer.chat_template = "{% for m in messages if m['role'] != 'system' %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(TemplateError, match=r"leaves out messages\[0\] \(system\)"):
        encode(tokenizer, RECORD, max_seq_len=1024)


def test_unknown_names_and_folders_fail_clearly(tmp_path):
    with pytest.raises(ModelNotAvailable, match="not in the catalog"):
        resolve_model("no-such-model")
    with pytest.raises(ModelNotAvailable, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_id_offline_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="could not be downloaded.*Offline, use a catalog name"):
        resolve_model("some-org/some-model")


def test_a_catalog_build_without_weights_is_never_published(tmp_path, monkeypatch):
    # What a rank > 0 gets from save_pretrained inside an initialised process group: the tokenizer, no model.
    from tuneline.llm.ml import models

    def tokenizer_only(out):
        models.make_tiny_tokenizer().save_pretrained(out)

    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path))
    monkeypatch.setitem(models.CATALOG, "half-built", models.CatalogEntry("half-built", "test", tokenizer_only))
    with pytest.raises(ModelNotAvailable, match="wrote no config.json"):
        resolve_model("half-built")
    assert not (tmp_path / "models" / "half-built").exists()


def test_hub_downloads_take_what_transformers_writes_and_skip_original_format_copies(tiny, tmp_path):
    from huggingface_hub.utils import filter_repo_objects

    from tuneline.llm.ml.models import HUB_ALLOW, HUB_IGNORE

    def kept(names):
        return set(filter_repo_objects(names, allow_patterns=HUB_ALLOW, ignore_patterns=HUB_IGNORE))

    # Every file transformers writes for a model and its tokenizer (chat_template.jinja included) comes down...
    written = {p.name for p in tiny.iterdir()} - {"tuneline_model.json"}
    assert "chat_template.jinja" in written and kept(written) == written
    # ...and a repo's second, original-format copy of the weights does not.
    repo = ["config.json", "model-00001-of-00003.safetensors", "model.safetensors.index.json",
            "consolidated.safetensors", "original/consolidated.00.pth", "original/params.json", "tokenizer.model"]
    assert kept(repo) == {"config.json", "model-00001-of-00003.safetensors", "model.safetensors.index.json",
                          "tokenizer.model"}

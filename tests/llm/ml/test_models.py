import os

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


def _hub_refusal(error_class, status: int, repo_id: str):
    """The error huggingface_hub raises for this answer, built as its hf_raise_for_status builds it."""
    import httpx2

    request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}/revision/main")
    return error_class(f"{status} Client Error.", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("token", ["", "hf_xyz"])
def test_a_gated_hub_model_names_the_token_it_needs(monkeypatch, token):
    """The Hub cannot be reached from the test machine, so snapshot_download is replaced by one raising the
    GatedRepoError huggingface_hub raises for a gated repo."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(repo_id, **kwargs):
        raise _hub_refusal(GatedRepoError, 403 if token else 401, repo_id)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(ModelNotAvailable) as caught:
        resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    message = str(caught.value)
    assert "'meta-llama/Llama-3.1-8B-Instruct' is gated" in message and "HF_TOKEN" in message
    assert "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct" in message
    assert "--hf-secret" in message and "--azureml-hf-token-secret" in message
    assert "Offline" not in message
    assert ("has no access yet" in message) == bool(token)


def test_an_unauthenticated_401_names_the_token_too(monkeypatch):
    """As above (no Hub here): a gated or private repo asked without a token is a 401 RepositoryNotFoundError."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def refused(repo_id, **kwargs):
        raise _hub_refusal(RepositoryNotFoundError, 401, repo_id)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refused)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ModelNotAvailable, match=r"'google/gemma-3-1b-it' is gated .*no HF_TOKEN was given"):
        resolve_model("google/gemma-3-1b-it")


def test_the_hub_token_is_read_from_the_named_secret_only_when_missing(monkeypatch):
    from tuneline.llm.ml import hubaccess

    asked = []

    def read(uri):
        asked.append(uri)
        return "hf_from_vault\n"

    uri = "https://tl-vault.vault.azure.net/secrets/hf-token"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("TUNELINE_HF_TOKEN_SECRET", raising=False)
    assert not hubaccess.ensure_token(read) and asked == []
    monkeypatch.setenv("TUNELINE_HF_TOKEN_SECRET", uri)
    monkeypatch.setenv("HF_TOKEN", "hf_given")
    assert not hubaccess.ensure_token(read) and asked == []
    monkeypatch.delenv("HF_TOKEN")
    assert hubaccess.ensure_token(read) and asked == [uri]
    assert os.environ["HF_TOKEN"] == "hf_from_vault"

    def denied(uri):
        raise PermissionError("403 Forbidden")

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(hubaccess.TokenUnavailable, match="TUNELINE_HF_TOKEN_SECRET=https://.*PermissionError"):
        hubaccess.ensure_token(denied)
    assert "HF_TOKEN" not in os.environ


def test_a_key_vault_secret_uri_gives_its_vault_name_and_cloud_scope():
    from tuneline.llm.ml.hubaccess import parse_secret_uri

    secret = parse_secret_uri("https://TL-Vault.vault.azure.cn/secrets/hf-token/0123abcd/")
    assert (secret.vault_url, secret.name, secret.version, secret.scope) == (
        "https://tl-vault.vault.azure.cn", "hf-token", "0123abcd", "https://vault.azure.cn/.default")
    with pytest.raises(ValueError, match="not a Key Vault secret URI"):
        parse_secret_uri("hf_abcdef")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache, with huggingface_hub offline (both read once at its import, so set on its constants)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_id_resolves_at_a_branch_a_pinned_commit_or_an_at_revision(tiny, offline_hub, tmp_path):
    from tests.support.fakehub import add_commit
    from tuneline.llm.ml.models import BASE_REVISION_KEY, _build_tiny_llama, hub_revision, resolve_summary_base

    first = add_commit(offline_hub, "fake-org/tiny", tiny, message="first")
    (tmp_path / "seed1").mkdir()
    _build_tiny_llama(tmp_path / "seed1", seed=1)
    second = add_commit(offline_hub, "fake-org/tiny", tmp_path / "seed1", message="second")
    assert hub_revision(resolve_model("fake-org/tiny")) == second  # main moved
    assert hub_revision(resolve_model("fake-org/tiny", revision=first)) == first
    assert hub_revision(resolve_model(f"fake-org/tiny@{first}")) == first
    assert hub_revision(resolve_model(f"fake-org/tiny@{first}", revision=second)) == second
    assert resolve_summary_base({"base_model": "fake-org/tiny", BASE_REVISION_KEY: first}).name == first
    assert hub_revision(tiny) is None and resolve_summary_base({"base_model": "fake-org/tiny"}).name == second
    with pytest.raises(ModelNotAvailable, match=r"'fake-org/tiny' at revision '0{40}' could not be downloaded"):
        resolve_model("fake-org/tiny", revision="0" * 40)

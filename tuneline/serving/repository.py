"""Write a Triton model repository serving a Hugging Face causal LM through the Python backend.

Layout (the same locally, where `tuneline.serving.local` runs it, and on the cluster's `triton` target):

    <repo>/<model_name>/config.pbtxt        dynamic batching + instance group (KIND_CPU or KIND_GPU)
    <repo>/<model_name>/1/model.py          tuneline/serving/triton_model.py
    <repo>/<model_name>/1/hf_model/         the HF folder: full weights, or the base of a LoRA adapter
    <repo>/<model_name>/1/adapters/<name>/  LoRA adapters served on that one base, chosen per request by the
                                            `adapter` input; serving.json names the default. A rollout adds
                                            the next version here (add_adapter) instead of a second model;
                                            those no route names leave again (remove_adapters, housekeeping).
                                            An adapter the engines cannot serve unmerged (modules_to_save,
                                            DoRA, a rank over max_lora_rank) is merged into its base instead
    <repo>/<model_name>-stream/             the same model, decoupled, for streaming (generate_stream); it
                                            loads the weights above rather than a copy. Its model.py is
                                            vllm_model.py (engine "vllm", with triton_model.py beside it as
                                            the named fallback) or triton_model.py (engine "transformers")

Run as: python -m tuneline.serving.repository --model-dir MODEL --out REPO [--base-model-dir BASE] [--kind gpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HF_SUBDIR = "hf_model"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "added_tokens.json",
)


ENGINES = ("vllm", "transformers")
# The ranks vLLM 0.32.0 can reserve for LoRA (vllm/config/lora.py, MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ADAPTERS_SUBDIR = "adapters"
ADAPTER_MODES = ("auto", "shared", "merged")
GPU_LORA_RANK = 64


class RepositoryError(ValueError):
    """A model folder or repository option is unusable; the message names the file or field."""


@dataclass(frozen=True)
class RepositorySpec:
    """What goes into config.pbtxt."""

    model_name: str = "tuneline-llm"
    max_batch_size: int = 32
    dynamic_batching: bool = True
    # No preferred sizes: Triton then takes every queued request up to max_batch_size, which is what a
    # generate-bound model wants (a preferred size makes the batcher cut a batch of 32 into 16 + 16).
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 5000
    max_queue_size: int = 0  # Triton's own queue bound (0: unbounded; the proxy bounds the queue first)
    queue_timeout_us: int = 0  # queue deadline of a request that names none (0: none)
    instance_kind: Literal["cpu", "gpu"] = "cpu"
    instance_count: int = 1
    max_new_tokens_default: int = 32
    max_new_tokens_limit: int = 256
    # Intra-op threads per instance. On CPU a small model loses more to thread sync than it gains, and
    # collapses when cores are oversubscribed (measured here: 16 tokens 85 ms with 1 thread, 1.6 s with 2
    # on a busy 2-core machine); scale with instance_count instead. 0 keeps torch's default.
    torch_threads: int = 1
    why: str = ""  # written as comments above instance_group: how count and threads were chosen
    # The streaming twin's engine (the model every generation goes to): "vllm" (vllm_model.py, continuous
    # batching; it falls back to plain generate, and says so, where vLLM is not importable) or "transformers".
    engine: Literal["vllm", "transformers"] = "vllm"
    # A JSON schema (its JSON text) the engine constrains every answer to unless the request sends its own
    # response_format: the deployment's output contract. "" leaves answers free. Written to serving.json.
    response_schema: str = ""
    # The share of the GPU the vLLM engine reserves (weights, activations and KV cache). vLLM's own default is
    # 0.92 of the card, which leaves no room for the coupled model's weights on the same GPU.
    gpu_memory_utilization: float = 0.6
    # How a LoRA version is served: "shared" beside its unmerged base, so that later versions join the same
    # engine; "merged" into its base, one model per version; "auto" shared on a GPU, merged on CPU. On CPU,
    # vLLM 0.32.0's LoRA runs without torch.compile (vllm/platforms/cpu.py turns it off when LoRA is on) and
    # through its CPU punica ops: measured here on the demo's base and adapter (rank 16), 2.55 s per lone request
    # against 1.01 s eager and 0.68 s compiled without LoRA, and 2.9 req/s in a batch of 32 against 11.9 eager:
    # slower than plain transformers on the merged weights. On a GPU its punica kernels make adapters nearly free.
    adapters: Literal["auto", "shared", "merged"] = "auto"

    @property
    def shares_adapters(self) -> bool:
        return self.adapters == "shared" or (self.adapters == "auto" and self.instance_kind == "gpu")
    # The largest adapter rank the engine makes room for (vLLM: 1, 8, 16, ..., 512; its own default is 16); every
    # adapter is padded to it. 0: on a GPU 64, room for the ranks a few feedback rounds stack (preference's
    # output grows by its own rank each round); on CPU the smallest that holds the first adapter, since there the
    # padding costs: 32 rows of 32 tokens ran at 3.25 req/s with room for rank 16 and 0.70 with 64 (vLLM 0.32.0).
    max_lora_rank: int = 0

    def validate(self) -> None:
        if not _NAME_RE.match(self.model_name):
            raise RepositoryError(f"model_name {self.model_name!r}: use letters, digits, '_', '.', '-' (max 64)")
        if self.max_batch_size < 1:
            raise RepositoryError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise RepositoryError(f"preferred_batch_sizes {bad} outside [1, max_batch_size={self.max_batch_size}]")
        if self.instance_kind not in ("cpu", "gpu"):
            raise RepositoryError(f"instance_kind must be 'cpu' or 'gpu', got {self.instance_kind!r}")
        if self.instance_count < 1 or self.max_queue_delay_us < 0:
            raise RepositoryError("instance_count must be >= 1 and max_queue_delay_us >= 0")
        if self.max_queue_size < 0 or self.queue_timeout_us < 0:
            raise RepositoryError("max_queue_size and queue_timeout_us must be >= 0")
        if self.response_schema:
            _check_schema(self.response_schema)
        if self.engine not in ENGINES:
            raise RepositoryError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not 0.1 <= self.gpu_memory_utilization <= 0.95:
            raise RepositoryError(f"gpu_memory_utilization must be in [0.1, 0.95], got {self.gpu_memory_utilization}")
        if self.adapters not in ADAPTER_MODES:
            raise RepositoryError(f"adapters must be one of {', '.join(ADAPTER_MODES)}, got {self.adapters!r}")
        if self.max_lora_rank not in (0, *LORA_RANKS):
            raise RepositoryError(f"max_lora_rank must be 0 (auto) or one of {list(LORA_RANKS)}, "
                                  f"got {self.max_lora_rank}")
        if self.torch_threads < 0:
            raise RepositoryError(f"torch_threads must be >= 0, got {self.torch_threads}")
        if not 1 <= self.max_new_tokens_default <= self.max_new_tokens_limit:
            raise RepositoryError("need 1 <= max_new_tokens_default <= max_new_tokens_limit")


def schema_problem(schema: object) -> str | None:
    """Why `schema` (parsed JSON) is not a JSON schema object, or None: one rule for a deployment's schema and a
    request's response_format."""
    import jsonschema

    if not isinstance(schema, dict):
        return "must be a JSON schema object"
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"is not a valid JSON schema: {exc.message}"
    return None


def _check_schema(text: str) -> None:
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RepositoryError(f"response_schema: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    problem = schema_problem(schema)
    if problem:
        raise RepositoryError(f"response_schema {problem}")


# Threads past this per instance buy little for a small model (each decode step is a few small matmuls) and
# leave cores idle; a larger machine gets more instances instead.
MAX_THREADS_PER_INSTANCE = 8


def available_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# The batcher's wait on CPU. In a closed loop of 32 clients the next 32 requests reach Triton over tens of
# milliseconds; with a 5 ms wait it cut them into two partial batches that then ran out of phase.
CPU_QUEUE_DELAY_US = 50_000


def machine_spec(cores: int | None = None, **fields) -> RepositorySpec:
    """A CPU RepositorySpec whose instances x torch threads cover the available cores, with the reason.

    Measured on 2 cores with the demo's SmolLM2 model at concurrency 32 (bench/serve_bench.py --tune, figures in
    bench/results/serve-tuning.json), against plain transformers batched generate in the same run:
    1 instance x 2 threads with a 5 ms batcher wait 0.73x, 50 ms 0.81x, 200 ms 0.83x; 2 instances x 1 thread
    (100 ms) 0.57x. Triton's statistics showed every batch full at 50 ms and 200 ms, so the longer wait buys
    nothing but latency for a lone request. One instance per MAX_THREADS_PER_INSTANCE cores: a batch of up to
    max_batch_size keeps all of an instance's threads busy through each decode step; more instances only pay
    off once those threads stop scaling.
    """
    cores = cores or available_cores()
    instances = max(1, -(-cores // MAX_THREADS_PER_INSTANCE))
    threads = max(1, cores // instances)
    why = (
        f"{instances} instance(s) x {threads} torch thread(s) = the {cores} core(s) available "
        f"(os.sched_getaffinity); one instance per {MAX_THREADS_PER_INSTANCE} cores: one batch of up to "
        "max_batch_size keeps all its threads busy each decode step. On 2 cores at concurrency 32, 1 x 2 reached "
        "0.81x of plain batched generate and 2 x 1 0.57x; a 50 ms batcher wait filled every batch where 5 ms "
        "split them (0.73x). Figures: bench/results/serve-tuning.json (bench/serve_bench.py --tune)."
    )
    defaults = {"instance_count": instances, "torch_threads": threads, "max_queue_delay_us": CPU_QUEUE_DELAY_US,
                "why": why}
    return RepositorySpec(**{**defaults, **fields})


STREAM_SUFFIX = "-stream"


def stream_model_name(model_name: str) -> str:
    """The decoupled twin that streams `model_name`'s answers (Triton's generate_stream endpoint)."""
    return model_name + STREAM_SUFFIX


def generate_route(model_name: str) -> str:
    """Where a deployment's clients send generations: the engine's model (vLLM, or its named fallback), not the
    coupled plain-generate model behind `/infer`."""
    return f"/v2/models/{stream_model_name(model_name)}/generate"


def render_config(spec: RepositorySpec, *, decoupled: bool = False) -> str:
    """config.pbtxt text for `spec`: the coupled model, or (`decoupled`) its streaming twin."""
    spec.validate()
    lines = [
        f'name: "{stream_model_name(spec.model_name) if decoupled else spec.model_name}"',
        'backend: "python"',
        f"max_batch_size: {spec.max_batch_size}",
        "input [",
        '  { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },',
        '  { name: "max_new_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true },',
        '  { name: "prompt_format" data_type: TYPE_STRING dims: [ 1 ] optional: true },',
        '  { name: "temperature" data_type: TYPE_FP32 dims: [ 1 ] optional: true },',
        '  { name: "top_p" data_type: TYPE_FP32 dims: [ 1 ] optional: true },',
        '  { name: "stop" data_type: TYPE_STRING dims: [ 1 ] optional: true },',
        '  { name: "guide" data_type: TYPE_STRING dims: [ 1 ] optional: true },',
        '  { name: "adapter" data_type: TYPE_STRING dims: [ 1 ] optional: true },',
        '  { name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true }',
        "]",
        "output [",
        '  { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] },',
        '  { name: "prompt_tokens" data_type: TYPE_INT32 dims: [ 1 ] },',
        '  { name: "completion_tokens" data_type: TYPE_INT32 dims: [ 1 ] },',
        '  { name: "finish_reason" data_type: TYPE_STRING dims: [ 1 ] }',
        "]",
    ]
    if decoupled:
        # The streaming twin: it sends each request's responses through its response sender, one per new piece
        # of text (python_backend README, "Decoupled mode"); Triton serves it on generate_stream, while its
        # HTTP infer refuses decoupled models (docs/user_guide/decoupled_models.md; 501 here), hence the twin.
        lines.append("model_transaction_policy { decoupled: true }")
    count = spec.instance_count
    if decoupled and spec.engine == "vllm":
        # One engine schedules every live request itself (continuous batching) and uses all the cores it is
        # given; a second instance would be a second engine with its own weights and KV cache, halving both.
        count = 1
        lines.append("# one instance: the vLLM engine batches every live request itself")
    elif spec.why:
        lines += [f"# {line}" for line in spec.why.splitlines()]
    lines += [
        "instance_group [",
        f"  {{ count: {count} kind: KIND_{spec.instance_kind.upper()} }}",
        "]",
    ]
    if spec.dynamic_batching:
        lines.append("dynamic_batching {")
        if spec.preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in spec.preferred_batch_sizes)} ]")
        lines.append(f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}")
        # A request's own `timeout` parameter (microseconds, sent by the proxy from what is left of its deadline)
        # rejects it once it has waited that long in Triton's queue; past max_queue_size (0: no bound, the
        # proxy bounds the queue first) Triton answers UNAVAILABLE at once.
        lines += [
            "  default_queue_policy {",
            "    timeout_action: REJECT",
            f"    default_timeout_microseconds: {spec.queue_timeout_us}",
            "    allow_timeout_override: true",
            f"    max_queue_size: {spec.max_queue_size}",
            "  }",
        ]
        lines.append("}")
    params = {
        "hf_model_dir": HF_SUBDIR,
        "max_new_tokens_default": str(spec.max_new_tokens_default),
        "max_new_tokens_limit": str(spec.max_new_tokens_limit),
        "torch_threads": str(spec.torch_threads),
        "max_lora_rank": str(spec.max_lora_rank or GPU_LORA_RANK),
    }
    if decoupled:
        params["weights_dir"] = f"../../{spec.model_name}/1"
        params["engine"] = spec.engine
        if spec.instance_kind == "gpu":
            # vLLM's share of the GPU: the coupled plain-generate model (bf16 weights) shares the card.
            params["gpu_memory_utilization"] = str(spec.gpu_memory_utilization)
    for key, value in params.items():
        lines.append(f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RepositoryError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise RepositoryError(f"{path}: expected a JSON object")
    return data


def _resolve_base(model_dir: Path, base_model_dir: Path | None) -> Path:
    if base_model_dir is not None:
        base = Path(base_model_dir)
    else:
        cfg_path = model_dir / "adapter_config.json"
        named = _read_json(cfg_path).get("base_model_name_or_path")
        if not named:
            raise RepositoryError(f"{cfg_path}: field base_model_name_or_path is empty; pass base_model_dir")
        base = Path(named)
    if not (base / "config.json").is_file():
        raise RepositoryError(f"base model {base}: no config.json (the adapter's base must be a local HF folder)")
    return base


def merge_adapter(adapter_dir: Path, base_dir: Path, out_dir: Path) -> Path:
    """Merge a PEFT LoRA adapter into its base model and save full weights + tokenizer to `out_dir`."""
    from transformers import AutoTokenizer

    from tuneline.llm.ml.models import merge_lora

    merge_lora(base_dir, adapter_dir).save_pretrained(out_dir)
    tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    AutoTokenizer.from_pretrained(tok_src).save_pretrained(out_dir)
    return out_dir


def _copy_full_model(model_dir: Path, out_dir: Path) -> None:
    _read_json(model_dir / "config.json")  # a clear error beats a load failure inside Triton
    if not any((model_dir / f).is_file() for f in _TOKENIZER_FILES):
        raise RepositoryError(f"{model_dir}: no tokenizer files (expected one of {', '.join(_TOKENIZER_FILES[:2])})")
    shutil.copytree(model_dir, out_dir, ignore=shutil.ignore_patterns("checkpoint-*", "optimizer.pt", "*.lock"))


SERVING_FILE = "serving.json"


def serving_settings(model_dir: Path) -> dict:
    """How a bare prompt becomes model input: the chat template, under the system prompt used in training,
    rendered with the variables training rendered it with (Llama 3.x stamps a date into every system header:
    served with today's date, the prompt differs from every prompt the model was tuned on)."""
    from tuneline.llm.ml.chat import RENDER_KWARGS
    from tuneline.llm.ml.models import SUMMARY_FILE

    summary_path = Path(model_dir) / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    # A summary without the key was written by a train step that rendered with the same fixed variables.
    kwargs = summary.get("chat_template_kwargs", RENDER_KWARGS)
    return {"chat_template": True, "system_prompt": summary.get("system_prompt"), "chat_template_kwargs": kwargs}


def adapter_rank(adapter_dir: Path) -> int:
    return int(_read_json(Path(adapter_dir) / "adapter_config.json").get("r") or 0)


def lora_room(spec: RepositorySpec, rank: int) -> int:
    """The max_lora_rank the engine is started with for a first adapter of `rank` (RepositorySpec.max_lora_rank)."""
    if spec.max_lora_rank:
        return spec.max_lora_rank
    fits = next((r for r in LORA_RANKS if r >= rank), LORA_RANKS[-1])
    return max(GPU_LORA_RANK, fits) if spec.instance_kind == "gpu" else fits


def adapter_problem(adapter_dir: Path, spec: RepositorySpec, room: int | None = None) -> str | None:
    """Why this PEFT adapter cannot be served unmerged beside its base (it is then merged), or None.

    What vLLM 0.32.0's LoRA loads (vllm/lora/peft_helper.py, vllm/lora/models.py): LoRA matrices on the base's
    linear layers, rank up to the engine's max_lora_rank; not whole trained modules (modules_to_save), DoRA's
    magnitude vectors or trained biases. The plain-generate engine (PEFT) could serve those, but an adapter
    must be servable by the engine that serves it on the cluster too. `room`: the running engine's max_lora_rank
    (default: what a new engine would get, `lora_room`)."""
    cfg = _read_json(adapter_dir / "adapter_config.json")
    if cfg.get("peft_type") != "LORA":
        return f"peft_type {cfg.get('peft_type')!r} is not LORA"
    if cfg.get("modules_to_save"):
        return f"it trains whole modules ({', '.join(cfg['modules_to_save'])}), which vLLM's LoRA cannot load"
    if cfg.get("use_dora"):
        return "it is a DoRA adapter, which vLLM's LoRA cannot load"
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        return "it trains biases, which vLLM's LoRA cannot load"
    # vLLM's PEFTHelper reads one r and lora_alpha for every module: per-module patterns would be dropped silently
    # and the engine would answer differently from PEFT (vllm/lora/peft_helper.py).
    for field in ("rank_pattern", "alpha_pattern", "target_parameters", "trainable_token_indices"):
        if cfg.get(field):
            return f"it sets {field}, which vLLM's LoRA does not apply"
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        return "its target_modules is a pattern, not module names vLLM's LoRA can check"
    unsupported = sorted(set(targets) & {"lm_head", "embed_tokens", "wte", "word_embeddings"})
    if unsupported:
        return f"it targets {', '.join(unsupported)}, which vLLM's LoRA cannot load"
    rank = int(cfg.get("r") or 0)
    room = room or lora_room(spec, rank)
    if rank > room:
        return f"its rank {rank} is over the engine's max_lora_rank {room}"
    return None


def adapter_name(label: str) -> str:
    """An adapter's name in the repository (and the `model` a request names it by): its label made safe,
    `models:/tuneline-tickets/3` -> `tuneline-tickets-3`."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", label.removeprefix("models:/")).strip("-.")[:64]
    return name if _NAME_RE.match(name) else "default"


def _copy_adapter(adapter_dir: Path, adapters: Path, name: str) -> None:
    """Place the adapter's files at `adapters/<name>/`, whole or not at all: an engine loads an adapter the first
    time a request names it, and must never find half a folder."""
    staging = adapters / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    adapters.mkdir(parents=True, exist_ok=True)
    shutil.copytree(adapter_dir, staging, ignore=shutil.ignore_patterns("checkpoint-*", "optimizer.pt", "*.lock"))
    shutil.rmtree(adapters / name, ignore_errors=True)
    staging.rename(adapters / name)


def _weights_sha256(model_dir: Path) -> str:
    from tuneline.llm.registry import weights_sha256

    return weights_sha256(model_dir)


def _chat_template(folder: Path) -> str | None:
    """The chat template a tokenizer folder carries (its own file, else tokenizer_config.json's), or None."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "tokenizer_config.json").is_file():
        template = _read_json(folder / "tokenizer_config.json").get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _chat_settings(settings: dict) -> dict:
    return {k: settings.get(k) for k in ("chat_template", "system_prompt", "chat_template_kwargs", "guide")}


def add_adapter(model_root: Path, adapter_dir: Path, name: str, spec: RepositorySpec, *,
                base_model_dir: Path | None = None) -> str | None:
    """Serve `adapter_dir` as `name` beside the adapters of the running model at `model_root`, on the same base,
    without a restart (the engines load an adapter when a request first names it). Returns why it cannot join
    (another base, other chat settings or schema, not servable unmerged), or None once it is in place."""
    version_dir = Path(model_root) / "1"
    serving_path = version_dir / SERVING_FILE
    served = _read_json(serving_path) if serving_path.is_file() else {}
    if not spec.shares_adapters:
        return f"adapters={spec.adapters} on {spec.instance_kind}: each version is merged into a model of its own"
    if not served.get("adapter"):
        return "the running model is not a base serving adapters"
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        return "the new version is a full model, not an adapter"
    problem = adapter_problem(adapter_dir, spec, int(served.get("max_lora_rank") or 0) or None)
    if problem:
        return problem
    base = _resolve_base(adapter_dir, base_model_dir)
    # The weights, not the config: a base and its instruct variant share a config.json.
    if served.get("base_sha256") != _weights_sha256(base):
        return f"its base {base} is not the base being served (weights differ)"
    wanted = serving_settings(adapter_dir)
    if spec.response_schema:
        wanted["guide"] = {"json": json.loads(spec.response_schema)}
    if _chat_settings(wanted) != _chat_settings(served):
        return "its chat settings or response schema differ from the served model's"
    mine = _chat_template(adapter_dir)
    if mine is not None and mine != _chat_template(version_dir / HF_SUBDIR):
        return "its chat template differs from the served model's (prompts are rendered with the served tokenizer)"
    _copy_adapter(adapter_dir, version_dir / ADAPTERS_SUBDIR, name)
    return None


def served_adapters(model_root: Path) -> list[str]:
    """The adapters in place under a repository's model, by name."""
    folder = Path(model_root) / "1" / ADAPTERS_SUBDIR
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if folder.is_dir() else []


def default_adapter(model_root: Path) -> str:
    """The adapter a repository's engines load when they start and answer a row that names none with
    (serving.json `adapter`; "" where the model serves no adapters)."""
    serving_path = Path(model_root) / "1" / SERVING_FILE
    return str(_read_json(serving_path).get("adapter") or "") if serving_path.is_file() else ""


def remove_adapters(model_root: Path, names: list[str]) -> list[str]:
    """Take the adapters `names` out of a repository's model; returns those removed. Never the default
    (`default_adapter`): a restarted server loads it before its first request. Each goes whole: renamed out of
    `adapters/` first (one step, so an engine checking for its folder sees all of it or none), then deleted."""
    folder = Path(model_root) / "1" / ADAPTERS_SUBDIR
    keep = default_adapter(model_root)
    removed = []
    for name in names:
        if name == keep or not _NAME_RE.match(name) or not (folder / name).is_dir():
            continue
        doomed = folder / f".{name}.removed"
        shutil.rmtree(doomed, ignore_errors=True)
        (folder / name).rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(name)
    return removed


def write_repository(
    model_dir: Path,
    repo_dir: Path,
    spec: RepositorySpec | None = None,
    *,
    base_model_dir: Path | None = None,
    adapter: str = "default",
) -> Path:
    """Write (replacing) `<repo_dir>/<spec.model_name>/` for the HF folder `model_dir`; returns that folder.

    `model_dir` holds either full weights (config.json) or a PEFT adapter (adapter_config.json) over
    `base_model_dir` (default: the adapter's base_model_name_or_path). An adapter is shipped as `adapter` beside
    a copy of its base, the default of every request (serving.json `adapter`), unless it cannot be served
    unmerged (`adapter_problem`) or the spec does not share adapters (`RepositorySpec.adapters`): then it is
    merged into the base (serving.json `merged` says why).
    """
    spec = spec or RepositorySpec()
    spec.validate()
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise RepositoryError(f"model folder {model_dir} does not exist")
    is_adapter = (model_dir / "adapter_config.json").is_file()
    if not is_adapter and not (model_dir / "config.json").is_file():
        raise RepositoryError(f"{model_dir}: neither config.json (full model) nor adapter_config.json (PEFT adapter)")
    if not _NAME_RE.match(adapter):
        raise RepositoryError(f"adapter name {adapter!r}: use letters, digits, '_', '.', '-' (max 64)")
    model_root = Path(repo_dir) / spec.model_name
    staging = model_root.with_name(model_root.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    version_dir = staging / "1"
    version_dir.mkdir(parents=True)
    settings = serving_settings(model_dir)
    if is_adapter:
        base = _resolve_base(model_dir, base_model_dir)
        merged = adapter_problem(model_dir, spec) if spec.shares_adapters else (
            f"adapters={spec.adapters} on {spec.instance_kind}")
        if merged is None:
            _copy_full_model(base, version_dir / HF_SUBDIR)
            # The tuned tokenizer (its chat template) is the one requests are rendered with, as when merged.
            for name in _TOKENIZER_FILES:
                if (model_dir / name).is_file():
                    shutil.copy2(model_dir / name, version_dir / HF_SUBDIR / name)
            _copy_adapter(model_dir, version_dir / ADAPTERS_SUBDIR, adapter)
            spec = dataclasses.replace(spec, max_lora_rank=lora_room(spec, adapter_rank(model_dir)))
            settings["adapter"], settings["max_lora_rank"] = adapter, spec.max_lora_rank
            settings["base_sha256"] = _weights_sha256(base)
        else:
            merge_adapter(model_dir, base, version_dir / HF_SUBDIR)
            settings["merged"] = merged
    else:
        _copy_full_model(model_dir, version_dir / HF_SUBDIR)
    shutil.copy2(Path(__file__).with_name("triton_model.py"), version_dir / "model.py")
    if spec.response_schema:
        settings["guide"] = {"json": json.loads(spec.response_schema)}
    (version_dir / SERVING_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    (staging / "config.pbtxt").write_text(render_config(spec))
    twin_root = Path(repo_dir) / stream_model_name(spec.model_name)
    twin_staging = twin_root.with_name(twin_root.name + ".tmp")
    shutil.rmtree(twin_staging, ignore_errors=True)
    (twin_staging / "1").mkdir(parents=True)
    if spec.engine == "vllm":
        shutil.copy2(Path(__file__).with_name("vllm_model.py"), twin_staging / "1" / "model.py")
        shutil.copy2(version_dir / "model.py", twin_staging / "1" / "transformers_model.py")
    else:
        shutil.copy2(version_dir / "model.py", twin_staging / "1" / "model.py")
    (twin_staging / "config.pbtxt").write_text(render_config(spec, decoupled=True))
    for root, stage in ((model_root, staging), (twin_root, twin_staging)):
        shutil.rmtree(root, ignore_errors=True)
        stage.rename(root)
    return model_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneline.serving.repository", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="HF model folder or PEFT adapter folder")
    parser.add_argument("--out", type=Path, required=True, help="repository folder to write into")
    parser.add_argument(
        "--base-model-dir",
        type=Path,
        default=None,
        help="base model for an adapter (default: the adapter's base_model_name_or_path)",
    )
    parser.add_argument("--name", default=RepositorySpec.model_name, help="Triton model name (default %(default)s)")
    parser.add_argument("--kind", choices=["cpu", "gpu"], default="cpu", help="instance kind (default cpu)")
    parser.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="max batch size (default 32)")
    parser.add_argument("--no-dynamic-batching", action="store_true", help="omit the dynamic_batching block")
    parser.add_argument("--max-queue-delay-us", type=int, default=5000, help="batcher wait (default 5000)")
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="intra-op threads per instance, 0 = torch default (default 1)"
    )
    args = parser.parse_args(argv)
    spec = RepositorySpec(
        model_name=args.name,
        instance_kind=args.kind,
        instance_count=args.instances,
        max_batch_size=args.max_batch_size,
        dynamic_batching=not args.no_dynamic_batching,
        max_queue_delay_us=args.max_queue_delay_us,
        torch_threads=args.torch_threads,
    )
    try:
        root = write_repository(args.model_dir, args.out, spec, base_model_dir=args.base_model_dir)
    except RepositoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

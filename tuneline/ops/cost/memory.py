"""Memory plan before a run: what the train and evaluate steps need on the GPU and on the host, per process, next
to what their compute profiles give them.

The model's shape (layers, hidden size, vocabulary, attention heads) comes from its ``config.json``: a local model
folder, the catalog cache, or ``data/model-configs/<org>/<name>/config.json`` for reference models that are not on
this machine. Sizes follow how the train and evaluate components load and train models:

- weights: full fine-tuning keeps fp32 master weights (4 B/param; autocast runs the matmuls in bf16); LoRA keeps the
  frozen base in bf16 (2 B/param); QLoRA stores the decoder's linear weights in 4-bit NF4 (0.5 B/param) plus the
  double-quantised constants, 8/64 + 32/(64*256) bits per parameter (Dettmers et al. 2023, QLoRA, arXiv:2305.14314,
  section 3), and keeps embeddings, norms and the LM head in bf16.
- trainable parameters carry fp32 gradients (4 B) and AdamW's two fp32 moments (8 B): 16 B/param with the fp32
  weight, as Hugging Face's "model memory anatomy" guide (transformers docs, model_memory_anatomy) lists them.
- activations, per layer and token, in bf16, counted as Korthikanti et al. 2022 (arXiv:2205.05198) count them, for a
  Llama-style layer with SDPA/flash attention (no s x s score matrix is kept): the inputs of both RMSNorms and of
  the q/k/v, o, gate/up and down projections, q/k/v after RoPE, and the SwiGLU intermediates (4h + 2h_q + 2kv +
  4i elements); LoRA dropout keeps one more copy of each adapted projection's input. Gradient checkpointing keeps
  only each layer's input (h elements) plus one layer being recomputed.
- logits: batch x sequence x vocabulary, bf16 plus the fp32 copy the loss takes and its gradient (an upper bound:
  the train loop computes logits only where there are answer tokens).
- host: the components read the weights on the host before they move to the GPU (full: fp32, LoRA and evaluate:
  bf16, evaluate on CPU: fp32; QLoRA quantises shard by shard), once per process on the node.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...spec import Pipeline
from ...spec.models import Role

GIB = 1024**3
CONFIG_DIR = Path("data/model-configs")
# Memory each process needs on top of the model: the CUDA context, cuBLAS workspaces and allocator slack on the
# GPU; the interpreter, torch's libraries, tokenizer and data on the host.
GPU_OVERHEAD = 1.0 * GIB
HOST_BASELINE = 3.0 * GIB
QLORA_SHARD = 5.0 * GIB  # safetensors shards of Hub models are <= 5 GB; QLoRA holds about one on the host
NF4_BYTES = 0.5 + (8 / 64 + 32 / (64 * 256)) / 8  # 4-bit weight + double-quantised absmax per 64-weight block
# GPU memory as nvidia-smi reports it (GiB). Instance types: the Azure VM series pages of config/skus.yaml; AKS
# accelerator labels: the pools of k8s/nodepools.yaml (nvidia-a100 = Standard_NC24ads_A100_v4, A100 80 GB).
GPU_GIB = {"T4": 15.0, "V100": 16.0, "A10": 24.0, "A100 40GB": 40.0, "A100 80GB": 80.0, "H100 80GB": 79.6,
           "H100 NVL": 93.6}
INSTANCE_GPU = {
    "Standard_NC4as_T4_v3": "T4", "Standard_NC6s_v3": "V100", "Standard_NV36ads_A10_v5": "A10",
    "Standard_NC24ads_A100_v4": "A100 80GB", "Standard_NC48ads_A100_v4": "A100 80GB",
    "Standard_NC96ads_A100_v4": "A100 80GB", "Standard_ND96asr_v4": "A100 40GB",
    "Standard_ND96amsr_A100_v4": "A100 80GB", "Standard_NC40ads_H100_v5": "H100 NVL",
    "Standard_NC80adis_H100_v5": "H100 NVL", "Standard_ND96isr_H100_v5": "H100 80GB",
}
ACCELERATOR_GPU = {"nvidia-t4": "T4", "nvidia-v100": "V100", "nvidia-a10": "A10", "nvidia-a100": "A100 80GB",
                   "nvidia-h100": "H100 NVL"}
_QUANTITY = re.compile(r"^([0-9.]+)([KMGTE]i?)?$")
_UNITS = {None: 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    source: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool
    qk_norm: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str) -> ModelShape:
        config = config.get("text_config", config)  # multimodal configs nest the language model's
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            return cls(source=source, layers=int(config["num_hidden_layers"]), hidden=hidden,
                       intermediate=int(config["intermediate_size"]), heads=heads,
                       kv_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or hidden // heads), vocab=int(config["vocab_size"]),
                       tied=bool(config.get("tie_word_embeddings", False)),
                       qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias")),
                       qk_norm=config.get("model_type") in ("qwen3", "gemma3_text"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: not a decoder config this plan understands ({exc})") from None

    def projection(self, name: str) -> tuple[int, int]:
        """(in, out) features of one projection of a layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}[name]

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder layers' projections (what QLoRA quantises)."""
        return self.layers * sum(a * b for a, b in map(self.projection, PROJECTIONS))

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        bias = self.layers * (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        norms = (2 * self.layers + 1) * self.hidden + (2 * self.layers * self.head_dim if self.qk_norm else 0)
        return self.linear_params + embeddings + bias + norms

    def lora_params(self, rank: int, targets: str) -> int:
        names = PROJECTIONS if targets.strip() == "all-linear" else [
            t.strip() for t in targets.split(",") if t.strip() in PROJECTIONS]
        return self.layers * sum(rank * sum(self.projection(n)) for n in names)

    def activation_elements(self, lora_dropout: bool) -> int:
        """Elements one layer keeps per token for the backward pass (see the module docstring)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        kept = 4 * h + 2 * q + 2 * kv + 4 * i
        return kept + (5 * h + q + i if lora_dropout else 0)


def find_config(base_model: str, root: Path, home: Path) -> Path | None:
    for candidate in (Path(base_model).expanduser(), home / "models" / base_model, root / CONFIG_DIR / base_model):
        config = candidate if candidate.name == "config.json" else candidate / "config.json"
        if config.is_file():
            return config
    return None


def quantity(value: str | None) -> float | None:
    """Bytes of a Kubernetes quantity (16Gi, 8G, 512Mi)."""
    if not value:
        return None
    match = _QUANTITY.match(str(value))
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


@dataclass
class StepMemory:
    step: str
    role: str
    profile: str | None
    where: str  # "gpu" or "cpu": the device the model runs on under this profile
    settings: str
    gpu: dict[str, float] = field(default_factory=dict)  # part -> bytes per GPU
    host: dict[str, float] = field(default_factory=dict)  # part -> bytes per node
    gpu_have: float | None = None
    gpu_name: str | None = None
    host_have: float | None = None
    host_source: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def gpu_need(self) -> float:
        return sum(self.gpu.values())

    @property
    def host_need(self) -> float:
        return sum(self.host.values())


@dataclass
class MemoryPlan:
    base_model: str
    model: ModelShape
    target: str
    steps: list[StepMemory]

    @property
    def warnings(self) -> list[str]:
        return [w for s in self.steps for w in s.warnings]

    def to_dict(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "params": self.model.params, "model": asdict(self.model),
                "target": self.target,
                "steps": [{**asdict(s), "gpu_need": s.gpu_need, "host_need": s.host_need} for s in self.steps],
                "warnings": self.warnings}


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _vm_memory(root: Path, instance: str) -> float | None:
    path = root / "config" / "skus.yaml"
    if not path.is_file():
        return None
    import yaml

    sku = (yaml.safe_load(path.read_text()) or {}).get("skus", {}).get(instance)
    return float(sku["memory_gib"]) * GIB if sku and "memory_gib" in sku else None


def _capacity(pipeline: Pipeline, step: str, target: str, out: StepMemory) -> tuple[int, int]:
    """Fill in what the step's profile gives; returns (GPUs per node, processes per node)."""
    spec = pipeline.spec.steps[step]
    profile = pipeline.spec.compute.get(spec.compute) if spec.compute else None
    resources = pipeline.components[step].spec.resources
    gpus, processes = resources.gpus, 1
    kube = profile.kubeflow if profile else None
    aml = profile.azureml if profile else None
    if target == "azureml" and aml is not None:
        processes = aml.processes_per_node
        gpu = INSTANCE_GPU.get(aml.instance_type or "")
        gpus = 1 if gpu else (gpus if aml.instance_type is None else 0)
        if gpu:
            out.gpu_name, out.gpu_have = f"{gpu} ({aml.instance_type})", GPU_GIB[gpu] * GIB
        memory = _vm_memory(pipeline.root, aml.instance_type) if aml.instance_type else None
        out.host_have, out.host_source = memory, (f"{aml.instance_type} VM" if memory else None)
    else:
        if kube is not None:
            gpus, processes = kube.gpus, kube.processes_per_node
            gpu = ACCELERATOR_GPU.get(kube.accelerator or "")
            if gpu:
                out.gpu_name, out.gpu_have = f"{gpu} ({kube.accelerator})", GPU_GIB[gpu] * GIB
        limit = (kube.memory if kube else None) or resources.memory
        out.host_have = quantity(limit)
        out.host_source = f"pod memory {limit}" if limit else None
    if gpus and out.gpu_have is None:
        out.gpu_name = "GPU of unknown type (give the profile an accelerator or an instance type)"
    return gpus, processes


def _train(pipeline: Pipeline, step: str, model: ModelShape, target: str) -> StepMemory:
    value = lambda name, default=None: pipeline.input_value(step, name) if pipeline.input_value(  # noqa: E731
        step, name) is not None else default
    method = str(value("method", "lora"))
    batch, seq = int(value("per_device_batch", 1)), int(value("max_seq_len", 512))
    checkpointing = _flag(value("gradient_checkpointing", False))
    rank, targets = int(value("lora_r", 16)), str(value("lora_targets", "all-linear"))
    dropout = float(value("lora_dropout", 0.0)) > 0 and method != "full"
    profile = pipeline.spec.steps[step].compute
    out = StepMemory(step, "train", profile, "gpu",
                     f"method {method}, per_device_batch {batch}, max_seq_len {seq}, gradient_checkpointing "
                     f"{str(checkpointing).lower()}")
    gpus, processes = _capacity(pipeline, step, target, out)
    p = model.params
    if method == "full":
        out.gpu["weights (fp32 masters)"] = 4 * p
        trainable = p
    elif method == "qlora":
        # PEFT's prepare_model_for_kbit_training casts every weight it does not quantise (embeddings, norms,
        # lm_head) to fp32 (peft/utils/other.py); the train step calls it unless it runs under FSDP.
        out.gpu["weights (NF4 + constants, rest fp32)"] = NF4_BYTES * model.linear_params + 4 * (
            p - model.linear_params)
        trainable = model.lora_params(rank, targets)
    else:
        out.gpu["weights (bf16, frozen)"] = 2 * p
        trainable = model.lora_params(rank, targets)
    if method != "full":
        out.gpu[f"adapter r={rank} (fp32)"] = 4 * trainable
    out.gpu["gradients (fp32)"] = 4 * trainable
    out.gpu["AdamW moments (fp32)"] = 8 * trainable
    per_layer = model.activation_elements(dropout) * 2 * batch * seq
    if checkpointing:
        out.gpu["activations (checkpointed)"] = model.layers * model.hidden * 2 * batch * seq + per_layer
    else:
        out.gpu["activations"] = model.layers * per_layer
    out.gpu["logits + loss"] = batch * seq * model.vocab * (2 + 4 + 4)
    out.gpu["CUDA context, workspaces"] = GPU_OVERHEAD
    load = {"full": 4 * p, "qlora": QLORA_SHARD}.get(method, 2 * p)
    out.host[f"weights read on the host x {processes} process(es)"] = processes * load
    out.host["baseline per process"] = processes * HOST_BASELINE
    if gpus == 0:
        out.where = "cpu"
        out.warnings.append(f"{step}: the profile {profile!r} has no GPU; training {model.params / 1e9:.1f}B "
                            f"parameters on CPU is not practical")
    if method == "qlora":
        # Sharding does not lower QLoRA's peak: every rank loads the whole 4-bit model (bitsandbytes quantises
        # on load, device_map {"": rank's GPU}; accelerate has no meta-device path for Params4bit) before FSDP
        # shards it.
        advice = ("gradient_checkpointing, a smaller per_device_batch or max_seq_len, or a GPU with more memory "
                  "(under FSDP every rank still loads the whole 4-bit model before sharding it)")
    else:
        advice = ("gradient_checkpointing, a smaller per_device_batch or max_seq_len, method lora/qlora, "
                  "or FSDP/ZeRO across GPUs (components/train/accelerate)")
    _check(out, advice=advice)
    return out


def _evaluate(pipeline: Pipeline, step: str, model: ModelShape, target: str) -> StepMemory:
    value = lambda name, default: pipeline.input_value(step, name) or default  # noqa: E731
    batch, seq = int(value("batch_size", 16)), int(value("max_seq_len", 512))
    new = int(value("max_new_tokens", 32))
    profile = pipeline.spec.steps[step].compute
    out = StepMemory(step, "evaluate", profile, "gpu", f"batch_size {batch}, max_seq_len {seq}, "
                                                       f"max_new_tokens {new}")
    gpus, processes = _capacity(pipeline, step, target, out)
    p = model.params
    logits = batch * seq * model.vocab * (2 + 4 + 4)  # bf16 logits, their fp32 copy, cross-entropy's log-softmax
    if gpus:
        out.gpu["weights (bf16, one model at a time)"] = 2 * p
        out.gpu["KV cache"] = batch * (seq + new) * model.layers * 2 * model.kv_heads * model.head_dim * 2
        out.gpu["perplexity logits"] = logits
        out.gpu["CUDA context, workspaces"] = GPU_OVERHEAD
        out.host["weights read on the host (bf16)"] = 2 * p
    else:
        out.where = "cpu"
        # On CPU evaluate loads fp32 models; merging a LoRA adapter keeps the base model in memory meanwhile.
        out.host["weights (fp32)"] = 4 * p
        out.host["perplexity logits"] = batch * seq * model.vocab * (4 + 4)  # fp32 logits and log-softmax
    out.host["baseline"] = HOST_BASELINE
    _check(out, advice="run evaluate on a GPU profile (environment: train-gpu), or lower batch_size / max_seq_len")
    return out


def _check(out: StepMemory, advice: str) -> None:
    if out.where == "gpu" and out.gpu_have is not None and out.gpu_need > out.gpu_have:
        out.warnings.append(
            f"{out.step}: needs {out.gpu_need / GIB:.1f} GiB per GPU, the profile {out.profile!r} gives "
            f"{out.gpu_have / GIB:.0f} GiB ({out.gpu_name}); {advice}")
    if out.host_have is not None and out.host_need > out.host_have:
        out.warnings.append(
            f"{out.step}: needs {out.host_need / GIB:.1f} GiB of host memory, the profile {out.profile!r} gives "
            f"{out.host_have / GIB:.0f} GiB ({out.host_source}); the step would be OOM-killed: raise its memory")


def memory_plan(pipeline: Pipeline, home: Path, target: str) -> MemoryPlan | None:
    """The plan for the pipeline's train and evaluate steps; None when the base model's config is not found."""
    train = pipeline.step_with_role(Role.train)
    if train is None:
        return None
    base = str(pipeline.input_value(train, "base_model") or "")
    config = find_config(base, pipeline.root, home)
    if config is None:
        return None
    shown = config.relative_to(pipeline.root) if config.is_relative_to(pipeline.root) else config
    model = ModelShape.from_config(json.loads(config.read_text()), str(shown))
    steps = [_train(pipeline, train, model, target)]
    evaluate = pipeline.step_with_role(Role.evaluate)
    if evaluate is not None:
        steps.append(_evaluate(pipeline, evaluate, model, target))
    return MemoryPlan(base, model, target, steps)


def render_plan(plan: MemoryPlan) -> str:
    m = plan.model
    lines = [f"memory plan for {plan.base_model} ({m.params / 1e9:.2f}B parameters, {m.layers} layers, hidden "
             f"{m.hidden}, vocabulary {m.vocab}; {m.source}); GPU per process, host per node, target {plan.target}:"]
    for s in plan.steps:
        lines.append(f"  {s.step} on profile {s.profile or '(component resources)'} ({s.settings}):")
        if s.gpu:
            have = f" of {s.gpu_have / GIB:.0f} GiB {s.gpu_name}" if s.gpu_have else ""
            parts = " + ".join(f"{name} {v / GIB:.1f}" for name, v in s.gpu.items())
            lines.append(f"    GPU  {s.gpu_need / GIB:6.1f} GiB{have}  = {parts}")
        have = f" of {s.host_have / GIB:.0f} GiB ({s.host_source})" if s.host_have else ""
        parts = " + ".join(f"{name} {v / GIB:.1f}" for name, v in s.host.items())
        lines.append(f"    host {s.host_need / GIB:6.1f} GiB{have}  = {parts}")
    lines += [f"warning: {w}" for w in plan.warnings] or ["every step fits its profile"]
    return "\n".join(lines)

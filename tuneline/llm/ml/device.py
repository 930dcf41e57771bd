"""Device facts: mixed precision and attention kernel by GPU generation, peak memory.

The choice is a pure function of the device's CUDA compute capability (``choose``), so every GPU generation
can be checked on a machine without one; ``detect`` only reads the capability of the device at hand.

Why not ``torch.cuda.is_bf16_supported()``: its default ``including_emulation=True`` answers true on
sm_70/sm_75 (V100, T4) as soon as a bf16 tensor can be created (torch/cuda/__init__.py,
``is_bf16_supported`` -> ``_check_bf16_tensor_supported``), yet those GPUs have no bf16 tensor cores: bf16
matmuls run emulated, many times slower than fp16. bf16 tensor cores start with Ampere (sm_80); below it
the right choice is fp16 with loss scaling (a GradScaler, which accelerate creates for ``fp16``).
"""

from __future__ import annotations

import importlib.util
import resource
import sys
from dataclasses import asdict, dataclass, replace

import torch

from tuneline.llm.ml.attention import AUTO, FLASH

BF16_MIN_CAPABILITY = (8, 0)  # Ampere: first bf16 tensor cores (A100 sm_80, A10/L4/RTX 30xx sm_86/89, H100 sm_90)
# FlashAttention-2 supports Ampere, Ada and Hopper GPUs only (flash-attention README, "Installation and features").
FLASH_ATTENTION_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Precision:
    """What a training run uses on its device: accelerate's ``mixed_precision`` value and the attention kernel,
    as chosen for the GPU generation (``attention_request``) and as the loaded model runs it
    (``attn_implementation``, known once the model is built: ``with_attention``)."""

    mixed_precision: str  # "no" (fp32), "fp16" or "bf16"
    grad_scaler: bool  # fp16 needs loss scaling; bf16 has fp32's exponent range and does not
    attention_request: str  # attention.FLASH, or attention.AUTO: transformers picks by model class (attention.py)
    device: str  # "cpu" or "cuda sm_XY"
    reason: str
    attn_implementation: str | None = None  # transformers' resolved config._attn_implementation

    def with_attention(self, resolved: str) -> Precision:
        return replace(self, attn_implementation=resolved)

    def as_params(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        attention = self.attn_implementation or f"{self.attention_request} (model not loaded yet)"
        if self.attn_implementation and self.attention_request != self.attn_implementation:
            attention += f" (requested {self.attention_request})"
        return (f"{self.device}: mixed precision {self.mixed_precision}"
                f"{' with a GradScaler' if self.grad_scaler else ''}, attention {attention} "
                f"({self.reason})")


def choose(capability: tuple[int, int] | None, requested: str = "auto", flash_attention: bool = False) -> Precision:
    """The precision and attention kernel to request for a device of ``capability`` (None: no GPU).

    ``requested`` is the component's ``precision`` input: ``auto`` decides by generation; an explicit value is
    kept (the user asked for it) but the reason says when it runs emulated. ``flash_attention``: whether the
    flash_attn package is importable.
    """
    if capability is None:
        if requested in ("fp16", "bf16"):
            return Precision(requested, False, AUTO, "cpu", f"{requested} requested on CPU (autocast, slow)")
        return Precision("no", False, AUTO, "cpu", "no GPU: fp32")
    device = f"cuda sm_{capability[0]}{capability[1]}"
    ampere_or_newer = tuple(capability) >= BF16_MIN_CAPABILITY
    if requested == "auto":
        precision = "bf16" if ampere_or_newer else "fp16"
        reason = ("bf16 tensor cores (sm_80+)" if ampere_or_newer
                  else "no bf16 tensor cores below sm_80: fp16 with loss scaling")
    else:
        precision = requested
        reason = f"{requested} requested"
        if requested == "bf16" and not ampere_or_newer:
            reason += " (emulated below sm_80: slow; fp16 is the native choice here)"
    flash = flash_attention and precision in ("bf16", "fp16") and tuple(capability) >= FLASH_ATTENTION_MIN_CAPABILITY
    return Precision(precision, precision == "fp16", FLASH if flash else AUTO, device, reason)


def flash_attention_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def detect(requested: str = "auto") -> Precision:
    """``choose`` for this process's GPU (the current CUDA device), or for the CPU."""
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    return choose(capability, requested, flash_attention_installed())


def mixed_precision() -> str:
    """accelerate's ``mixed_precision`` for this machine (see ``choose``)."""
    return detect().mixed_precision


def compute_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def peak_memory_mb() -> float:
    """Peak accelerator memory when on GPU, else the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10

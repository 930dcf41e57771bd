"""Device facts: mixed precision by hardware, peak memory."""

from __future__ import annotations

import resource
import sys

import torch


def mixed_precision() -> str:
    """``bf16`` on GPUs that support it, ``fp16`` on older GPUs, ``no`` (fp32) on CPU."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def compute_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def peak_memory_mb() -> float:
    """Peak accelerator memory when on GPU, else the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10

"""The precision matrix: mixed precision and attention kernel per GPU generation, from the compute capability."""

import pytest

from tuneline.llm.ml.device import choose

# (capability, GPU) -> (mixed precision, GradScaler)
MATRIX = [
    ((7, 0), "V100", "fp16", True),
    ((7, 5), "T4", "fp16", True),
    ((8, 0), "A100", "bf16", False),
    ((8, 6), "A10", "bf16", False),
    ((8, 9), "L4", "bf16", False),
    ((9, 0), "H100/H200", "bf16", False),
]


@pytest.mark.parametrize(("capability", "gpu", "precision", "scaler"), MATRIX, ids=[m[1] for m in MATRIX])
def test_auto_precision_by_generation(capability, gpu, precision, scaler):
    chosen = choose(capability)
    assert (chosen.mixed_precision, chosen.grad_scaler) == (precision, scaler), gpu
    assert chosen.device == f"cuda sm_{capability[0]}{capability[1]}"
    # flash_attn not installed: transformers picks (sdpa or eager by model class); nothing is resolved before
    # the model is loaded.
    assert (chosen.attention_request, chosen.attn_implementation) == ("auto", None)


@pytest.mark.parametrize(("capability", "kernel"), [((7, 0), "auto"), ((7, 5), "auto"), ((8, 0), "flash_attention_2"),
                                                    ((9, 0), "flash_attention_2")])
def test_flash_attention_only_from_ampere_when_installed(capability, kernel):
    assert choose(capability, flash_attention=True).attention_request == kernel


def test_the_resolved_kernel_is_what_is_reported():
    # What train prints at start-up and records (MLflow params, training_summary.json) once the model is built.
    chosen = choose((9, 0), flash_attention=True).with_attention("flash_attention_2")
    assert chosen.as_params()["attn_implementation"] == "flash_attention_2"
    assert "attention flash_attention_2 (bf16" in chosen.describe()
    fallback = choose((7, 5)).with_attention("eager")  # a class without SDPA support (Gemma 2, gpt-oss)
    assert fallback.as_params()["attention_request"] == "auto"
    assert "attention eager (requested auto)" in fallback.describe()


def test_cpu_runs_fp32_and_explicit_requests_are_kept():
    cpu = choose(None)
    assert (cpu.mixed_precision, cpu.grad_scaler, cpu.device) == ("no", False, "cpu")
    forced = choose((7, 5), requested="bf16")
    assert forced.mixed_precision == "bf16" and "emulated" in forced.reason
    assert choose((8, 0), requested="fp16").grad_scaler is True
    assert choose((9, 0), requested="no").mixed_precision == "no"
    # What train prints at start-up and records in MLflow.
    assert choose((7, 0)).as_params()["mixed_precision"] == "fp16"
    assert "fp16 with a GradScaler" in choose((7, 0)).describe()

"""The MFU benchmark divides by the peak of the GPU it ran on, found from the name torch reports."""

import pytest

from bench.train_bench import peak_flops


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989),
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA L4", 121), ("NVIDIA L40S", 362),
    ("NVIDIA A10", 125), ("Tesla T4", 65), ("Tesla V100-SXM2-16GB", 125), ("Tesla V100-PCIE-32GB", 112),
])
def test_each_gpu_has_its_own_peak(name, tflops):
    flops, source = peak_flops(name)
    assert flops == tflops * 1e12 and "data sheet" in source


def test_an_unknown_gpu_gets_no_peak_rather_than_another_gpus():
    assert peak_flops("NVIDIA A10G") is None
    assert peak_flops("NVIDIA GeForce RTX 4090") is None


def test_flops_per_token_charges_the_head_at_targets_only_and_counts_attention():
    from pathlib import Path

    from bench.train_bench import flops_per_token

    llama = Path(__file__).resolve().parents[3] / "data" / "model-configs" / "meta-llama" / "Llama-3.1-8B-Instruct"
    head = 128256 * 4096
    body = 8_030_261_248 - 2 * head - (2 * 32 + 1) * 4096  # the matmul weights of the 32 layers (no norms)
    lora = flops_per_token(llama, "lora", mean_len=1024, target_share=0.25)
    assert lora == 4 * body + 4 * head * 0.25 + 6 * 32 * 4096 * 1024
    # The vocabulary projection at every position (a full-sequence loss) costs 3/4 of a head more per token.
    assert flops_per_token(llama, "lora", 1024, 1.0) - lora == 4 * head * 0.75
    # Full fine-tuning adds the weight gradients; longer examples cost more attention per token.
    assert flops_per_token(llama, "full", 1024, 0.25) - lora == 2 * body + 2 * head * 0.25
    assert flops_per_token(llama, "lora", 2048, 0.25) - lora == 6 * 32 * 4096 * 1024

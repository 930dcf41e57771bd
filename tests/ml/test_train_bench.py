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

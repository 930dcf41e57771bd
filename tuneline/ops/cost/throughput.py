"""Tokens per second for a SKU: measured (a local run's training summary, bench/results) or FLOP-based."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...llm.ml.models import SUMMARY_FILE
from ...spec import Pipeline
from ...targets.local.record import SUCCEEDED, list_runs
from .prices import PriceTable, Sku
from .workload import Workload


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float
    source: str


def training_summaries(step: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The training_summary.json of each folder output of a recorded step (a step of run.json)."""
    for out in step.get("outputs", {}).values():
        if "path" not in out:
            continue
        try:
            yield json.loads((Path(out["path"]) / SUMMARY_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            continue


def measured_local(home: Path, base_model: str, exclude_run: str | None = None) -> Throughput | None:
    """tokens_per_s of the newest successful local run that trained `base_model` on CPU."""
    for run in reversed(list_runs(home / "runs")):
        if run.get("status") != SUCCEEDED or run.get("run_id") == exclude_run:
            continue
        for step in run["steps"].values():
            for data in training_summaries(step):
                tps = data.get("tokens_per_s")
                if tps and data.get("base_model") == base_model and data.get("mixed_precision") in (None, "no"):
                    return Throughput(float(tps), f"measured: run {run['run_id']} {SUMMARY_FILE}")
    return None


def measured_bench(root: Path, gpu: str, base_model: str) -> Throughput | None:
    """tokens_per_s for `gpu` from bench/results/*.json (objects or lists with gpu + tokens_per_s)."""
    best = None
    for path in sorted((root / "bench" / "results").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for entry in data if isinstance(data, list) else [data]:
            if not isinstance(entry, dict) or not entry.get("tokens_per_s"):
                continue
            if str(entry.get("gpu", "")).upper().find(gpu.upper()) < 0:
                continue
            if entry.get("base_model") not in (None, base_model):
                continue
            best = Throughput(float(entry["tokens_per_s"]), f"measured: {path.relative_to(root)}")
    return best


def matmul_gflops(home: Path, refresh: bool = False) -> float:
    """This machine's fp32 matmul throughput, measured once (~1 s) and cached."""
    cache = home / "cost" / "calibration.json"
    if cache.is_file() and not refresh:
        try:
            return float(json.loads(cache.read_text())["matmul_gflops"])
        except (ValueError, KeyError):
            pass
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    repeats, started = 0, time.perf_counter()
    while time.perf_counter() - started < 1.0:
        a @ b
        repeats += 1
    gflops = 2 * 1024**3 * repeats / (time.perf_counter() - started) / 1e9
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps({"matmul_gflops": gflops, "threads": torch.get_num_threads(), "measured": time.time()})
    )
    return gflops



def throughput_for(
    name: str,
    sku: Sku,
    work: Workload,
    prices: PriceTable,
    pipeline: Pipeline,
    home: Path,
    mfu: float,
    calibrate: bool,
    exclude_run: str | None = None,
) -> Throughput:
    if sku.gpus == 0:
        found = None if calibrate else measured_local(home, work.base_model, exclude_run)
        if found:
            return found
        gflops = matmul_gflops(home, refresh=calibrate)
        return Throughput(
            gflops * 1e9 * prices.cpu_efficiency / work.flops_per_token,
            f"FLOP-based: {gflops:.0f} GFLOP/s matmul measured here * cpu_efficiency "
            f"{prices.cpu_efficiency:g}",
        )
    assert sku.gpu is not None
    found = measured_bench(pipeline.root, sku.gpu, work.base_model)
    scale = sku.gpus * (prices.scaling_efficiency if sku.gpus > 1 else 1.0)
    if found:
        return Throughput(
            found.tokens_per_s * scale, found.source + (f" x {scale:.2f}" if sku.gpus > 1 else "")
        )
    peak = prices.gpus[sku.gpu].peak_tflops * 1e12
    return Throughput(
        peak * mfu / work.flops_per_token * scale,
        f"FLOP-based: {prices.gpus[sku.gpu].peak_tflops:g} TFLOP/s * MFU {mfu:g}"
        + (f" x {scale:.2f} ({sku.gpus} GPUs)" if sku.gpus > 1 else ""),
    )



"""Estimate training time and money before a run, and compare the estimate with a finished run.

Run as: tuneline cost pipelines/finetune.yaml --target azureml [--spot] [--sku Standard_NC24ads_A100_v4]

time  = tokens processed / tokens per second + a fixed per-run overhead (model load, node start)
money = time * the SKU's hourly price (spot: on-demand * (1 - spot_discount) unless the table gives one)

- Tokens processed: the dataset's records (times the train share left by the prepare step's validation and
  test ratios), each rendered as a chat and capped at the train step's max_seq_len, times epochs; or, when
  max_steps > 0, max_steps * per_device_batch * grad_accum * GPUs examples of the mean length.
  Counted with the base model's tokenizer when it is on disk, else with the prepare step's regex estimate.
- Tokens per second, first found of: (1) measured: `tokens_per_s` in the newest `training_summary.json` of a
  successful local run (local-cpu) or in `bench/results/*.json` for the SKU's GPU type; (2) FLOP-based:
  peak FLOP/s * MFU / (k * parameters), k = 6 for full fine-tuning (forward 2N + backward 4N) and 4 for
  LoRA/QLoRA (no weight gradients for the frozen base). On local-cpu, "peak" is this machine's measured fp32
  matmul FLOP/s (cached in .tuneline/cost/calibration.json) and MFU is the table's cpu_efficiency.
"""

from __future__ import annotations

import datetime
import json
import math
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .runner.record import SUCCEEDED, list_runs
from .spec import Literal, ParamRef, Pipeline
from .spec.models import Role
from .spec.yamlsafe import load_yaml

DEFAULT_PRICES = Path("config/prices.yaml")
# Inputs of the training step the estimate reads; their defaults come from that component's component.yaml.
TRAIN_INPUTS = ("epochs", "max_steps", "per_device_batch", "grad_accum", "max_seq_len", "base_model", "method")
# Parameter counts of catalog models, for when their weights are not on disk yet.
KNOWN_PARAMS = {"smollm2-135m-instruct": 134_515_008, "tiny-random-llama": 164_352}
SAMPLE_RECORDS = 2000


class CostError(ValueError):
    """Bad price table, pipeline or dataset for an estimate; the message names file and field."""


# ---------------------------------------------------------------------------------------------- price table


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GpuSpec(_Strict):
    peak_tflops: float = Field(gt=0)
    memory_gb: float | None = None


class Sku(_Strict):
    description: str = ""
    gpus: int = Field(ge=0)
    gpu: str | None = None
    price_per_hour: float = Field(ge=0)
    spot_price_per_hour: float | None = Field(None, ge=0)
    targets: list[str]


class PriceTable(_Strict):
    currency: str = "USD"
    priced: datetime.date | None = Field(None, description="the day the list prices were read")
    spot_discount: float = Field(0.7, ge=0, lt=1)
    assumed_mfu: float = Field(0.3, gt=0, le=1)
    scaling_efficiency: float = Field(0.9, gt=0, le=1)
    cpu_efficiency: float = Field(0.5, gt=0, le=1)
    overhead_s: dict[str, float] = Field(default_factory=dict)
    gpus: dict[str, GpuSpec] = Field(default_factory=dict)
    skus: dict[str, Sku]

    def spot_price(self, sku: Sku) -> float:
        if sku.spot_price_per_hour is not None:
            return sku.spot_price_per_hour
        return sku.price_per_hour * (1 - self.spot_discount)


def load_prices(path: Path | None = None) -> PriceTable:
    path = path or DEFAULT_PRICES
    if not path.is_file():
        raise CostError(f"price table not found: {path} (pass --prices FILE)")
    loaded = load_yaml(path)
    try:
        table = PriceTable.model_validate(loaded.data)
    except ValidationError as exc:
        problems = [
            str(loaded.problem(tuple(e["loc"]), f"{'.'.join(map(str, e['loc']))}: {e['msg']}"))
            for e in exc.errors()
        ]
        raise CostError("invalid price table:\n" + "\n".join(problems)) from None
    for name, sku in table.skus.items():
        if sku.gpus and sku.gpu not in table.gpus:
            raise CostError(
                str(
                    loaded.problem(
                        ("skus", name, "gpu"),
                        f"skus.{name}.gpu: '{sku.gpu}' is not under gpus: ({', '.join(table.gpus)})",
                    )
                )
            )
    return table


# ---------------------------------------------------------------------------------------------- workload


@dataclass
class Workload:
    dataset: str
    records: int
    train_examples: int
    mean_tokens: float  # per example, after the max_seq_len cap
    token_counter: str  # "tokenizer <path>" or "regex estimate"
    epochs: int
    max_steps: int
    examples_per_step: int  # per GPU: per_device_batch * grad_accum
    base_model: str
    method: str
    params: int
    params_source: str

    def tokens(self, world: int) -> float:
        """Tokens the training loop processes with `world` data-parallel processes."""
        if self.max_steps > 0:
            return self.max_steps * self.examples_per_step * max(world, 1) * self.mean_tokens
        return self.epochs * self.train_examples * self.mean_tokens

    @property
    def flops_per_token(self) -> float:
        return (6 if self.method == "full" else 4) * self.params


def _train_step(pipeline: Pipeline) -> str:
    step = pipeline.step_with_role(Role.train)
    if step is None:
        raise CostError(f"{pipeline.path}: no step's component declares `role: train`; nothing to estimate")
    return step


def step_input(pipeline: Pipeline, step: str, name: str, default: Any = None) -> Any:
    """The value a step input gets: its literal or parameter binding, else the component default."""
    binding = pipeline.bindings.get(step, {}).get(name)
    if isinstance(binding, Literal):
        return binding.value
    if isinstance(binding, ParamRef):
        return pipeline.params[binding.name]
    spec = pipeline.components[step].spec.inputs.get(name)
    if spec is not None and spec.default is not None:
        return spec.default
    return default


def _dataset_path(pipeline: Pipeline) -> Path:
    from .triggers.newdata import dataset_param, resolve

    try:
        name = dataset_param(pipeline)
    except ValueError as exc:
        raise CostError(str(exc)) from None
    path = resolve(pipeline, str(pipeline.params[name]))
    if not path.is_file():
        raise CostError(f"parameter '{name}': dataset file not found: {path}")
    return path


def _read_records(path: Path) -> list[dict]:
    """Chat records of the raw dataset; lines the prepare step would quarantine are skipped, not counted."""
    records = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "messages" not in obj and "prompt" in obj:
                obj = {
                    "messages": [
                        {"role": "user", "content": str(obj["prompt"])},
                        {"role": "assistant", "content": str(obj.get("completion", ""))},
                    ]
                }
            if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                records.append({"messages": [m for m in obj["messages"] if isinstance(m, dict)]})
    if not records:
        raise CostError(f"{path}: no usable chat or prompt/completion records")
    return records


def local_model_dir(base_model: str, home: Path) -> Path | None:
    """The base model's folder when already on disk (a catalog build or a local path); never builds one."""
    for candidate in (home / "models" / base_model, Path(base_model).expanduser()):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def count_params(model_dir: Path) -> int | None:
    """Parameters in a folder's *.safetensors, from the headers alone (no weights are read)."""
    total = 0
    files = sorted(model_dir.glob("*.safetensors"))
    for file in files:
        with file.open("rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                total += math.prod(info["shape"])
    return total or None


def _token_lengths(records: list[dict], model_dir: Path | None, max_seq_len: int) -> tuple[list[int], str]:
    if model_dir is not None:
        from transformers import AutoTokenizer

        from .ml.chat import render

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if tokenizer.chat_template:
            # The same rendering training uses; counting apply_chat_template(tokenize=True) would count the
            # keys of the BatchEncoding it returns in transformers 5, not tokens.
            texts = [render(tokenizer, r["messages"], generation_prompt=False) for r in records]
            lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            return [min(n, max_seq_len) for n in lengths], f"tokenizer of {model_dir.name}"
    from .data.records import estimate_tokens

    # Chat templates add a few marker tokens around every message.
    lengths = [sum(estimate_tokens(str(m.get("content", ""))) + 4 for m in r["messages"]) for r in records]
    return [min(n, max_seq_len) for n in lengths], "regex estimate (tuneline.data.records.estimate_tokens)"


def workload(pipeline: Pipeline, home: Path, tokenizer: str = "auto") -> Workload:
    step = _train_step(pipeline)
    values = {k: step_input(pipeline, step, k) for k in TRAIN_INPUTS}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise CostError(f"{pipeline.components[step].folder / 'component.yaml'}: the training step '{step}' "
                        f"gives no value or default for {', '.join(missing)}; the estimate needs them")
    dataset = _dataset_path(pipeline)
    records = _read_records(dataset)
    train_share = 0.8
    prepare = pipeline.step_with_role(Role.prepare)
    if prepare is not None:
        train_share = (
            1
            - float(step_input(pipeline, prepare, "validation_ratio", 0.1))
            - float(step_input(pipeline, prepare, "test_ratio", 0.1))
        )
    model_dir = local_model_dir(str(values["base_model"]), home)
    if tokenizer == "real" and model_dir is None:
        raise CostError(
            f"--tokenizer real: base model {values['base_model']!r} is not on disk yet "
            f"(run the pipeline once, or use --tokenizer estimate)"
        )
    sample = records[:: max(1, len(records) // SAMPLE_RECORDS)]
    lengths, counter = _token_lengths(
        sample, model_dir if tokenizer != "estimate" else None, int(values["max_seq_len"])
    )
    params = count_params(model_dir) if model_dir is not None else None
    source = f"safetensors headers in {model_dir}" if params else "catalog table"
    if params is None:
        params = KNOWN_PARAMS.get(str(values["base_model"]))
        if params is None:
            raise CostError(
                f"unknown parameter count of base model {values['base_model']!r}: put it on disk "
                f"(run the pipeline once) or use a catalog model"
            )
    return Workload(
        dataset=str(dataset),
        records=len(records),
        train_examples=max(1, round(len(records) * train_share)),
        mean_tokens=sum(lengths) / len(lengths),
        token_counter=counter,
        epochs=int(values["epochs"]),
        max_steps=int(values["max_steps"]),
        examples_per_step=int(values["per_device_batch"]) * int(values["grad_accum"]),
        base_model=str(values["base_model"]),
        method=str(values["method"]),
        params=params,
        params_source=source,
    )


# ---------------------------------------------------------------------------------------------- throughput


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float
    source: str


def measured_local(home: Path, base_model: str, exclude_run: str | None = None) -> Throughput | None:
    """tokens_per_s of the newest successful local run that trained `base_model` on CPU."""
    for run in reversed(list_runs(home / "runs")):
        if run.get("status") != SUCCEEDED or run.get("run_id") == exclude_run:
            continue
        for step in run["steps"].values():
            for out in step.get("outputs", {}).values():
                summary = Path(out.get("path", "")) / "training_summary.json"
                if not summary.is_file():
                    continue
                try:
                    data = json.loads(summary.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                tps = data.get("tokens_per_s")
                if (
                    tps
                    and data.get("base_model") == base_model
                    and data.get("mixed_precision") in (None, "no")
                ):
                    return Throughput(float(tps), f"measured: run {run['run_id']} training_summary.json")
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


# ---------------------------------------------------------------------------------------------- estimate


@dataclass
class SkuEstimate:
    sku: str
    description: str
    gpus: int
    tokens_per_s: float
    throughput_source: str
    hours: float
    on_demand_per_hour: float
    spot_per_hour: float
    on_demand_cost: float
    spot_cost: float


@dataclass
class CostReport:
    pipeline: str
    target: str
    currency: str
    workload: Workload
    rows: list[SkuEstimate]
    chosen: str | None
    spot: bool
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self, sku: str) -> SkuEstimate:
        return next(r for r in self.rows if r.sku == sku)


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


def estimate(
    pipeline: Pipeline,
    prices: PriceTable,
    target: str,
    home: Path,
    sku: str | None = None,
    spot: bool = False,
    tokenizer: str = "auto",
    mfu: float | None = None,
    calibrate: bool = False,
    exclude_run: str | None = None,
) -> CostReport:
    if target not in ("aks", "azureml", "local"):
        raise CostError(f"--target must be aks, azureml or local, got {target!r}")
    work = workload(pipeline, home, tokenizer)
    mfu = mfu if mfu is not None else prices.assumed_mfu
    names = [n for n, s in prices.skus.items() if target in s.targets or s.gpus == 0]
    if sku is not None and sku not in prices.skus:
        raise CostError(f"--sku {sku}: not in the price table ({', '.join(prices.skus)})")
    if sku is not None and sku not in names:
        names.append(sku)
    if sku is None:
        train_step = _train_step(pipeline)
        compute = pipeline.spec.steps[train_step].compute
        profile = pipeline.spec.compute.get(compute) if compute else None
        instance = (
            profile.azureml.instance_type if profile and profile.azureml and target == "azureml" else None
        )
        sku = instance if instance in prices.skus else ("local-cpu" if target == "local" else None)
    overhead = prices.overhead_s.get(target, 0.0)
    rows = []
    for name in names:
        spec = prices.skus[name]
        tput = throughput_for(name, spec, work, prices, pipeline, home, mfu, calibrate, exclude_run)
        # A CPU-only entry runs locally whatever the target: it carries the local overhead.
        seconds = work.tokens(spec.gpus) / tput.tokens_per_s + (
            prices.overhead_s.get("local", 0.0) if spec.gpus == 0 else overhead
        )
        hours = seconds / 3600
        spot_rate = prices.spot_price(spec)
        rows.append(
            SkuEstimate(
                name,
                spec.description,
                spec.gpus,
                tput.tokens_per_s,
                tput.source,
                hours,
                spec.price_per_hour,
                spot_rate,
                hours * spec.price_per_hour,
                hours * spot_rate,
            )
        )
    assumptions = [
        f"dataset {work.dataset}: {work.records} records, ~{work.train_examples} train examples, "
        f"{work.mean_tokens:.0f} tokens each on average ({work.token_counter})",
        (
            f"max_steps {work.max_steps} x {work.examples_per_step} examples per step per GPU"
            if work.max_steps > 0
            else f"{work.epochs} epoch(s) over the train split"
        ),
        f"base model {work.base_model}: {work.params / 1e6:.1f}M parameters ({work.params_source}); method "
        f"{work.method}: {6 if work.method == 'full' else 4} x params FLOPs per token",
        f"GPU MFU {mfu:g}, multi-GPU scaling {prices.scaling_efficiency:g}, "
        f"CPU efficiency {prices.cpu_efficiency:g}",
        f"fixed overhead per run: {overhead:g}s on {target} (model load, image pull, node start)",
        f"spot = on-demand x (1 - {prices.spot_discount:g}) unless the table gives a spot price; spot runs "
        f"may be "
        f"evicted and resume from checkpoints, which adds time",
    ]
    return CostReport(
        pipeline=pipeline.name,
        target=target,
        currency=prices.currency,
        workload=work,
        rows=rows,
        chosen=sku,
        spot=spot,
        assumptions=assumptions,
    )


def _duration(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{hours:.1f}h"


def render(report: CostReport) -> str:
    lines = [f"cost estimate for {report.pipeline} on {report.target}", "assumptions:"]
    lines += [f"  - {a}" for a in report.assumptions]
    lines.append(
        f"tokens to process: ~{report.workload.tokens(1):,.0f} (per GPU count scaled for max_steps runs)"
    )
    lines.append("")
    cur = report.currency
    lines.append(
        f"  {'SKU':<26} {'GPUs':>4} {'tokens/s':>10} {'time':>8} {'$/h':>6} {'on-demand':>10} "
        f"{'spot':>8}  throughput ({cur})"
    )
    for r in report.rows:
        mark = "*" if r.sku == report.chosen else " "
        lines.append(
            f"{mark} {r.sku:<26} {r.gpus:>4} {r.tokens_per_s:>10,.0f} {_duration(r.hours):>8} "
            f"{r.on_demand_per_hour:>6.2f} {r.on_demand_cost:>10.2f} {r.spot_cost:>8.2f}  "
            f"{r.throughput_source}"
        )
    if report.chosen:
        r = report.row(report.chosen)
        price = r.spot_cost if report.spot else r.on_demand_cost
        rate = r.spot_per_hour if report.spot else r.on_demand_per_hour
        lines += [
            "",
            f"* {report.chosen} ({'spot' if report.spot else 'on-demand'}): ~{_duration(r.hours)}, "
            f"~{price:.2f} {cur} at {rate:.2f} {cur}/h",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- after a run


@dataclass
class RunCost:
    run_id: str
    estimated_s: float
    actual_step_s: float | None  # the train step's wall time as the runner measured it
    actual_train_s: float | None  # training loop time from training_summary.json
    ratio: float | None  # actual_step_s / estimated_s
    throughput_source: str

    def render(self) -> str:
        if self.actual_step_s is None:
            return (
                f"estimated train time {self.estimated_s:.0f}s (no measured train step in run {self.run_id})"
            )
        return (
            f"train step: {self.actual_step_s:.0f}s measured vs {self.estimated_s:.0f}s estimated "
            f"(x{self.ratio:.2f}; throughput {self.throughput_source})"
        )


def estimate_for_run(
    record: dict[str, Any], prices: PriceTable | None = None, home: Path | None = None
) -> RunCost:
    """The local-cpu estimate for a finished run's pipeline and parameters, next to the measured train time.

    The run's own measurement is left out of the estimate, so the comparison is a fair test of it.
    """
    from . import settings
    from .spec import load_pipeline

    pipeline = load_pipeline(record["pipeline_path"], {k: str(v) for k, v in record["params"].items()})
    home = home or settings.home(pipeline.root)
    prices = prices or load_prices(pipeline.root / DEFAULT_PRICES)
    report = estimate(
        pipeline, prices, target="local", home=home, sku="local-cpu", exclude_run=record["run_id"]
    )
    row = report.row("local-cpu")
    step = record["steps"].get(_train_step(pipeline), {})
    actual = step.get("duration_s") if step.get("status") == SUCCEEDED else None
    train_s = None
    for out in step.get("outputs", {}).values():
        summary = Path(out.get("path", "")) / "training_summary.json"
        if summary.is_file():
            train_s = json.loads(summary.read_text()).get("train_time_s")
    estimated = row.hours * 3600
    return RunCost(
        record["run_id"],
        estimated,
        actual,
        train_s,
        actual / estimated if actual else None,
        row.throughput_source,
    )

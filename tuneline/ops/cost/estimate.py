"""The per-SKU estimate table, its text rendering, and the estimate next to a finished run's measured time."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...spec import Pipeline
from ...targets.local.record import SUCCEEDED
from .prices import DEFAULT_PRICES, CostError, PriceTable, load_prices
from .throughput import throughput_for, training_summaries
from .workload import Workload, train_step, workload


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
        compute = pipeline.spec.steps[train_step(pipeline)].compute
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
    from ... import settings
    from ...spec import load_pipeline

    pipeline = load_pipeline(record["pipeline_path"], {k: str(v) for k, v in record["params"].items()})
    home = home or settings.home(pipeline.root)
    prices = prices or load_prices(pipeline.root / DEFAULT_PRICES)
    report = estimate(
        pipeline, prices, target="local", home=home, sku="local-cpu", exclude_run=record["run_id"]
    )
    row = report.row("local-cpu")
    step = record["steps"].get(train_step(pipeline), {})
    actual = step.get("duration_s") if step.get("status") == SUCCEEDED else None
    train_s = next((s.get("train_time_s") for s in training_summaries(step)), None)
    estimated = row.hours * 3600
    return RunCost(
        record["run_id"],
        estimated,
        actual,
        train_s,
        actual / estimated if actual else None,
        row.throughput_source,
    )

"""`tuneline cost`: the workload read from the pipeline, the per-SKU table, and the price-table checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.tickets import ticket_records
from tuneline.cost import CostError, estimate, load_prices
from tuneline.spec import load_pipeline

from .triggers.conftest import PROJECT, write_records

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tune(tmp_path, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(PROJECT, root)
    (root / "config").mkdir()
    shutil.copy(REPO / "config" / "prices.yaml", root / "config" / "prices.yaml")
    write_records(root / "data" / "tickets.jsonl", ticket_records(100))
    monkeypatch.chdir(root)
    monkeypatch.delenv("TUNELINE_HOME", raising=False)
    return root


def test_repo_price_table_loads_with_the_seed_prices():
    prices = load_prices(REPO / "config" / "prices.yaml")
    assert prices.skus["Standard_NC24ads_A100_v4"].price_per_hour == 3.67
    assert prices.skus["Standard_NC40ads_H100_v5"].gpu == "H100 NVL"
    assert prices.skus["Standard_ND96asr_v4"].gpus == 8
    assert prices.skus["local-cpu"].price_per_hour == 0
    assert prices.spot_price(prices.skus["Standard_ND96asr_v4"]) == pytest.approx(27.20 * 0.3)
    assert str(prices.priced) == "2026-12-01"


def test_gpu_estimate_follows_the_flop_formula(tune):
    pipeline = load_pipeline(tune / "pipelines" / "tune.yaml")
    prices = load_prices(tune / "config" / "prices.yaml")
    report = estimate(pipeline, prices, target="azureml", home=tune / ".tuneline", tokenizer="estimate")
    work = report.workload
    assert work.max_steps == 4 and work.examples_per_step == 8 and work.method == "full"
    assert work.params == 164_352 and work.records == 100
    a100 = report.row("Standard_NC24ads_A100_v4")
    assert a100.tokens_per_s == pytest.approx(312e12 * 0.3 / (6 * work.params))
    seconds = 4 * 8 * work.mean_tokens / a100.tokens_per_s + 600
    assert a100.hours * 3600 == pytest.approx(seconds)
    assert a100.on_demand_cost == pytest.approx(a100.hours * 3.67)
    assert report.chosen == "Standard_NC24ads_A100_v4"  # the train step's Azure ML instance type
    eight = report.row("Standard_ND96asr_v4")
    assert eight.tokens_per_s == pytest.approx(a100.tokens_per_s * 8 * 0.9)


def test_bench_results_override_the_flop_estimate(tune):
    (tune / "bench" / "results").mkdir(parents=True)
    (tune / "bench" / "results" / "train_a100.json").write_text(
        json.dumps(
            [{"gpu": "NVIDIA A100-SXM4-80GB", "tokens_per_s": 50_000, "base_model": "tiny-random-llama"}]
        )
    )
    pipeline = load_pipeline(tune / "pipelines" / "tune.yaml")
    report = estimate(pipeline, load_prices(), target="aks", home=tune / ".tuneline", tokenizer="estimate")
    row = report.row("Standard_NC24ads_A100_v4")
    assert row.tokens_per_s == 50_000 and "bench/results/train_a100.json" in row.throughput_source


def test_cli_prints_the_assumptions_and_table(tune, capsys, monkeypatch):
    import tuneline.cli

    code = tuneline.cli.main(
        [
            "cost",
            "pipelines/tune.yaml",
            "--target",
            "azureml",
            "--spot",
            "--tokenizer",
            "estimate",
            "--set",
            "max_steps=8",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "max_steps 8 x 8 examples per step per GPU" in out
    for sku in ("local-cpu", "Standard_NC24ads_A100_v4", "Standard_NC40ads_H100_v5", "Standard_ND96asr_v4"):
        assert sku in out
    assert "* Standard_NC24ads_A100_v4 (spot)" in out
    assert "GFLOP/s matmul measured here" in out  # local-cpu without a previous run: calibrated
    assert (tune / ".tuneline" / "cost" / "calibration.json").is_file()


def test_price_table_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "prices.yaml"
    bad.write_text("skus:\n  x:\n    gpus: 1\n    gpu: TPU\n    price_per_hour: 1\n    targets: [aks]\n")
    with pytest.raises(CostError, match=r"prices.yaml:4:\d+: skus.x.gpu: 'TPU' is not under gpus"):
        load_prices(bad)
    bad.write_text("skus:\n  x:\n    gpus: -1\n    price_per_hour: 1\n    targets: [aks]\n")
    with pytest.raises(CostError, match=r"prices.yaml:3:\d+: skus.x.gpus"):
        load_prices(bad)


def test_a_pipeline_without_a_train_step_is_refused(tune):
    pipeline = load_pipeline(tune / "pipelines" / "grow.yaml")
    with pytest.raises(CostError, match="no step's component declares `role: train`"):
        estimate(pipeline, load_prices(), target="aks", home=tune / ".tuneline")

"""Age and quality triggers against a real MLflow registry (SQLite in tmp) and a tiny real model."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

from tests.support.tickets import ticket_records
from tuneline.llm.ml.models import resolve_model
from tuneline.llm.registry import CHAMPION, metric_tag, register_version, set_alias
from tuneline.ops.triggers.champion import check_age, find_champion, relative_drop
from tuneline.ops.triggers.quality import EvalOptions, check_quality, load_registered, score
from tuneline.spec.models import Triggers

from .conftest import write_records

OPTIONS = EvalOptions(max_examples=6, max_new_tokens=6, batch_size=6)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return MlflowClient(uri)


def register(client, tmp_path, tags: dict[str, str]) -> int:
    """Register tiny-random-llama as a full 'tuned' model, laid out as the register step stores it."""
    folder = tmp_path / "version" / "artifacts" / "model"
    shutil.copytree(resolve_model("tiny-random-llama"), folder, dirs_exist_ok=True)
    (folder / "training_summary.json").write_text(
        json.dumps({"base_model": "tiny-random-llama", "method": "full"})
    )
    experiment = (
        client.create_experiment("tuneline", artifact_location=(tmp_path / "artifacts").as_uri())
        if client.get_experiment_by_name("tuneline") is None
        else client.get_experiment_by_name("tuneline").experiment_id
    )
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(tmp_path / "version"), "registered")
    version = register_version(
        client, "tickets", f"runs:/{run.info.run_id}/registered", run.info.run_id, tags
    )
    set_alias(client, "tickets", CHAMPION, version.version)
    return int(version.version)


@pytest.mark.slow
def test_age_trigger_goes_from_no_to_yes(registry, tmp_path):
    register(registry, tmp_path, {})
    champion = find_champion(registry, "tickets")
    triggers = Triggers(max_age_days=30)
    young = check_age(champion, triggers, now=champion.created + 86400)
    assert young.status == "ok" and "1.0 days old" in young.reason
    old = check_age(champion, triggers, now=champion.created + 31 * 86400)
    assert old.status == "fired" and old.metrics["champion_age_days"] == pytest.approx(31)
    assert check_age(find_champion(registry, "absent"), triggers).status == "skipped"


def test_relative_drop_handles_both_directions():
    assert relative_drop(0.8, 0.6, "exact_match") == pytest.approx(0.25)
    assert relative_drop(10.0, 12.0, "perplexity") == pytest.approx(0.2)
    assert relative_drop(0.5, 0.6, "exact_match") < 0


def test_fetching_the_champion_reads_the_configured_store_not_a_process_wide_uri(registry, tmp_path, monkeypatch):
    """An earlier in-process step (register, evaluate) calls mlflow.set_tracking_uri for its own store; MLflow
    then resolved `models:/` there, and the full suite failed with "Registered Model with name=tickets not
    found" while the test passed alone."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from tuneline.llm.registry import fetch_model

    register(registry, tmp_path, {})
    champion = find_champion(registry, "tickets")
    previous = tracking_utils._tracking_uri  # MLflow keeps the process-wide URI here; restored below
    configured = registry.tracking_uri
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'another-step.db'}")  # as that step left it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", configured)  # and the configuration restored since, as by monkeypatch
    try:
        fetched = fetch_model(champion.uri, tmp_path / "fetched")
    finally:
        tracking_utils._tracking_uri = previous
    assert (fetched.model_dir / "training_summary.json").is_file()


@pytest.mark.slow
def test_quality_trigger_goes_from_no_to_yes(registry, tmp_path):
    # Labels that agree with what the model answers stand for the data it was registered on; the
    # "fresh" labels then change (the world moved on) and the same champion scores lower.
    version = register(registry, tmp_path, {})
    champion = find_champion(registry, "tickets")
    model, tokenizer = load_registered(champion, tmp_path / "fetched")
    records = ticket_records(6, seed=4)
    write_records(tmp_path / "probe.jsonl", records)
    from tuneline.llm.ml.data import read_split
    from tuneline.llm.ml.generate import generate

    answers = generate(model, tokenizer, read_split(tmp_path / "probe.jsonl").records, 6, 6)
    agreeing = [
        {**r, "messages": [*r["messages"][:-1], {"role": "assistant", "content": a}]}
        for r, a in zip(records, answers, strict=True)
    ]
    write_records(tmp_path / "fresh.jsonl", agreeing)
    registered, n = score(model, tokenizer, tmp_path / "fresh.jsonl", "exact_match", OPTIONS)
    assert registered["exact_match"] == 1.0 and n == 6
    registry.set_model_version_tag("tickets", str(version), metric_tag("tuned", "exact_match"), "1.0")

    triggers = Triggers(metric_drop=0.05, fresh_labels="fresh.jsonl")
    result = check_quality(
        registry, find_champion(registry, "tickets"), triggers, tmp_path, "exact_match", OPTIONS
    )
    assert result.status == "ok", result.reason
    assert result.metrics["metric_drop"] == 0.0

    write_records(tmp_path / "fresh.jsonl", records)  # the true labels: JSON the random model never produces
    result = check_quality(
        registry, find_champion(registry, "tickets"), triggers, tmp_path, "exact_match", OPTIONS
    )
    assert result.status == "fired"
    assert result.metrics["current_metric"] == 0.0 and "+100.0% drop" in result.reason


def test_quality_without_a_registered_metric_is_skipped(registry, tmp_path):
    register(registry, tmp_path, {})
    write_records(tmp_path / "fresh.jsonl", ticket_records(3))
    result = check_quality(
        registry,
        find_champion(registry, "tickets"),
        Triggers(metric_drop=0.05, fresh_labels="fresh.jsonl"),
        tmp_path,
        "exact_match",
        OPTIONS,
    )
    assert result.status == "skipped" and "tuneline.metric.tuned.exact_match" in result.reason

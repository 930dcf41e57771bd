"""register: promotion rule, retry policy, input checks and the model card (fast), and the registry helpers
against a real SQLite MLflow store in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.register.__main__ import main as register_main
from components.register.card import CardContext, render_card
from components.register.inputs import InputError, read_evaluation, read_trained_model
from tuneline.llm import registry
from tuneline.llm.registry import Backoff, PromotionRule, decide, with_retry
from tuneline.spec.model_uri import parse_models_uri


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TUNELINE_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return registry.client()


# ------------------------------------------------------------------------------------------ rule


def test_first_model_is_promoted():
    decision = decide(PromotionRule(), 0.2, None, None)
    assert decision.promoted and decision.reason == "no champion yet"


@pytest.mark.parametrize(
    ("direction", "candidate", "champion", "promoted"),
    [
        ("max", 0.8, 0.7, True),
        ("max", 0.6, 0.7, False),
        ("max", 0.7, 0.7, False),
        ("min", 9.0, 10.0, True),
        ("min", 11.0, 10.0, False),
    ],
)
def test_rule_compares_in_the_configured_direction(direction, candidate, champion, promoted):
    decision = decide(PromotionRule("m", direction), candidate, 4, champion)
    assert decision.promoted is promoted
    assert decision.champion_version == 4 and "champion v4" in decision.reason


def test_min_delta_must_be_exceeded():
    assert not PromotionRule("m", "max", 0.05).beats(0.74, 0.7)
    assert PromotionRule("m", "max", 0.05).beats(0.76, 0.7)


def test_champion_without_the_metric_is_not_replaced():
    decision = decide(PromotionRule("json_valid"), 1.0, 2, None)
    assert not decision.promoted and "json_valid" in decision.reason


def test_rule_rejects_a_bad_direction():
    with pytest.raises(ValueError, match="direction"):
        PromotionRule("m", "up")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ retry


def test_transient_errors_are_retried_then_succeed():
    calls: list[int] = []
    messages: list[str] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert with_retry(flaky, "write", Backoff(attempts=5, base_delay=0.001), messages.append) == "ok"
    assert len(calls) == 3 and len(messages) == 2 and "retry 1" in messages[0]


def test_other_errors_are_not_retried():
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("no such field")

    with pytest.raises(KeyError):
        with_retry(broken, "write", Backoff(attempts=5, base_delay=0.001))
    assert len(calls) == 1


def test_retry_gives_up_after_the_last_attempt():
    with pytest.raises(RuntimeError, match="locked"):
        with_retry(
            lambda: (_ for _ in ()).throw(RuntimeError("database is locked")),
            "write",
            Backoff(attempts=3, base_delay=0.001),
        )


def test_backoff_grows_and_is_capped():
    import random

    policy = Backoff(base_delay=0.1, max_delay=1.0)
    rng = random.Random(0)
    assert all(policy.delay(0, rng) <= 0.1 for _ in range(50))
    assert max(policy.delay(10, rng) for _ in range(200)) <= 1.0


# ------------------------------------------------------------------------------------------ inputs


def test_models_uri_forms():
    assert parse_models_uri("models:/tuneline-llm/3") == ("tuneline-llm", "3", None)
    assert parse_models_uri("models:/tuneline-llm@champion") == ("tuneline-llm", None, "champion")
    for bad in ("runs:/abc/model", "models:/x", "models:/x/latest", "models:/@a"):
        with pytest.raises(ValueError, match="expected models:/"):
            parse_models_uri(bad)


def test_metrics_errors_name_file_and_field(tmp_path: Path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"models": {"base": {"exact_match": 0.1}}}))
    with pytest.raises(InputError, match=r"metrics\.json: field 'models\.tuned'"):
        read_evaluation(path)
    path.write_text(json.dumps({"models": {"tuned": {"exact_match": "high"}}}))
    with pytest.raises(InputError, match=r"'models\.tuned\.exact_match' must be a number"):
        read_evaluation(path)
    path.write_text('{"models": {\n  "tuned": }')
    with pytest.raises(InputError, match=r"metrics\.json:2:\d+: invalid JSON"):
        read_evaluation(path)


def test_flat_metrics_and_missing_gate_metric(tmp_path: Path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"base": {"exact_match": 0.1}, "tuned": {"exact_match": 0.6, "f1": 0.7}}))
    evaluation = read_evaluation(path)
    assert evaluation.value("tuned", "exact_match") == 0.6
    with pytest.raises(InputError, match=r"'tuned\.rouge' not found \(metrics of tuned: exact_match, f1\)"):
        evaluation.value("tuned", "rouge")


def test_train_summary_is_checked(tmp_path: Path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "training_summary.json").write_text(json.dumps({"method": "lora"}))
    with pytest.raises(InputError, match=r"training_summary\.json: field 'base_model'"):
        read_trained_model(tmp_path)


def test_cli_rejects_bad_input_before_touching_mlflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "model").mkdir()
    metrics = tmp_path / "metrics.json"
    metrics.write_text("{}")
    code = register_main(
        [
            "--model",
            str(tmp_path / "model"),
            "--metrics",
            str(metrics),
            "--model-uri-out",
            str(tmp_path / "u"),
            "--version-out",
            str(tmp_path / "v"),
            "--promoted-out",
            str(tmp_path / "p"),
            "--card-out",
            str(tmp_path / "c"),
            "--files-out",
            str(tmp_path / "f"),
        ]
    )
    assert code == 2
    assert "training_summary.json: file not found" in capsys.readouterr().err
    assert not (tmp_path / "u").exists()


def test_card_has_the_required_sections(tmp_path: Path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "training_summary.json").write_text(
        json.dumps(
            {
                "base_model": "tiny-random-llama",
                "method": "lora",
                "hyperparameters": {"learning_rate": 0.001},
                "data": {"train_sha256": "c0ffee", "n_train": 32},
            }
        )
    )
    metrics = tmp_path / "metrics.json"
    metrics.write_text(
        json.dumps(
            {
                "models": {"base": {"exact_match": 0.1}, "tuned": {"exact_match": 0.9}},
                "gates": {"expression": "tuned.exact_match >= 0.8", "passed": True},
            }
        )
    )
    card = render_card(
        CardContext(
            "tuneline-llm",
            7,
            read_trained_model(tmp_path),
            read_evaluation(metrics),
            "abc123",
            "run-1",
            "bundled",
            "exact_match (max)",
        )
    )
    for heading in (
        "# Model card: tuneline-llm v7",
        "## Intended use",
        "## Data",
        "## Evaluation",
        "## Limitations",
    ):
        assert heading in card
    assert "| exact_match | 0.1 | 0.9 |" in card and "c0ffee" in card and "`abc123`" in card


# ------------------------------------------------------------------------------------------ real store


def test_registry_versions_aliases_and_promotion(store, tmp_path: Path):
    experiment = registry.ensure_experiment(store, "tuneline")
    location = store.get_experiment(experiment).artifact_location
    assert location.startswith("file://") and str(tmp_path / "home" / "mlartifacts") in location
    rule = PromotionRule("exact_match")
    decisions = []
    for score in (0.5, 0.4, 0.7):
        run = store.create_run(experiment)
        version = registry.register_version(
            store,
            "m",
            f"file:///models/{score}",
            run.info.run_id,
            {registry.metric_tag("tuned", "exact_match"): str(score)},
        )
        registry.set_alias(store, "m", registry.CANDIDATE, version.version)
        decisions.append(registry.promote_if_better(store, "m", int(version.version), rule, score))
    assert [d.promoted for d in decisions] == [True, False, True]
    assert str(store.get_model_version_by_alias("m", "candidate").version) == "3"
    assert str(store.get_model_version_by_alias("m", "champion").version) == "3"
    assert decisions[1].champion_version == 1 and decisions[1].champion_value == 0.5


def test_register_version_is_idempotent_per_run(store):
    experiment = registry.ensure_experiment(store, "tuneline")
    run = store.create_run(experiment)
    first = registry.register_version(store, "m", "file:///models/a", run.info.run_id, {})
    again = registry.register_version(store, "m", "file:///models/a", run.info.run_id, {})
    assert str(first.version) == str(again.version) == "1"


def test_fresh_champion_score_is_used_only_for_the_same_version(store):
    experiment = registry.ensure_experiment(store, "tuneline")
    run = store.create_run(experiment)
    v1 = registry.register_version(
        store, "m", "file:///a", run.info.run_id, {registry.metric_tag("tuned", "exact_match"): "0.9"}
    )
    registry.register_version(store, "m", "file:///b", run.info.run_id, {})
    registry.set_alias(store, "m", registry.CHAMPION, v1.version)
    rule = PromotionRule("exact_match")
    # A rescore of some other version says nothing about v1: its recorded 0.9 stands.
    stale = registry.promote_if_better(
        store, "m", 2, rule, 0.7, fresh_champion_value=0.6, fresh_champion_version=9
    )
    assert not stale.promoted and stale.champion_value == 0.9
    # Rescored on this evaluation's test set v1 only gets 0.6, so the 0.7 candidate replaces it.
    fresh = registry.promote_if_better(
        store, "m", 2, rule, 0.7, fresh_champion_value=0.6, fresh_champion_version=1
    )
    assert fresh.promoted and fresh.champion_value == 0.6
    assert str(store.get_model_version_by_alias("m", "champion").version) == "2"


def test_an_azure_ml_artifact_store_is_refused_before_anything_is_registered(store, tmp_path: Path, capsys):
    """A workspace's experiments have azureml:// artifact locations, which MLflow cannot upload to here: register
    failed with a traceback after creating its run; it now stops first and says why."""
    import json

    store.create_experiment("tuneline", artifact_location="azureml://experiments/tuneline/runs")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "training_summary.json").write_text(json.dumps({"base_model": "tiny", "method": "full"}))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"models": {"tuned": {"exact_match": 0.5}}}))
    outs = [f"--{name}-out" for name in ("model-uri", "version", "promoted", "card", "files")]
    code = register_main(["--model", str(model), "--metrics", str(metrics),
                          *[x for flag in outs for x in (flag, str(tmp_path / flag.strip("-")))]])
    assert code == 2
    assert "azureml-mlflow" in capsys.readouterr().err
    experiment = store.get_experiment_by_name("tuneline").experiment_id
    assert store.search_runs([experiment]) == [] and store.search_registered_models() == []

"""register end to end, run as the runner runs it (a subprocess per step) against a real SQLite MLflow store:
promotion across versions, loading the pyfunc in a fresh process, and parallel registrations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.components.tuned_fixtures import (
    REPO,
    make_adapter,
    make_metrics,
    read_outputs,
    register_cmd,
    run_register,
    step_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(900)]

LOAD_AND_GENERATE = """
import json, sys, mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(["My invoice is wrong", "I cannot log in"], params={"max_new_tokens": 6})
print(json.dumps({"outputs": list(out)}))
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TUNELINE_HOME", str(home))  # the adapters' base model is materialised here
    return home


def test_promotion_card_tags_and_fresh_process_load(home: Path, tmp_path: Path):
    env = step_env(home)
    adapter = make_adapter(tmp_path / "model", seed=1)
    first = run_register(adapter, make_metrics(tmp_path / "m1.json", tuned=0.5), tmp_path / "o1", env)
    worse = run_register(adapter, make_metrics(tmp_path / "m2.json", tuned=0.3), tmp_path / "o2", env)
    assert first == {"model_uri": "models:/tuneline-llm/1", "version": 1, "promoted": True}
    assert worse == {"model_uri": "models:/tuneline-llm/2", "version": 2, "promoted": False}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert str(client.get_model_version_by_alias("tuneline-llm", "candidate").version) == "2"
    assert str(client.get_model_version_by_alias("tuneline-llm", "champion").version) == "1"
    v2 = client.get_model_version("tuneline-llm", "2")
    tags = v2.tags
    assert tags["tuneline.base_model"] == "tiny-random-llama" and tags["tuneline.method"] == "lora"
    assert tags["tuneline.data_sha256"] == f"{1:064x}" and tags["tuneline.pipeline_run_id"] == "test-run"
    assert (
        tags["tuneline.hparam.learning_rate"] == "0.001"
        and tags["tuneline.metric.tuned.exact_match"] == "0.3"
    )
    assert tags["tuneline.code_version"] and len(tags["tuneline.base_weights_sha256"]) == 64
    assert (
        tags["tuneline.promoted"] == "false"
        and "does not beat champion v1" in tags["tuneline.promotion_reason"]
    )
    assert v2.description.startswith("# Model card: tuneline-llm v2")
    assert v2.description == (tmp_path / "o2" / "card.md").read_text()
    artifacts = {a.path for a in client.list_artifacts(v2.run_id)}
    assert "model_card.md" in artifacts and "evaluation" in artifacts
    assert str(home / "mlartifacts") in client.get_model_version_download_uri("tuneline-llm", "2")

    # A fresh interpreter (nothing cached in-process) loads the candidate by alias and generates text.
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, "models:/tuneline-llm@candidate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = json.loads(proc.stdout.strip().splitlines()[-1])["outputs"]
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    assert any(o for o in outputs), outputs
    # A later, better version taking the champion alias: test_register.py's registry test, on a real store.


def _trained_by(adapter: Path, run_id: str) -> Path:
    summary = json.loads((adapter / "training_summary.json").read_text())
    (adapter / "training_summary.json").write_text(json.dumps({**summary, "mlflow_run_id": run_id}))
    return adapter


def test_a_rerun_on_the_same_trained_model_reuses_its_version_and_respects_a_rollback(home: Path, tmp_path: Path):
    """register is not cached, so an unchanged re-run runs it again: it must not pile up versions, and it decides
    the champion against the registry as it is now, without undoing a rollback made by hand."""
    env = step_env(home)
    a = _trained_by(make_adapter(tmp_path / "a", seed=4), "train-run-a")
    b = _trained_by(make_adapter(tmp_path / "b", seed=5), "train-run-b")
    metrics_a, metrics_b = make_metrics(tmp_path / "a.json", tuned=0.5), make_metrics(tmp_path / "b.json", tuned=0.7)
    assert run_register(a, metrics_a, tmp_path / "o1", env) == {"model_uri": "models:/tuneline-llm/1", "version": 1,
                                                                "promoted": True}
    again = run_register(a, metrics_a, tmp_path / "o2", env)
    assert again == {"model_uri": "models:/tuneline-llm/1", "version": 1, "promoted": True}  # still the champion
    assert (tmp_path / "o2" / "card.md").read_text() == (tmp_path / "o1" / "card.md").read_text()
    assert run_register(b, metrics_b, tmp_path / "o3", env)["version"] == 2

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert str(client.get_model_version_by_alias("tuneline-llm", "champion").version) == "2"
    client.set_registered_model_alias("tuneline-llm", "champion", "1")  # an operator rolls v2 back
    rerun = run_register(b, metrics_b, tmp_path / "o4", env)
    assert rerun == {"model_uri": "models:/tuneline-llm/2", "version": 2, "promoted": False}
    assert str(client.get_model_version_by_alias("tuneline-llm", "champion").version) == "1"
    assert "replaced since" in client.get_model_version("tuneline-llm", "2").tags["tuneline.promotion_reason"]
    # Another evaluation of the same model (a new test set) is another registration.
    other = make_metrics(tmp_path / "c.json", tuned=0.6)
    assert run_register(a, other, tmp_path / "o5", env)["version"] == 3
    # A deleted version is registered anew and compared with the champion of now.
    client.delete_model_version("tuneline-llm", "2")
    assert run_register(b, metrics_b, tmp_path / "o6", env) == {"model_uri": "models:/tuneline-llm/4",
                                                                 "version": 4, "promoted": True}
    assert sorted(int(v.version) for v in client.search_model_versions("name='tuneline-llm'")) == [1, 3, 4]


def test_lower_is_better_metric(home: Path, tmp_path: Path):
    """--gate-metric/--gate-direction reach the rule (its directions are unit-tested in test_register.py)."""
    env = step_env(home)
    adapter = make_adapter(tmp_path / "model", seed=2)
    args = ("--gate-metric", "tuned.perplexity", "--gate-direction", "min", "--name", "ppl-model")
    assert run_register(adapter, make_metrics(tmp_path / "a.json", tuned=0.5), tmp_path / "a", env, *args)[
        "promoted"
    ]  # perplexity 9.5
    # A better exact match (the default gate metric would promote it) but a higher perplexity: not promoted.
    worse = {"base": {"exact_match": 0.1, "perplexity": 50.0}, "tuned": {"exact_match": 0.9, "perplexity": 9.9}}
    metrics = make_metrics(tmp_path / "c.json", tuned=0.9, extra={"models": worse})
    assert not run_register(adapter, metrics, tmp_path / "c", env, *args)["promoted"]


def test_parallel_registrations_get_distinct_versions(home: Path, tmp_path: Path):
    """Four processes register at once into a store that does not exist yet."""
    env = step_env(home)
    adapter = make_adapter(tmp_path / "model", seed=3)
    procs = []
    for i in range(4):
        metrics = make_metrics(tmp_path / f"m{i}.json", tuned=0.2 + 0.1 * i)
        procs.append(
            subprocess.Popen(
                register_cmd(adapter, metrics, tmp_path / f"o{i}"),
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    outputs = [read_outputs(tmp_path / f"o{i}") for i in range(4)]
    assert sorted(o["version"] for o in outputs) == [1, 2, 3, 4]
    assert len({o["model_uri"] for o in outputs}) == 4

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name='tuneline-llm'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
    # Whatever the order, the champion is the best of the four (tuned 0.5, registered by process 3).
    champion = client.get_model_version_by_alias("tuneline-llm", "champion")
    assert champion.tags["tuneline.metric.tuned.exact_match"] == "0.5"


def test_the_preference_step_starts_from_the_registered_champion(home: Path, tmp_path: Path):
    """The feedback loop's start: the champion, by alias, downloaded from the registry into the preference step."""
    from tests.support.preference import write_preference_splits

    env = step_env(home)
    adapter = make_adapter(tmp_path / "model", seed=1)
    assert run_register(adapter, make_metrics(tmp_path / "m.json", tuned=0.5), tmp_path / "o", env)["promoted"]
    pairs = write_preference_splits(tmp_path / "pairs", "pairs")
    out = tmp_path / "dpo"
    result = subprocess.run(
        [sys.executable, "-m", "components.preference", "--train", str(pairs["train"]), "--base-model",
         "tiny-random-llama", "--sft-model-uri", "models:/tuneline-llm@champion", "--model-out", str(out / "model"),
         "--checkpoints", str(out / "ckpt"), "--mlflow-run-id-out", str(out / "run_id.json"), "--max-steps", "2",
         "--per-device-batch", "4", "--save-steps", "0"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    assert summary["preference"]["start"] == "models:/tuneline-llm@champion"
    assert summary["method"] == "lora" and summary["base_model"] == "tiny-random-llama"
    # The challenger is one adapter of the champion's base (the champion's adapter and the new LoRA, stacked), so
    # the champion's server takes it beside the champion.
    assert summary["preference"]["output"] == "stacked"
    challenger = json.loads((out / "model" / "adapter_config.json").read_text())
    assert challenger["base_model_name_or_path"] == "tiny-random-llama" and challenger["r"] == 4 + 16
    from tuneline.serving.repository import RepositorySpec, adapter_problem

    assert adapter_problem(out / "model", RepositorySpec()) is None
    missing = subprocess.run(
        [sys.executable, "-m", "components.preference", "--train", str(pairs["train"]), "--sft-model-uri",
         "models:/tuneline-llm@nosuchalias", "--model-out", str(out / "m2"), "--checkpoints", str(out / "c2"),
         "--mlflow-run-id-out", str(out / "r2.json")], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "has no version with alias 'nosuchalias'" in missing.stderr

"""The real demo pipeline, end to end, with a tiny random model so it runs in well under a minute.

Every step runs its own component command line in a subprocess, exactly as `make pipeline-run` does; only the
base model and the step counts are overridden.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tuneline.cli.main import main
from tuneline.targets.local.record import find_run

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--set", "base_model=tiny-random-llama",
    "--set", "max_steps=3",
    "--set", "max_seq_len=768",  # the tiny model's byte-level tokenizer needs more positions per ticket
    "--set", "eval_examples=4",
    # A random model cannot reach the demo's accuracy gates; three LoRA steps do lower its perplexity on the
    # held-out answers, which this gate checks (it fails when training does not help).
    "--set", "gates=tuned.perplexity < base.perplexity",
    "--set", "deploy_target=kserve",
]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The repository's pipelines, components and sample data in a scratch project with its own state."""
    root = tmp_path / "project"
    for folder in ("pipelines", "components", "data"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("TUNELINE_HOME", str(root / ".tuneline"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    return root


@pytest.mark.slow
def test_demo_pipeline_runs_every_step_with_a_tiny_model(project, capsys):
    assert main(["run", "pipelines/finetune.yaml", *TINY]) == 0, capsys.readouterr()
    record = find_run(project / ".tuneline/runs", "latest")
    assert [record["steps"][s]["status"] for s in record["order"]] == ["succeeded"] * 5

    steps = record["steps"]
    card = json.loads(Path(steps["prepare"]["outputs"]["report"]["path"], "data_card.json").read_text())
    counts = card["counts"]
    assert counts["input_records"] == counts["kept"] + counts["quarantined"] + counts["deduplicated"] > 0
    summary = json.loads(Path(steps["train"]["outputs"]["model"]["path"], "training_summary.json").read_text())
    assert summary["base_model"] == "tiny-random-llama" and summary["steps"] == 3
    assert summary["system_prompt"].startswith("You triage customer support tickets")
    metrics = json.loads(Path(steps["evaluate"]["outputs"]["metrics"]["path"]).read_text())
    assert {"base", "tuned"} <= set(metrics["models"]) and metrics["gates"]["passed"] is True
    assert metrics["models"]["tuned"]["perplexity"] < metrics["models"]["base"]["perplexity"]
    assert steps["evaluate"]["outputs"]["passed"]["value"] is True
    assert steps["register"]["outputs"]["model_uri"]["value"] == "models:/tuneline-tickets/1"
    assert steps["deploy"]["outputs"]["status"]["value"] == "rendered"
    manifests = list(Path(steps["deploy"]["outputs"]["files"]["path"]).rglob("*.yaml"))
    assert any(yaml.safe_load(p.read_text()).get("kind") == "InferenceService" for p in manifests)

    # Unchanged: every step with a cache policy is reused; register decides the champion against the registry as
    # it is now and deploy reconciles live state, so both always run, and register reuses its version.
    assert main(["run", "pipelines/finetune.yaml", *TINY]) == 0
    again = find_run(project / ".tuneline/runs", "latest")
    assert {s: again["steps"][s]["status"] for s in again["order"]} == {
        "prepare": "cached", "train": "cached", "evaluate": "cached", "register": "succeeded", "deploy": "succeeded"}
    assert again["steps"]["register"]["outputs"]["model_uri"]["value"] == "models:/tuneline-tickets/1"
    assert again["steps"]["register"]["outputs"]["promoted"]["value"] is True  # still the champion
    from tuneline.llm import registry

    assert [str(v.version) for v in registry.client().search_model_versions("name='tuneline-tickets'")] == ["1"]

    # One parameter that only evaluate reads, with a gate the tiny model cannot pass: prepare and train stay
    # cached, evaluate reruns and says so, and nothing is registered or deployed. (That a changed output reruns
    # its consumers is the runner's cache rule, tested on the toy project in tests/runner/test_local.py.)
    assert main(["run", "pipelines/finetune.yaml", *TINY, "--set", "eval_examples=3",
                 "--set", "gates=tuned.exact_match >= 0.99"]) == 0
    failed = find_run(project / ".tuneline/runs", "latest")
    assert [failed["steps"][s]["status"] for s in failed["order"]] == [
        "cached", "cached", "succeeded", "skipped", "skipped"]
    verdict = json.loads(Path(failed["steps"]["evaluate"]["outputs"]["metrics"]["path"]).read_text())["gates"]
    assert verdict["passed"] is False and verdict["clauses"][0]["value"] is False

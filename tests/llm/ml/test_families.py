"""The model-family tier: a tiny random model of each common family (Llama 3.x, Qwen2.5, Qwen3, Mistral, Gemma 3),
each with its maker's chat template, through the real train (LoRA and full), evaluate and register components, on
records with and without a system message, single- and multi-turn. A record a template cannot express is
quarantined with the template's reason; the step does not fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.llm.ml.families import FAMILIES, SHAPES, build

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Gemma 3's template requires alternating roles: this record is refused there and trained everywhere else.
TWO_USERS = [{"role": "user", "content": "Printer is jammed"}, {"role": "user", "content": "Still jammed"},
             {"role": "assistant", "content": '{"team": "hw"}'}]


def _write(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def tier(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    shapes = [{"id": f"{name}-{i}", "messages": msgs} for i in range(2) for name, msgs in SHAPES.items()]
    data = {"train": _write(root / "train", [*shapes, {"id": "two-users", "messages": TWO_USERS}]),
            "test": _write(root / "test", [*({"id": name, "messages": msgs} for name, msgs in SHAPES.items()),
                                           {"id": "two-users", "messages": TWO_USERS}])}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELINE_HOME", str(root / "home"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("TUNELINE_RUN_ID", "family-tier")
        yield {"root": root, **data, "models": {f: build(FAMILIES[f], root / "base" / f) for f in FAMILIES}}


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_evaluate_register(tier, family, method):
    from components.evaluate.__main__ import main as evaluate
    from components.register.__main__ import main as register
    from components.train.__main__ import main as train

    base = str(tier["models"][family])
    work = tier["root"] / f"{family}-{method}"
    assert train(["--train", str(tier["train"]), "--base-model", base, "--method", method,
                  "--model-out", str(work / "model"), "--checkpoints", str(work / "ckpt"),
                  "--mlflow-run-id-out", str(work / "run_id"), "--max-steps", "2", "--per-device-batch", "4",
                  "--max-seq-len", "256", "--save-steps", "0", "--learning-rate", "1e-3"]) == 0
    summary = json.loads((work / "model" / "training_summary.json").read_text())
    quarantined = summary["data"]["over_long"]["train"].get("template_quarantined", [])
    if family == "gemma3":
        assert [q["id"] for q in quarantined] == ["two-users"] and "alternate" in quarantined[0]["reason"]
        assert summary["data"]["n_train"] == 2 * len(SHAPES)
    else:
        assert quarantined == [] and summary["data"]["n_train"] == 2 * len(SHAPES) + 1
    assert summary["final_train_loss"] > 0

    assert evaluate(["--test", str(tier["test"]), "--model", str(work / "model"), "--base-model", base,
                     "--gates", "tuned.perplexity > 0", "--gate-metric", "rouge_l", "--max-new-tokens", "4",
                     "--passed-out", str(work / "passed"), "--metrics-out", str(work / "metrics.json"),
                     "--report-out", str(work / "report.md"), "--mlflow-run-id", (work / "run_id").read_text()]) == 0
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["gates"]["passed"] is True
    if family == "gemma3":  # evaluate sets the same record aside, with the same reason
        assert metrics["n_examples"] == len(SHAPES) and [q["id"] for q in metrics["quarantined"]] == ["two-users"]
    else:
        assert metrics["n_examples"] == len(SHAPES) + 1 and "quarantined" not in metrics

    name = f"tier-{family}-{method}".replace(".", "-")
    assert register(["--model", str(work / "model"), "--metrics", str(work / "metrics.json"), "--name", name,
                     "--gate-metric", "rouge_l", "--model-uri-out", str(work / "uri"),
                     "--version-out", str(work / "version"), "--promoted-out", str(work / "promoted"),
                     "--card-out", str(work / "card.md"), "--files-out", str(work / "files")]) == 0
    assert (work / "uri").read_text() == f"models:/{name}/1"

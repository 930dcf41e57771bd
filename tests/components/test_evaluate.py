"""The evaluate component end to end on a tiny random Llama trained in-process."""

import json

import pytest

from components.evaluate.__main__ import main as evaluate
from components.train.__main__ import main as train
from tests.support.tickets import write_splits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELINE_HOME", str(root / "home"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        data = write_splits(root / "data", n_test=10)
        argv = ["--train", str(data["train"]), "--base-model", "tiny-random-llama", "--model-out", str(root / "model"),
                "--checkpoints", str(root / "ckpt"), "--mlflow-run-id-out", str(root / "run_id.json"),
                "--max-steps", "4", "--per-device-batch", "8", "--learning-rate", "5e-3", "--save-steps", "0"]
        assert train(argv) == 0
        yield {"root": root, "model": root / "model", **data}


def _evaluate(trained, name, gates, *extra):
    out = trained["root"] / name
    argv = ["--test", str(trained["test"]), "--model", str(trained["model"]), "--base-model", "tiny-random-llama",
            "--schema", str(trained["schema"]), "--gates", gates, "--max-new-tokens", "8",
            "--passed-out", str(out / "passed.json"), "--metrics-out", str(out / "metrics.json"),
            "--report-out", str(out / "report.md"), *extra]
    return evaluate(argv), out


def test_base_and_tuned_side_by_side_with_gates_and_mlflow(trained):
    from mlflow.tracking import MlflowClient

    run_id = (trained["root"] / "run_id.json").read_text()
    code, out = _evaluate(trained, "eval", "tuned.perplexity < base.perplexity and tuned.exact_match >= 0",
                          "--mlflow-run-id", run_id)
    assert code == 0
    assert json.loads((out / "passed.json").read_text()) is True
    document = json.loads((out / "metrics.json").read_text())
    assert set(document["models"]) == {"base", "tuned"}
    expected = {"perplexity", "exact_match", "token_f1", "rouge_l", "bleu", "chrf", "json_valid", "schema_valid",
                "field_accuracy", "field_acc_category", "field_acc_priority"}
    assert expected <= set(document["models"]["tuned"])
    # Four LoRA steps on the training answers make the reference answers more likely.
    assert document["models"]["tuned"]["perplexity"] < document["models"]["base"]["perplexity"]
    assert [c["value"] for c in document["gates"]["clauses"]] == [True, True]
    assert len(document["predictions"]) == document["n_examples"] == 10
    report = (out / "report.md").read_text()
    assert "| perplexity (lower is better) |" in report and "gates PASSED" in report
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["eval.passed"] == 1.0 and "eval.tuned.field_accuracy" in metrics and "loss" in metrics


def test_failing_gate_writes_false(trained):
    code, out = _evaluate(trained, "strict", "tuned.exact_match >= 0.99")
    assert code == 0
    assert json.loads((out / "passed.json").read_text()) is False
    assert "gates FAILED" in (out / "report.md").read_text()


def test_champion_folder_is_evaluated_alongside(trained):
    code, out = _evaluate(trained, "champ", "tuned.perplexity <= champion.perplexity",
                          "--champion-uri", str(trained["model"]), "--max-examples", "2")
    assert code == 0
    document = json.loads((out / "metrics.json").read_text())
    assert document["models"]["champion"]["perplexity"] == pytest.approx(document["models"]["tuned"]["perplexity"])
    assert json.loads((out / "passed.json").read_text()) is True


@pytest.mark.parametrize(("gates", "message"), [
    ("tuned.accuracy > 0.5", "unknown metric 'accuracy'"),
    ("open('x').read()", "is not allowed"),
])
def test_bad_gates_fail_before_any_model_is_loaded(trained, capsys, gates, message):
    code, out = _evaluate(trained, "bad", gates)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (out / "passed.json").exists()


def test_win_rate_against_the_champion_decides_the_gate(trained):
    # The champion is the tuned model itself: every example ties, so the win rate is 0.5 with no decisive
    # contest to widen it, and a gate asking for a better model than the champion fails, while one asking for
    # no worse passes.
    code, out = _evaluate(trained, "winrate", "win_rate.lower > 0.5", "--champion-uri", str(trained["model"]),
                          "--gate-metric", "field_accuracy", "--max-examples", "10")
    assert code == 0
    document = json.loads((out / "metrics.json").read_text())
    contest = document["win_rate"]
    assert contest["judge"] == "metric:field_accuracy"
    assert (contest["n"], contest["ties"], contest["wins"], contest["losses"]) == (10, 10, 0, 0)
    assert contest["value"] == contest["lower"] == contest["upper"] == 0.5
    assert json.loads((out / "passed.json").read_text()) is False
    assert "win rate against the champion: **0.500**" in (out / "report.md").read_text()
    code, out = _evaluate(trained, "winrate-ok", "win_rate.value >= 0.5", "--champion-uri", str(trained["model"]),
                          "--gate-metric", "field_accuracy", "--max-examples", "10")
    assert code == 0 and json.loads((out / "passed.json").read_text()) is True


def test_a_win_rate_gate_on_too_few_examples_is_refused(trained, capsys):
    code, out = _evaluate(trained, "winrate-few", "win_rate.lower > 0.5", "--champion-uri", str(trained["model"]),
                          "--gate-metric", "field_accuracy", "--max-examples", "4")
    assert code == 2 and not (out / "passed.json").exists()
    assert "4 examples judged; a win rate and its 95% interval need at least 10" in capsys.readouterr().err


def test_win_rate_gate_holds_without_a_champion(trained):
    code, out = _evaluate(trained, "first", "win_rate.lower > 0.5", "--max-examples", "2")
    assert code == 0 and json.loads((out / "passed.json").read_text()) is True
    assert "win_rate" not in json.loads((out / "metrics.json").read_text())


def test_a_judge_url_needs_a_model_and_perplexity_cannot_judge_examples(trained, capsys):
    code, _ = _evaluate(trained, "nojudgemodel", "tuned.exact_match >= 0", "--judge", "http://127.0.0.1:9/v1")
    assert code == 2 and "--judge-model" in capsys.readouterr().err
    code, _ = _evaluate(trained, "ppl", "tuned.perplexity > 0", "--champion-uri", str(trained["model"]),
                        "--gate-metric", "perplexity")
    assert code == 2 and "'perplexity' has no per-example score" in capsys.readouterr().err

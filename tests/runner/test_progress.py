"""The progress protocol: what a step writes, what the runner reads back, what the user sees."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from tuneline.step.progress import ENV, StepProgress, read_latest, report
from tuneline.targets.local import record as rec
from tuneline.targets.local.progress import Progress, describe


def test_report_is_a_no_op_without_the_variable(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    report(1, 10)  # nothing to write to, nothing raised
    target = tmp_path / "progress.jsonl"
    monkeypatch.setenv(ENV, str(target))
    report(3, 10, "step", loss=0.5, skipped=None)
    line = json.loads(target.read_text())
    assert line["current"] == 3 and line["total"] == 10 and line["unit"] == "step"
    assert line["metrics"] == {"loss": 0.5}


def test_the_newest_complete_line_wins_and_the_eta_uses_the_rate_since_the_first(tmp_path: Path):
    path = tmp_path / "progress.jsonl"
    now = time.time()
    lines = [{"current": 2, "total": 12, "unit": "step", "time": now - 10, "metrics": {}},
             {"current": 4, "total": 12, "unit": "step", "time": now, "metrics": {"loss": 0.25}}]
    path.write_text(json.dumps(lines[0]) + "\n")
    first = read_latest(path)
    assert first is not None and first.current == 2 and first.eta_seconds() is None
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"current": 5, "tot')  # a line being written
    latest = read_latest(path, first)
    assert latest.current == 4 and latest.metrics == {"loss": 0.25}
    # 2 steps in the 10 s since the first line: the 8 left take about 40 s.
    assert abs(latest.eta_seconds(now) - 40) < 1
    assert describe(latest).startswith("step 4/12 (33%)  loss 0.25  ETA 4")


def _record(progress: StepProgress | None) -> rec.RunRecord:
    step = rec.StepRecord(name="train", component="sft", role="train", status=rec.RUNNING, started=time.time() - 5,
                          progress=progress)
    return rec.RunRecord(run_id="r1", pipeline="p", pipeline_path="p.yaml", folder=".", params={},
                         order=["train"], steps={"train": step})


def test_ci_logs_get_a_progress_line_every_interval():
    out = io.StringIO()
    shown = Progress(out, live=False, every_s=0)
    progress = StepProgress(6, 24, "step", {"loss": 0.357}, started=time.time() - 10, first=1)
    shown(_record(progress))  # the status change
    shown(_record(progress))  # the interval (0 s) has passed: a progress line
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("train: running")
    assert "train: running" in lines[1] and "step 6/24 (25%)  loss 0.357  ETA 36s" in lines[1]


def test_a_terminal_gets_a_live_bar_with_the_figures():
    out = io.StringIO()
    shown = Progress(out, live=True)
    shown(_record(StepProgress(6, 24, "step", {"loss": 0.357}, started=time.time() - 10, first=1)))
    shown.close()
    text = out.getvalue()
    assert "train" in text and "step 6/24 (25%)" in text and "loss 0.357" in text and "ETA" in text


def test_the_runner_hands_the_step_its_progress_file(toy, cli):
    code, out, err = cli("run", "pipelines/toy.yaml")
    assert code == 0, out + err
    record = json.loads(next((toy / ".tuneline" / "runs").glob("*/run.json")).read_text())
    assert record["steps"]["gen"]["progress"]["current"] == record["steps"]["gen"]["progress"]["total"]
    assert record["steps"]["gen"]["progress"]["unit"] == "line"

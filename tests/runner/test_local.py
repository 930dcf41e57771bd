"""The local runner on the toy project: real subprocesses, real cache, real run records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneline.targets.local.record import find_run


def run_record(toy: Path, run_id: str = "latest") -> dict:
    record = find_run(toy / ".tuneline" / "runs", run_id)
    assert record is not None
    return record


def statuses(record: dict) -> dict[str, str]:
    return {name: step["status"] for name, step in record["steps"].items()}


def test_run_executes_every_step_and_records_it(toy, cli):
    code, out, err = cli("run", "pipelines/toy.yaml")
    assert code == 0, out + err
    record = run_record(toy)
    assert record["status"] == "succeeded"
    assert statuses(record) == {"gen": "succeeded", "check": "succeeded", "publish": "succeeded"}
    check = record["steps"]["check"]
    assert check["outputs"]["passed"] == {"type": "boolean", "value": True}
    assert check["outputs"]["size"]["value"] == 5
    assert check["exit_code"] == 0 and check["command"][:2] == ["python", "components/check/check.py"]
    note = Path(record["steps"]["publish"]["outputs"]["note"]["path"])
    assert note.read_text() == "published 5: 5 lines\n"
    assert len(record["steps"]["gen"]["outputs"]["data"]["sha256"]) == 64
    assert {"from": "check.passed", "to": "publish.when", "sha256": None, "value": True} in record["lineage"]
    assert Path(record["steps"]["gen"]["log"]).read_text().count("wrote 5 lines") == 1
    assert "step" in out and "succeeded" in out  # the summary table


def test_unchanged_rerun_is_all_cache_and_a_param_change_reruns_only_affected(toy, cli):
    assert cli("run", "pipelines/toy.yaml")[0] == 0
    code, out, _ = cli("run", "pipelines/toy.yaml")
    assert code == 0
    assert statuses(run_record(toy)) == {"gen": "cached", "check": "cached", "publish": "cached"}
    assert "check counted **5** lines" in out  # a cached step's summary is shown too
    # threshold only feeds `check`: gen stays cached; check reruns; publish's inputs are unchanged -> cached.
    assert cli("run", "pipelines/toy.yaml", "--set", "threshold=3")[0] == 0
    assert statuses(run_record(toy)) == {"gen": "cached", "check": "succeeded", "publish": "cached"}
    assert cli("run", "pipelines/toy.yaml", "--set", "count=6")[0] == 0
    assert statuses(run_record(toy)) == {"gen": "succeeded", "check": "succeeded", "publish": "succeeded"}
    assert cli("run", "pipelines/toy.yaml", "--no-cache")[0] == 0
    assert set(statuses(run_record(toy)).values()) == {"succeeded"}


def test_editing_component_code_invalidates_its_cache(toy, cli):
    assert cli("run", "pipelines/toy.yaml")[0] == 0
    script = toy / "components/check/check.py"
    script.write_text(script.read_text() + "\n# a harmless edit still changes the code digest\n")
    assert cli("run", "pipelines/toy.yaml")[0] == 0
    assert statuses(run_record(toy)) == {"gen": "cached", "check": "succeeded", "publish": "cached"}


def test_false_condition_skips_the_step(toy, cli):
    assert cli("run", "pipelines/toy.yaml", "--set", "count=2")[0] == 0
    record = run_record(toy)
    assert statuses(record)["publish"] == "skipped"
    assert "skipped: gate not passed (condition check.passed is false)" in record["steps"]["publish"]["reason"]
    assert record["status"] == "succeeded"


def test_failure_stops_dependants_keeps_outputs_and_resumes_through_cache(toy, cli):
    assert cli("run", "pipelines/toy.yaml")[0] == 0
    script = toy / "components/check/check.py"
    good = script.read_text()
    script.write_text("import sys\nprint('boom: bad data', file=sys.stderr)\nsys.exit(7)\n")
    code, out, err = cli("run", "pipelines/toy.yaml", "--set", "count=7")
    assert code == 1
    failed = run_record(toy)
    assert statuses(failed) == {"gen": "succeeded", "check": "failed", "publish": "not-run"}
    assert failed["steps"]["check"]["exit_code"] == 7
    assert "step 'check' failed: exited with code 7" in err and "boom: bad data" in err
    gen_out = Path(failed["steps"]["gen"]["outputs"]["data"]["path"], "lines.txt")
    assert gen_out.read_text().count("\n") == 7  # earlier output intact
    script.write_text(good)
    assert cli("run", "pipelines/toy.yaml", "--set", "count=7")[0] == 0
    assert statuses(run_record(toy)) == {"gen": "cached", "check": "succeeded", "publish": "succeeded"}


def test_missing_input_file_is_refused_before_any_step_runs(toy, cli):
    pipeline = toy / "pipelines/toy.yaml"
    pipeline.write_text(pipeline.read_text().replace(
        "report: ${{steps.check.outputs.report}}", "report: data/missing.txt"))
    line = next(i for i, text in enumerate(pipeline.read_text().splitlines(), 1) if "data/missing.txt" in text)
    code, _, err = cli("run", "pipelines/toy.yaml")
    assert code == 2
    assert f"pipelines/toy.yaml:{line}:" in err and "publish.report: file not found: data/missing.txt" in err
    assert "log: None" not in err and not (toy / ".tuneline" / "runs").exists()


RETRY_PIPELINE = """
name: retry
params:
  fails: {type: integer, default: 1}
  code: {type: integer, default: 143}
steps:
  flaky:
    component: components/flaky
    inputs: {marker: "{marker}", fail_times: "${{params.fails}}", exit_code: "${{params.code}}"}
"""


def test_retries_follow_the_component_policy(toy, cli, tmp_path):
    path = toy / "pipelines/retry.yaml"
    path.write_text(RETRY_PIPELINE.replace("{marker}", str(tmp_path / "m1")))
    assert cli("run", str(path))[0] == 0
    step = run_record(toy)["steps"]["flaky"]
    assert [a["exit_code"] for a in step["attempts"]] == [143, 0]
    path.write_text(RETRY_PIPELINE.replace("{marker}", str(tmp_path / "m2")))
    assert cli("run", str(path), "--set", "fails=5", "--set", "code=137")[0] == 1
    step = run_record(toy)["steps"]["flaky"]
    assert [a["exit_code"] for a in step["attempts"]] == [137, 137, 137]  # 1 try + retry.max 2
    assert step["reason"] == "exited with code 137 after 3 attempts"


@pytest.mark.parametrize("code", [2, 1])
def test_a_usage_or_data_error_is_not_retried(toy, cli, tmp_path, code):
    path = toy / "pipelines/retry.yaml"
    path.write_text(RETRY_PIPELINE.replace("{marker}", str(tmp_path / "m")))
    assert cli("run", str(path), "--set", f"code={code}")[0] == 1
    step = run_record(toy)["steps"]["flaky"]
    assert [a["exit_code"] for a in step["attempts"]] == [code]
    assert step["reason"] == (f"exited with code {code}; not retried: exit code {code} is not in retry.on "
                              "[143, 137, 75] (after 1 attempt)")


SLEEPY_PIPELINE = """
name: sleepy
steps:
  nap:
    component: components/sleepy
    timeout: {timeout}
    inputs: {seconds: 30, marker: "{marker}"}
  after:
    component: components/gen
    inputs: {label: "${{steps.nap.outputs.done}}"}
"""


def test_timeout_sends_sigterm_first(toy, cli, tmp_path):
    marker = tmp_path / "term"
    path = toy / "pipelines/sleepy.yaml"
    # 4 s: the step must have started Python and installed its SIGTERM handler before the timeout, even on a
    # loaded machine; with 1 s the default action could kill it first and the marker would be missing.
    path.write_text(SLEEPY_PIPELINE.replace("{timeout}", "4").replace("{marker}", str(marker))
                    .replace('{label: "${{steps.nap.outputs.done}}"}', "{count: 1}"))
    path.write_text(path.read_text().replace("    inputs: {count: 1}", "    inputs: {count: 1}\n    when: "
                                                                         "${{steps.nap.outputs.done}}"))
    assert cli("run", str(path))[0] == 1
    record = run_record(toy)
    assert record["steps"]["nap"]["reason"].startswith("timed out after 4s")
    assert statuses(record)["after"] == "not-run"
    assert marker.read_text() == "terminated"  # the step got the chance to checkpoint


def test_ctrl_c_stops_the_step_and_leaves_a_consistent_record(toy, tmp_path):
    marker = tmp_path / "term"
    path = toy / "pipelines/sleepy.yaml"
    path.write_text(SLEEPY_PIPELINE.replace("{timeout}", "60").replace("{marker}", str(marker))
                    .replace('{label: "${{steps.nap.outputs.done}}"}', "{count: 1}")
                    .replace("    inputs: {count: 1}", "    inputs: {count: 1}\n    when: ${{steps.nap.outputs.done}}"))
    env = dict(os.environ)
    # Its own session, as a terminal's Ctrl-C reaches a foreground job: the SIGINT goes to this runner only, and
    # if the test fails the runner and its step are stopped with it instead of outliving it in pytest's group.
    process = subprocess.Popen([sys.executable, "-m", "tuneline", "run", str(path)], cwd=toy, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        log_seen = False
        deadline = time.time() + 60
        while time.time() < deadline and not log_seen:
            logs = list((toy / ".tuneline/runs").glob("*/steps/nap/log.txt"))
            log_seen = bool(logs) and "started" in logs[0].read_text()
            time.sleep(0.1)
        assert log_seen
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, out + err
    record = run_record(toy)
    assert record["status"] == "interrupted"
    assert statuses(record) == {"nap": "interrupted", "after": "not-run"}
    assert record["duration_s"] is not None
    assert marker.read_text() == "terminated"


def test_only_and_from(toy, cli):
    code, _, err = cli("run", "pipelines/toy.yaml", "--only", "check")
    assert code == 1 and "no cached result for 'gen'" in err
    assert cli("run", "pipelines/toy.yaml")[0] == 0
    assert cli("run", "pipelines/toy.yaml", "--only", "check")[0] == 0
    assert statuses(run_record(toy)) == {"gen": "cached", "check": "succeeded", "publish": "not-run"}
    assert cli("run", "pipelines/toy.yaml", "--from", "check")[0] == 0
    assert statuses(run_record(toy)) == {"gen": "cached", "check": "succeeded", "publish": "succeeded"}
    code, _, err = cli("run", "pipelines/toy.yaml", "--from", "chek")
    assert code == 2 and "--from chek: no such step" in err


def test_runs_list_and_show(toy, cli):
    assert cli("run", "pipelines/toy.yaml")[0] == 0
    assert cli("run", "pipelines/toy.yaml", "--set", "count=2")[0] == 0
    code, out, _ = cli("runs", "list")
    assert code == 0 and out.count("toy") == 2 and "1 skipped" in out
    code, out, _ = cli("runs", "show", "latest", "--json")
    shown = json.loads(out)
    assert shown["params"] == {"count": 2, "threshold": 4}
    assert shown["steps"]["check"]["outputs"]["size"]["value"] == 2
    # The full id: both runs may start in the same second, so a short prefix could match both.
    code, out, _ = cli("runs", "show", shown["run_id"])
    assert code == 0 and "size [integer] = 2" in out and "data [uri_folder] = " in out
    assert cli("runs", "show", "nope")[0] == 1

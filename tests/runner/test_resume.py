"""`resume: true` outputs locally: an interrupted run's checkpoints are found by the next run with the same key.

The toy `count` component checkpoints every step; a real SIGINT to a real `tuneline run` process stops it mid-way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runner.test_local import run_record, statuses
from tuneline.targets.local.resume import STORES_FOLDER, open_stores

STEPS = 6
LINES = 5
EXPECTED_SUM = LINES * STEPS * (STEPS + 1) // 2


def _interrupt_after_checkpoint(toy: Path, step: int) -> subprocess.CompletedProcess[str]:
    """Start `tuneline run`, press Ctrl-C (SIGINT to the runner) once `count` has saved checkpoint `step`."""
    process = subprocess.Popen([sys.executable, "-m", "tuneline", "run", "pipelines/resume.yaml"], cwd=toy,
                               env=dict(os.environ), start_new_session=True,  # SIGINT to the runner only
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        logs = list((toy / ".tuneline/runs").glob("*/steps/count/log.txt"))
        if logs and f"checkpoint saved at step {step}\n" in logs[0].read_text():
            break
        time.sleep(0.05)
    else:
        process.kill()
        raise AssertionError("count never saved its checkpoint: " + "".join(process.communicate()))
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _count_log(record: dict) -> str:
    return Path(record["steps"]["count"]["log"]).read_text()


def test_an_interrupted_step_resumes_from_its_checkpoint_in_the_next_run(toy, cli):
    stopped = _interrupt_after_checkpoint(toy, 2)
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    first = run_record(toy)
    assert first["status"] == "interrupted" and statuses(first)["count"] == "interrupted"
    interrupted_log = _count_log(first)
    last_saved = max(int(line.split()[-1]) for line in interrupted_log.splitlines()
                     if line.startswith("checkpoint saved at step"))
    assert 2 <= last_saved < STEPS and f"SIGTERM: stopped after step {last_saved}" in interrupted_log
    key = first["steps"]["count"]["cache_key"]
    store = toy / ".tuneline" / STORES_FOLDER / key / "checkpoints"
    assert first["steps"]["count"]["resume"]["checkpoints"] == {"store": str(store), "entries_at_start": []}
    assert (store / f"step-{last_saved}.json").is_file()
    assert not list((Path(first["folder"]) / "steps/count/outputs/checkpoints").iterdir())

    # The unchanged pipeline again: same cache key, so the same store.
    code, out, err = cli("run", "pipelines/resume.yaml")
    assert code == 0, out + err
    second = run_record(toy)
    count = second["steps"]["count"]
    assert count["status"] == "succeeded" and count["cache_key"] == key
    assert f"resumed from step-{last_saved}.json: step {last_saved}\n" in _count_log(second)
    assert count["resume"]["checkpoints"]["entries_at_start"] == sorted(
        f"step-{i}.json" for i in range(1, last_saved + 1))
    assert Path(count["outputs"]["total"]["path"]).read_text() == f"{EXPECTED_SUM}\n"
    # Success: the store became the run's output (and cache entry); nothing is left under checkpoints/.
    outputs = Path(second["folder"]) / "steps/count/outputs/checkpoints"
    assert sorted(p.name for p in outputs.iterdir()) == [f"step-{i}.json" for i in range(1, STEPS + 1)]
    assert json.loads((outputs / f"step-{STEPS}.json").read_text()) == {"step": STEPS, "sum": EXPECTED_SUM}
    assert not (toy / ".tuneline" / STORES_FOLDER / key).exists()

    # An uninterrupted run from scratch computes the same total; the re-run after it is served from the cache.
    code, out, err = cli("run", "pipelines/resume.yaml", "--no-cache")
    assert code == 0, out + err
    fresh = run_record(toy)
    assert "resumed" not in _count_log(fresh)
    assert Path(fresh["steps"]["count"]["outputs"]["total"]["path"]).read_text() == f"{EXPECTED_SUM}\n"
    assert cli("run", "pipelines/resume.yaml")[0] == 0
    assert statuses(run_record(toy))["count"] == "cached"


def test_no_cache_discards_an_earlier_attempts_store(toy, cli):
    key_store = open_stores(toy / ".tuneline", "k" * 64, ["checkpoints"], fresh=False)[0]
    (key_store.path / "step-3.json").write_text("{}")
    key_store.release()
    again = open_stores(toy / ".tuneline", "k" * 64, ["checkpoints"], fresh=True)[0]
    assert again.entries_at_start == [] and not list(again.path.iterdir())
    again.release()


def test_a_store_in_use_is_refused_to_a_second_run(toy):
    from tuneline.targets.local.resume import StoreBusy

    held = open_stores(toy / ".tuneline", "a" * 64, ["checkpoints"], fresh=False)
    with pytest.raises(StoreBusy, match="in use by another run"):
        open_stores(toy / ".tuneline", "a" * 64, ["checkpoints"], fresh=False)
    held[0].release()
    open_stores(toy / ".tuneline", "a" * 64, ["checkpoints"], fresh=False)[0].release()

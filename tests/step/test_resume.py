"""The resume wrapper compiled cluster steps run behind: a SIGTERM-ed attempt's store is found by the next one.

Real processes: the wrapper around the toy `count` component, keyed by its inputs as a KFP pod would see them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tuneline.spec import load_component
from tuneline.step.cache import step_cache_key
from tuneline.step.digest import path_sha256
from tuneline.step.resume import rewrite, store_key


@pytest.fixture
def data(toy: Path) -> Path:
    folder = toy / "staged" / "data"
    folder.mkdir(parents=True)
    (folder / "lines.txt").write_text("a\nb\nc\n")
    return folder


def _wrapped(data: Path, root: Path, out: Path, steps: int = 5) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)  # KFP's launcher creates the parent folder of every output path
    return [sys.executable, "-m", "tuneline.step.resume", "--component", "components/count", "--root", str(root),
            "--store", f"checkpoints={out}/checkpoints", "--artifact", f"data={data}",
            "--value", f"steps={steps}", "--value", "step_seconds=0.2", "--",
            sys.executable, "components/count/count.py", str(data), str(steps), "0.2", f"{out}/total",
            f"{out}/checkpoints"]


def test_killed_attempt_resumes_in_the_next_and_the_store_moves_into_the_output(toy, data, tmp_path):
    root = tmp_path / "pvc"
    first = subprocess.Popen(_wrapped(data, root, tmp_path / "pod-1"), cwd=toy, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in first.stdout:
        seen.append(line)
        if line == "checkpoint saved at step 2\n":
            first.send_signal(signal.SIGTERM)  # to the wrapper, as a container's main process gets it
    assert first.wait(timeout=30) == 143, "".join(seen)
    assert any(line.startswith("resume: signal 15 received") for line in seen)
    key = store_key(toy / "components/count", {"steps": "5", "step_seconds": "0.2"}, {"data": str(data)})
    store = root / key / "checkpoints"
    kept = sorted(p.name for p in store.iterdir())
    assert kept[:2] == ["step-1.json", "step-2.json"] and len(kept) < 5
    assert not (tmp_path / "pod-1" / "total").exists()

    # The retried pod: another scratch output path, the same inputs -> the same key and store.
    second = subprocess.run(_wrapped(data, root, tmp_path / "pod-2"), cwd=toy, capture_output=True, text=True,
                            timeout=30)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"from an earlier attempt: {', '.join(kept)}" in second.stdout
    assert f"resumed from {kept[-1]}: step {len(kept)}" in second.stdout
    assert (tmp_path / "pod-2" / "total").read_text() == f"{3 * 15}\n"
    assert sorted(p.name for p in (tmp_path / "pod-2" / "checkpoints").iterdir()) == [
        f"step-{i}.json" for i in range(1, 6)]
    assert not (root / key).exists()  # removed from the volume once the output holds it


def test_the_key_is_the_local_cache_key_and_follows_the_inputs(toy, data):
    component = toy / "components/count"
    key = store_key(component, {"steps": "5", "step_seconds": "0.2"}, {"data": str(data)})
    spec = load_component(component).spec.model_dump(mode="json")
    local = step_cache_key(component, spec, {"data": {"sha256": path_sha256(data)}, "steps": 5, "step_seconds": 0.2})
    assert key == local
    assert store_key(component, {"steps": "6", "step_seconds": "0.2"}, {"data": str(data)}) != key
    (data / "lines.txt").write_text("a\nb\n")
    assert store_key(component, {"steps": "5", "step_seconds": "0.2"}, {"data": str(data)}) != key


def test_in_output_keeps_the_store_inside_the_output(toy, data, tmp_path):
    out = tmp_path / "mounted"
    command = _wrapped(data, tmp_path / "unused", out, steps=2)
    command[command.index("--root"):command.index("--root") + 2] = ["--in-output"]
    done = subprocess.run(command, cwd=toy, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    key = store_key(toy / "components/count", {"steps": "2", "step_seconds": "0.2"}, {"data": str(data)})
    assert sorted(p.name for p in (out / "checkpoints" / key).iterdir()) == ["step-1.json", "step-2.json"]
    assert not (tmp_path / "unused").exists()


def test_rewrite_replaces_whole_path_segments_only():
    assert rewrite(["--ckpt", "/o/ck", "--x=/o/ck/sub", "/o/ck2"], {"/o/ck": "/pvc/k/ck"}) == [
        "--ckpt", "/pvc/k/ck", "--x=/pvc/k/ck/sub", "/o/ck2"]


def test_no_root_is_a_clear_error(toy, data, tmp_path, monkeypatch):
    monkeypatch.delenv("TUNELINE_CHECKPOINT_ROOT", raising=False)
    command = _wrapped(data, tmp_path, tmp_path / "o")
    del command[command.index("--root"):command.index("--root") + 2]
    done = subprocess.run(command, cwd=toy, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "TUNELINE_CHECKPOINT_ROOT is not set" in done.stderr
    assert not list((tmp_path / "o").iterdir())  # the step never started


def test_an_unwritable_root_is_a_clear_error(toy, data, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # a file where the volume should be: nothing can be created below it
    done = subprocess.run(_wrapped(data, blocker, tmp_path / "o"), cwd=toy, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1
    assert "cannot create the checkpoint store" in done.stderr and "is the checkpoint volume mounted" in done.stderr


def test_two_attempts_with_the_same_inputs_take_turns_on_one_store(toy, data, tmp_path):
    """Two runs started with the same inputs share a key: the second waits for the first's lock instead of
    writing into the store the first is about to move into its output and remove."""
    root = tmp_path / "pvc"
    first = subprocess.Popen(_wrapped(data, root, tmp_path / "run-1"), cwd=toy, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    assert first.stdout.readline().startswith("resume: checkpoints -> ")  # it holds the lock now
    # Stopped, it keeps holding it however long the second takes to start (its 1 s of work could otherwise end
    # first on a busy machine, and the second would find the lock free).
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.Popen(_wrapped(data, root, tmp_path / "run-2"), cwd=toy, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        waiting = second.stdout.readline()
    finally:
        first.send_signal(signal.SIGCONT)
    rest = first.stdout.read()
    assert first.wait(timeout=60) == 0, rest
    assert "another attempt with the same inputs holds" in waiting, waiting
    assert second.wait(timeout=60) == 0, waiting + second.stdout.read()
    for run in ("run-1", "run-2"):
        assert (tmp_path / run / "total").read_text() == f"{3 * 15}\n"
        assert sorted(p.name for p in (tmp_path / run / "checkpoints").iterdir()) == [
            f"step-{i}.json" for i in range(1, 6)]


def test_stale_stores_and_stage_folders_are_swept_and_live_ones_kept(tmp_path):
    import os
    import time

    from tuneline.step.resume import store_lock, sweep

    root = tmp_path / "pvc"
    now = time.time()
    old = now - 20 * 86400

    def made(path: Path, when: float) -> Path:
        path.mkdir(parents=True)
        (path / "file").write_text("x")
        for p in (path / "file", path):
            os.utime(p, (when, when))
        return path

    stale, fresh, own, held = (made(root / (c * 64), t) for c, t in (("a", old), ("b", now), ("c", old), ("d", old)))
    stale_stage = made(root / "run-1" / "train", old)
    (stale_stage / "launcher-heartbeat").write_text("1")
    for p in (stale_stage / "launcher-heartbeat", stale_stage):
        os.utime(p, (old, old))
    live_stage = made(root / "run-2" / "train", old)
    (live_stage / "launcher-heartbeat").write_text("9")  # a launcher beating now
    other = made(root / "not-tuneline", old)
    leftover_lock = root / ("e" * 64 + ".lock")
    leftover_lock.write_text("")
    os.utime(leftover_lock, (old, old))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.lockf(f, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\ntime.sleep(60)", str(root / ("d" * 64 + ".lock"))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        removed = sweep(root, "c" * 64, max_age_days=14, now=now)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(removed) == sorted([stale, stale_stage])
    assert not stale.exists() and not stale_stage.exists() and not (root / "run-1").exists()
    assert not leftover_lock.exists()
    assert fresh.exists() and own.exists() and held.exists() and live_stage.exists() and other.exists()
    assert sweep(root, "c" * 64, max_age_days=0, now=now + 100 * 86400) == []  # 0 keeps everything
    with store_lock(root, "f" * 64, blocking=False) as free:
        assert free

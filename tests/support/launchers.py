"""Stopping a multi-process launch (torchrun, accelerate launch) that a test started in a session of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil


def stop_launch(process: subprocess.Popen) -> None:
    """torchrun starts each worker in a session of its own, so killing the launcher's group would leave the workers
    running: SIGTERM lets its agent stop them first (it SIGKILLs a worker that has not exited 30 s after its
    SIGTERM, e.g. one stuck in a collective); SIGKILL follows if the launcher itself hangs."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def finish_launch(process: subprocess.Popen, timeout: float = 600) -> str:
    """The launch's whole output once it exits 0; stopped (workers included) whatever happens."""
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        stop_launch(process)
    assert process.returncode == 0, output[-4000:]
    return output


def preempt_after_first_checkpoint(process: subprocess.Popen, checkpoints: Path, timeout: float = 600) -> str:
    """SIGTERM to every worker once the run has written a checkpoint, as a node drain signals every pod; the
    launch's output. The run must still have been going: one that finished first proves nothing."""
    try:
        deadline = time.time() + timeout
        while not list(checkpoints.glob("checkpoint-*")) and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        for worker in psutil.Process(process.pid).children(recursive=True):
            worker.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=timeout)
    finally:
        stop_launch(process)
    assert process.returncode != 0, "the run finished before it was preempted: " + output[-2000:]
    assert "SIGTERM received" in output
    return output

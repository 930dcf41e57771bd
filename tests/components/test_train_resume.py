"""Spot safety: a run killed with SIGTERM mid-training and restarted ends exactly where an uninterrupted run does.

Both runs are real ``python -m components.train`` processes on a tiny random Llama, with gradient
accumulation and LoRA dropout on, so the resumed run must restore the data position, the optimizer,
the scheduler and the RNG to match.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.tickets import write_splits

MAX_STEPS = 14
ROOT = Path(__file__).resolve().parents[2]


def _command(data, out):
    return [sys.executable, "-m", "components.train", "--train", str(data["train"]),
            "--validation", str(data["validation"]), "--base-model", "tiny-random-llama",
            "--model-out", str(out / "model"), "--checkpoints", str(out / "ckpt"),
            "--mlflow-run-id-out", str(out / "run_id.json"), "--max-steps", str(MAX_STEPS),
            "--per-device-batch", "2", "--grad-accum", "2", "--lora-dropout", "0.1", "--save-steps", "4",
            "--keep-checkpoints", "2", "--eval-steps", "5", "--log-steps", "1"]


def _losses(out):
    from tuneline.ml.checkpoint import latest

    return json.loads((latest(out / "ckpt") / "state.json").read_text())["losses"]


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path, train_env):
    data = write_splits(tmp_path / "data", n_train=24)
    env = train_env
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # Own sessions: the SIGTERM goes to the victim alone, and neither run outlives a failing test.
    reference = subprocess.Popen(_command(data, straight), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
    victim = subprocess.Popen(_command(data, killed), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        seen = []
        for line in victim.stdout:
            seen.append(line)
            if line.startswith("step 6/"):
                victim.send_signal(signal.SIGTERM)
        assert victim.wait(timeout=120) == 143, "".join(seen[-20:])
        interrupted_at = [int(line.split()[-1]) for line in seen if line.startswith("checkpoint saved at step")][-1]
        assert 6 <= interrupted_at < MAX_STEPS
        assert not (killed / "model" / "training_summary.json").exists()

        resumed = subprocess.run(_command(data, killed), env=env, cwd=ROOT, capture_output=True, text=True,
                                 timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert f"resumed from checkpoint-{interrupted_at:08d}" in resumed.stdout
        assert reference.wait(timeout=300) == 0
    finally:
        for process in (reference, victim):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    assert _losses(killed) == pytest.approx(_losses(straight), abs=1e-6)
    assert len(_losses(killed)) == MAX_STEPS
    a = load_file(straight / "model" / "adapter_model.safetensors")
    b = load_file(killed / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)
    summaries = [json.loads((out / "model" / "training_summary.json").read_text()) for out in (straight, killed)]
    assert summaries[1]["resumes"] == 1 and summaries[0]["resumes"] == 0
    assert summaries[1]["final_val_loss"] == pytest.approx(summaries[0]["final_val_loss"], abs=1e-6)
    # The resumed process continued the interrupted MLflow run rather than starting another.
    assert summaries[1]["mlflow_run_id"] == (killed / "run_id.json").read_text()

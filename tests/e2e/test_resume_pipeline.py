"""Ctrl-C during `train`, then the unchanged pipeline again: train resumes from its checkpoint and ends with the
same model as a run that was never interrupted (losses, adapter weights, validation loss, the MLflow run).

With gradient accumulation and LoRA dropout on, the resumed run must restore the data position, the optimizer,
the scheduler and the RNG to match; this is the spot-safety test of components/train, run the way users run it.

Real `tuneline run` processes on the real train component with a tiny random model; the interrupted run gets a
real SIGINT, which the runner turns into SIGTERM for the step (so it checkpoints) before it records the run as
interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.tickets import write_splits
from tuneline.llm.ml.checkpoint import latest
from tuneline.targets.local.record import find_run

REPO = Path(__file__).resolve().parents[2]
# Long enough that the Ctrl-C sent after the step-2 checkpoint lands before the last step: a step of the tiny
# model takes milliseconds, and with 6 steps a quiet machine once finished them all before the signal arrived.
MAX_STEPS = 40
PIPELINE = f"""\
# Run as: tuneline run pipelines/train.yaml
name: train-only
params:
  base_model: {{type: string, default: tiny-random-llama}}
steps:
  train:
    component: components/train
    inputs:
      train: data/train
      validation: data/validation
      base_model: ${{{{params.base_model}}}}
      max_steps: {MAX_STEPS}
      save_steps: 2
      per_device_batch: 2
      grad_accum: 2
      lora_dropout: 0.1
      eval_steps: 3
"""


def _project(root: Path) -> dict[str, str]:
    shutil.copytree(REPO / "components", root / "components", ignore=shutil.ignore_patterns("__pycache__"))
    write_splits(root / "data", n_train=8, n_validation=2)
    (root / "pipelines").mkdir()
    (root / "pipelines" / "train.yaml").write_text(PIPELINE)
    env = {**os.environ, "TUNELINE_HOME": str(root / ".tuneline"), "PYTHONPATH": str(REPO),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    code = ("from tuneline.llm.ml.models import resolve_model; resolve_model('tiny-random-llama'); "
            "from tuneline import settings; settings.mlflow_client().search_experiments()")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True, capture_output=True)
    return env


def _run(root: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tuneline", "run", "pipelines/train.yaml"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # the Ctrl-C goes to this runner only, not pytest's group


def _record(root: Path) -> dict:
    record = find_run(root / ".tuneline" / "runs", "latest")
    assert record is not None
    return record


@pytest.mark.slow
@pytest.mark.heavy
def test_ctrl_c_then_rerun_resumes_train_and_matches_an_uninterrupted_run(tmp_path):
    straight_root, victim_root = tmp_path / "straight", tmp_path / "victim"
    straight_env, victim_env = _project(straight_root), _project(victim_root)
    straight = _run(straight_root, straight_env)
    victim = _run(victim_root, victim_env)
    deadline = time.time() + 240
    while time.time() < deadline:
        logs = list((victim_root / ".tuneline/runs").glob("*/steps/train/log.txt"))
        if logs and "checkpoint saved at step 2\n" in logs[0].read_text():
            break
        time.sleep(0.02)
    else:
        victim.kill()
        straight.kill()
        raise AssertionError("train never saved its first checkpoint:\n" + victim.communicate()[0][-3000:])
    victim.send_signal(signal.SIGINT)  # Ctrl-C
    out = victim.communicate(timeout=120)[0]
    assert victim.returncode == 130, out[-3000:]
    first = _record(victim_root)
    assert first["status"] == "interrupted" and first["steps"]["train"]["status"] == "interrupted"
    log = Path(first["steps"]["train"]["log"]).read_text()
    saved = [int(line.split()[-1]) for line in log.splitlines() if line.startswith("checkpoint saved at step")]
    assert "SIGTERM received" in log and 2 <= saved[-1] < MAX_STEPS
    key = first["steps"]["train"]["cache_key"]
    assert (victim_root / ".tuneline/checkpoints" / key / "checkpoints" / f"checkpoint-{saved[-1]:08d}").is_dir()

    rerun = _run(victim_root, victim_env)
    out = rerun.communicate(timeout=240)[0]
    assert rerun.returncode == 0, out[-3000:]
    second = _record(victim_root)
    train = second["steps"]["train"]
    assert train["status"] == "succeeded" and train["cache_key"] == key
    log = Path(train["log"]).read_text()
    assert f"resumed from checkpoint-{saved[-1]:08d}: step {saved[-1]}" in log
    assert f"step {saved[-1] + 1}/{MAX_STEPS}" in log and f"step {saved[-1]}/{MAX_STEPS}" not in log
    assert not (victim_root / ".tuneline/checkpoints" / key).exists()  # moved into the run's outputs

    assert straight.wait(timeout=240) == 0, straight.communicate()[0][-3000:]
    reference = _record(straight_root)["steps"]["train"]
    assert reference["cache_key"] == key  # another project folder, the same inputs: the same key
    models = [Path(step["outputs"]["model"]["path"]) for step in (reference, train)]
    summaries = [json.loads((m / "training_summary.json").read_text()) for m in models]
    assert summaries[1]["resumes"] == 1 and summaries[0]["resumes"] == 0
    assert summaries[1]["steps"] == summaries[0]["steps"] == MAX_STEPS
    assert summaries[1]["final_train_loss"] == pytest.approx(summaries[0]["final_train_loss"], abs=1e-6)
    assert summaries[1]["final_val_loss"] == pytest.approx(summaries[0]["final_val_loss"], abs=1e-6)
    # The data position, optimizer, scheduler and RNG came back exactly: every step's loss is the same.
    losses = [json.loads((latest(Path(step["outputs"]["checkpoints"]["path"])) / "state.json").read_text())["losses"]
              for step in (reference, train)]
    assert len(losses[1]) == MAX_STEPS and losses[1] == pytest.approx(losses[0], abs=1e-6)
    # The resumed process continued the interrupted MLflow run rather than starting another.
    assert summaries[1]["mlflow_run_id"] == train["outputs"]["mlflow_run_id"]["value"]
    a, b = (load_file(m / "adapter_model.safetensors") for m in models)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)

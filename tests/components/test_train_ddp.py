"""Distributed data parallel: 2 CPU processes (gloo, torchrun) x batch 2 == 1 process x batch 4."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.launchers import stop_launch
from tests.support.tickets import write_splits

ROOT = Path(__file__).resolve().parents[2]


def _args(data, out, batch):
    return ["-m", "components.train", "--train", str(data["train"]), "--base-model", "tiny-random-llama",
            "--model-out", str(out / "model"), "--checkpoints", str(out / "ckpt"),
            "--mlflow-run-id-out", str(out / "run_id.json"), "--max-steps", "4",
            "--per-device-batch", str(batch), "--grad-accum", "2", "--lora-dropout", "0", "--save-steps", "0"]


@pytest.mark.slow
@pytest.mark.heavy
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, train_env):
    data = write_splits(tmp_path / "data", n_train=20)
    env = train_env
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # Own process groups: if the test fails or times out, torchrun's workers must not outlive it.
    one = subprocess.Popen([sys.executable, *_args(data, single, 4)], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    two = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            *_args(data, ddp, 2)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = two.communicate(timeout=600)
        assert two.returncode == 0, out[-3000:] + err[-3000:]
        assert one.wait(timeout=600) == 0
    finally:
        for process in (one, two):
            stop_launch(process)

    summaries = [json.loads((out / "model" / "training_summary.json").read_text()) for out in (single, ddp)]
    assert summaries[0]["world_size"] == 1 and summaries[1]["world_size"] == 2
    losses = [json.loads((next((out / "ckpt").glob("checkpoint-*")) / "state.json").read_text())["losses"]
              for out in (single, ddp)]
    assert len(losses[0]) == 4
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    a = load_file(single / "model" / "adapter_model.safetensors")
    b = load_file(ddp / "model" / "adapter_model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)

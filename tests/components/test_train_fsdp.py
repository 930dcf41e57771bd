"""FSDP2 on CPU (accelerate launch with components/train/accelerate/fsdp.yaml, gloo, 2 processes) with LoRA.

The FSDP run shards the model, loads real weights on rank 0 only (the others start on the meta device and get
rank 0's weights by broadcast), checkpoints through accelerate's sharded save_state and writes the adapter
gathered from the shards. It must give the DDP run's adapter, and a run killed after a checkpoint and
started again must give the uninterrupted run's adapter.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.launchers import finish_launch, preempt_after_first_checkpoint
from tests.support.tickets import write_splits

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8


LORA = ["--max-steps", str(STEPS), "--per-device-batch", "2", "--grad-accum", "1", "--lora-dropout", "0",
        "--save-steps", "2", "--keep-checkpoints", "1"]


def _train_args(data, out, options=LORA):
    return ["-m", "components.train", "--train", str(data["train"]), "--base-model", "tiny-random-llama",
            "--model-out", str(out / "model"), "--checkpoints", str(out / "ckpt"),
            "--mlflow-run-id-out", str(out / "run_id.json"), *options]


def _launch(kind, data, out, env, options=LORA):
    if kind == "fsdp":
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(ROOT / "components" / "train" / "accelerate" / "fsdp.yaml"), "--num_processes", "2",
                    "--main_process_port", "0"]
    else:  # plain torchrun, as a compiled step starts it (with --distribution fsdp among the options to shard)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.Popen([*launcher, *_train_args(data, out, options)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _run(kind, data, out, env, options=LORA):
    return finish_launch(_launch(kind, data, out, env, options))


def _adapter(out):
    return load_file(out / "model" / "adapter_model.safetensors")


def _losses(out):
    return json.loads((next((out / "ckpt").glob("checkpoint-*")) / "state.json").read_text())


@pytest.mark.slow
@pytest.mark.heavy
def test_fsdp_lora_matches_ddp_and_resumes_exactly_after_a_kill(tmp_path, train_env):
    data = write_splits(tmp_path / "data", n_train=16)
    ddp, fsdp, killed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "killed"
    _run("ddp", data, ddp, train_env)
    output = _run("fsdp", data, fsdp, train_env)
    assert "distribution FSDP, 2 process(es)" in output  # sharded, not plain data parallel

    # Each process wrote its shards of the adapter and its optimizer state, and nothing of the frozen base
    # (accelerate's save_state wrote the whole model: 140 GB per checkpoint for a 70B LoRA).
    checkpoint = next((fsdp / "ckpt").glob("checkpoint-*"))
    assert not (checkpoint / "trainable.safetensors").exists() and not (checkpoint / "accelerate").exists()
    from torch.distributed.checkpoint import FileSystemReader

    saved = FileSystemReader(str(checkpoint / "trainable-dcp")).read_metadata().state_dict_metadata
    weights = [k for k in saved if k.startswith("model.")]
    assert len(weights) == 28 and all(".lora_" in k for k in weights)
    assert any(k.startswith("optimizer.state.") and k.endswith("exp_avg_sq") for k in saved)
    a, b = _adapter(ddp), _adapter(fsdp)
    assert a.keys() == b.keys() and len(a) == 28  # every LoRA matrix of the 2-layer model, in full
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)
    assert _losses(fsdp)["losses"] == pytest.approx(_losses(ddp)["losses"], abs=1e-5)

    # torchrun knows nothing of accelerate's config file; --distribution fsdp sets it up in each process, and the
    # run is the accelerate-launched one, sharded checkpoint included.
    torchrun = tmp_path / "torchrun-fsdp"
    output = _run("ddp", data, torchrun, train_env, [*LORA, "--distribution", "fsdp"])
    assert "distribution FSDP, 2 process(es)" in output
    assert (next((torchrun / "ckpt").glob("checkpoint-*")) / "trainable-dcp").is_dir()
    for name, tensor in _adapter(fsdp).items():
        torch.testing.assert_close(_adapter(torchrun)[name], tensor, rtol=0, atol=0)

    # Preempted after its first checkpoint: SIGTERM to every worker, as a node drain sends it. The loop
    # checkpoints at the end of the current step and exits 143; the relaunch resumes from there.
    preempt_after_first_checkpoint(_launch("fsdp", data, killed, train_env), killed / "ckpt")
    stopped_at = json.loads((next((killed / "ckpt").glob("checkpoint-*")) / "state.json").read_text())["global_step"]
    assert 2 <= stopped_at < STEPS
    _run("fsdp", data, killed, train_env)
    resumed = _losses(killed)
    assert resumed["resumes"] == 1 and resumed["global_step"] == STEPS
    assert resumed["losses"] == pytest.approx(_losses(fsdp)["losses"], abs=1e-5)
    c = _adapter(killed)
    for name in b:
        torch.testing.assert_close(c[name], b[name], rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.heavy
def test_fsdp_full_fine_tune_with_rank_1_on_meta_matches_one_process(tmp_path, train_env):
    # Rank 1 builds its model on meta with uninitialised trainable storage; every weight it trains with comes
    # from rank 0's broadcast, so the gathered model equals one process's with the same global batch.
    data = write_splits(tmp_path / "data", n_train=16)
    full = ["--method", "full", "--learning-rate", "1e-3", "--max-steps", "3", "--save-steps", "0"]
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    one = subprocess.run([sys.executable, *_train_args(data, single, [*full, "--per-device-batch", "4"])],
                         env=train_env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    _run("fsdp", data, fsdp, train_env, [*full, "--per-device-batch", "2"])
    a = load_file(single / "model" / "model.safetensors")
    b = load_file(fsdp / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)

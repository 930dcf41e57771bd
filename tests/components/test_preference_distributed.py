"""The preference step across 2 CPU processes (gloo, torchrun, as a compiled multi-process step starts it).

The invariant is train's: 2 ranks x batch 2 give the update of 1 process x batch 4, so the adapter (or model) and
every figure equal the single process's. The held-out splits have 6 and 5 records, which two ranks of batch 2 do
not share evenly: their reward accuracy and margin must still be over every record (the ranks' sums reduced), and
ranks with fewer records must keep up with the others' collectives (FSDP gathers parameters in every forward pass;
KTO reduces its reference point per group).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.launchers import finish_launch, preempt_after_first_checkpoint
from tests.support.preference import write_preference_splits

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["--max-steps", "3", "--grad-accum", "2", "--lora-dropout", "0", "--save-steps", "0"]


def _args(data, out, *extra):
    return ["-m", "components.preference", "--train", str(data["train"]), "--validation", str(data["validation"]),
            "--test", str(data["test"]), "--base-model", "tiny-random-llama", "--model-out", str(out / "model"),
            "--checkpoints", str(out / "ckpt"), "--mlflow-run-id-out", str(out / "run_id.json"), *COMMON, *extra]


def _launch(env, data, out, *extra, ranks=1):
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    # Own process group: if the test fails or times out, torchrun's workers must not outlive it.
    return subprocess.Popen([*launcher, *_args(data, out, *extra)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _run(env, data, out, *extra, ranks=1):
    return finish_launch(_launch(env, data, out, *extra, ranks=ranks))


def _summary(out):
    return json.loads((out / "model" / "training_summary.json").read_text())


def _state(out):
    return json.loads((next((out / "ckpt").glob("checkpoint-*")) / "state.json").read_text())


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)


def _same_held_out(one, two) -> None:
    for split, examples in (("validation", 6), ("test", 5)):
        a, b = _summary(one)["held_out"][split], _summary(two)["held_out"][split]
        assert a["examples"] == b["examples"] == examples
        assert b.keys() == a.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], abs=1e-5), (split, key)


@pytest.fixture
def data(tmp_path):
    return write_preference_splits(tmp_path / "pairs", "pairs", n_train=16, n_validation=6, n_test=5)


@pytest.mark.slow
@pytest.mark.heavy
def test_two_process_ddp_dpo_matches_one_process_and_reports_every_ranks_records(tmp_path, train_env, data):
    from mlflow.tracking import MlflowClient

    one, two = tmp_path / "one", tmp_path / "ddp"
    _run(train_env, data, one, "--per-device-batch", "4")
    progress = tmp_path / "progress.jsonl"
    output = _run({**train_env, "TUNELINE_PROGRESS": str(progress)}, data, two, "--per-device-batch", "2",
                  "--distribution", "ddp", ranks=2)
    # Rank 0 alone reports progress, writes the model and the run.
    assert [json.loads(line)["current"] for line in progress.read_text().splitlines()] == [1, 2, 3]
    assert "distribution MULTI_CPU, 2 process(es)" in output
    assert _summary(one)["world_size"] == 1 and _summary(two)["world_size"] == 2
    assert _state(two)["losses"] == pytest.approx(_state(one)["losses"], abs=1e-5)
    _same_weights(load_file(one / "model" / "adapter_model.safetensors"),
                  load_file(two / "model" / "adapter_model.safetensors"))
    _same_held_out(one, two)
    # The training figures in MLflow are the step's over both ranks' pairs, logged once (rank 0).
    client = MlflowClient(tracking_uri=train_env["MLFLOW_TRACKING_URI"])
    histories = [[(m.step, m.value) for m in client.get_metric_history((out / "run_id.json").read_text(), name)]
                 for out in (one, two) for name in ("rewards/margins", "rewards/accuracies")]
    for single, ranks in ((histories[0], histories[2]), (histories[1], histories[3])):
        assert [step for step, _ in sorted(ranks)] == [step for step, _ in sorted(single)] == [1, 2, 3]
        assert [v for _, v in sorted(ranks)] == pytest.approx([v for _, v in sorted(single)], abs=1e-5)
    run = client.get_run((two / "run_id.json").read_text())
    assert run.data.params["world_size"] == "2" and run.data.params["distributed_type"] == "MULTI_CPU"

    # KTO reduces its reference point across ranks in every group: a rank with fewer held-out records used to
    # leave the other waiting in a mismatched collective and the run aborted at its first evaluation.
    kto = write_preference_splits(tmp_path / "kto", "kto", n_train=16, n_validation=6, n_test=5)
    _run(train_env, kto, tmp_path / "kto-ddp", "--loss", "kto", "--per-device-batch", "2", ranks=2)
    held = _summary(tmp_path / "kto-ddp")["held_out"]
    assert (held["validation"]["examples"], held["test"]["examples"]) == (6, 5)


@pytest.mark.slow
@pytest.mark.heavy
def test_fsdp_under_torchrun_matches_one_process_for_lora_and_full(tmp_path, train_env, data):
    from torch.distributed.checkpoint import FileSystemReader

    # LoRA on the base model: the reference is the sharded policy with its adapter disabled.
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    _run(train_env, data, one, "--per-device-batch", "4")
    output = _run(train_env, data, fsdp, "--per-device-batch", "2", "--distribution", "fsdp", ranks=2)
    assert "distribution FSDP, 2 process(es)" in output  # sharded, not plain data parallel
    assert _summary(fsdp)["preference"]["reference"] == "policy with adapter disabled"
    checkpoint = next((fsdp / "ckpt").glob("checkpoint-*"))
    saved = FileSystemReader(str(checkpoint / "trainable-dcp")).read_metadata().state_dict_metadata
    assert [k for k in saved if k.startswith("model.")] and all(
        ".lora_" in k for k in saved if k.startswith("model."))  # the adapter's shards, not the frozen base
    assert _state(fsdp)["losses"] == pytest.approx(_state(one)["losses"], abs=1e-5)
    _same_weights(load_file(one / "model" / "adapter_model.safetensors"),
                  load_file(fsdp / "model" / "adapter_model.safetensors"))
    _same_held_out(one, fsdp)

    # A full fine-tune: the frozen reference is sharded like the policy, and the model gathered to be written.
    full = ["--method", "full", "--learning-rate", "1e-3"]
    one, fsdp = tmp_path / "full-one", tmp_path / "full-fsdp"
    _run(train_env, data, one, "--per-device-batch", "4", *full)
    _run(train_env, data, fsdp, "--per-device-batch", "2", "--distribution", "fsdp", *full, ranks=2)
    assert _summary(one)["preference"]["reference"] == "copy"
    assert _summary(fsdp)["preference"]["reference"] == "sharded"  # no whole second model on each GPU
    _same_weights(load_file(one / "model" / "model.safetensors"), load_file(fsdp / "model" / "model.safetensors"))
    _same_held_out(one, fsdp)


@pytest.mark.slow
@pytest.mark.heavy
def test_fsdp_on_an_sft_adapter_gathers_the_new_adapter_and_stacks_it_as_one_process_does(tmp_path, train_env, data,
                                                                                          monkeypatch):
    # The new adapter is gathered from the shards and stacked on rank 0 with the SFT adapter: one adapter over
    # the base, the same as a single process writes.
    from tests.support.tickets import write_splits

    chat = write_splits(tmp_path / "chat")
    sft = tmp_path / "sft"
    subprocess.run([sys.executable, "-m", "components.train", "--train", str(chat["train"]), "--base-model",
                    "tiny-random-llama", "--model-out", str(sft / "model"), "--checkpoints", str(sft / "ckpt"),
                    "--mlflow-run-id-out", str(sft / "run_id.json"), "--per-device-batch", "4", "--max-steps", "2",
                    "--save-steps", "0"], env=train_env, cwd=ROOT, check=True, capture_output=True, timeout=600)
    start = ["--sft-model", str(sft / "model")]
    one, fsdp = tmp_path / "sft-one", tmp_path / "sft-fsdp"
    _run(train_env, data, one, "--per-device-batch", "4", *start)
    _run(train_env, data, fsdp, "--per-device-batch", "2", "--distribution", "fsdp", *start, ranks=2)
    assert _summary(fsdp)["preference"]["output"] == "stacked" and _summary(fsdp)["method"] == "lora"
    assert not (fsdp / "model" / "model.safetensors").exists()
    stacked = load_file(fsdp / "model" / "adapter_model.safetensors")
    _same_weights(load_file(one / "model" / "adapter_model.safetensors"), stacked)
    sft_adapter = load_file(sft / "model" / "adapter_model.safetensors")
    assert {k for k in stacked if ".lora_A." in k} == {k for k in sft_adapter if ".lora_A." in k}
    assert all(stacked[k].shape[0] == sft_adapter[k].shape[0] + 16 for k in sft_adapter if ".lora_A." in k)
    _same_held_out(one, fsdp)

    # An SFT model that cannot be stacked (here a full model): the gathered adapter is merged into it on rank 0.
    from tuneline.llm.ml.models import merge_lora, resolve_model

    full_sft = tmp_path / "sft-full"
    monkeypatch.setenv("TUNELINE_HOME", train_env["TUNELINE_HOME"])  # the tiny model train_env built
    merge_lora(resolve_model("tiny-random-llama"), sft / "model", dtype=torch.float32).save_pretrained(full_sft)
    for path in (sft / "model").iterdir():  # the tokenizer and training_summary.json
        if not path.name.startswith("adapter_"):
            (full_sft / path.name).write_bytes(path.read_bytes())
    start = ["--sft-model", str(full_sft)]
    one, fsdp = tmp_path / "merged-one", tmp_path / "merged-fsdp"
    _run(train_env, data, one, "--per-device-batch", "4", *start)
    _run(train_env, data, fsdp, "--per-device-batch", "2", "--distribution", "fsdp", *start, ranks=2)
    assert _summary(fsdp)["preference"]["output"] == "merged" and _summary(fsdp)["method"] == "full"
    _same_weights(load_file(one / "model" / "model.safetensors"), load_file(fsdp / "model" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.heavy
def test_fsdp_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, train_env, data):
    # The adapter and its AdamW moments come back from each rank's shards, the data position, schedule and
    # per-rank RNG from train's checkpoint (the preference loop is train's, only the step differs).
    options = ["--per-device-batch", "2", "--distribution", "fsdp", "--max-steps", "6", "--save-steps", "2",
               "--keep-checkpoints", "1", "--lora-dropout", "0.1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(train_env, data, whole, *options, ranks=2)
    preempt_after_first_checkpoint(_launch(train_env, data, killed, *options, ranks=2), killed / "ckpt")
    stopped_at = _state(killed)["global_step"]
    assert 2 <= stopped_at < 6
    output = _run(train_env, data, killed, *options, ranks=2)
    assert f"resumed from checkpoint-{stopped_at:08d}: step {stopped_at}" in output
    resumed = _state(killed)
    assert resumed["resumes"] == 1 and resumed["losses"] == pytest.approx(_state(whole)["losses"], abs=1e-5)
    _same_weights(load_file(whole / "model" / "adapter_model.safetensors"),
                  load_file(killed / "model" / "adapter_model.safetensors"))
    _same_held_out(whole, killed)

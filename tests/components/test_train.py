"""The train component in-process on a tiny random Llama: outputs, tracking, packing, early stopping, methods."""

import json
import sys

import pytest

from components.train.__main__ import main
from tests.support.tickets import write_splits


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELINE_HOME", str(root / "home"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield {"root": root, **write_splits(root / "data")}


def _train(env, name, *extra):
    out = env["root"] / name
    argv = ["--train", str(env["train"]), "--validation", str(env["validation"]), "--base-model", "tiny-random-llama",
            "--model-out", str(out / "model"), "--checkpoints", str(out / "ckpt"),
            "--mlflow-run-id-out", str(out / "run_id.json"), "--per-device-batch", "4", "--max-steps", "3",
            "--save-steps", "0", *extra]
    assert main(argv) == 0
    return out


def _losses(out):
    from tuneline.llm.ml.checkpoint import latest

    return json.loads((latest(out / "ckpt") / "state.json").read_text())["losses"]


def test_lora_run_writes_adapter_summary_and_mlflow_run(env):
    from mlflow.tracking import MlflowClient

    out = _train(env, "lora")
    model = out / "model"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "training_summary.json"} <= {
        p.name for p in model.iterdir()}
    summary = json.loads((model / "training_summary.json").read_text())
    assert summary["base_model"] == "tiny-random-llama" and summary["method"] == "lora"
    assert summary["steps"] == 3 and summary["hyperparameters"]["per_device_batch"] == 4
    assert summary["hyperparameters"]["learning_rate"] == 2e-3  # picked for a LoRA of a sub-1B model
    assert len(summary["data"]["train_sha256"]) == 64 and summary["final_val_loss"] > 0
    assert summary["tokens_per_s"] > 0 and summary["peak_memory_mb"] > 0
    run_id = (out / "run_id.json").read_text()  # a STRING output: bare text
    assert run_id == summary["mlflow_run_id"]
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "lora" and run.data.params["train_sha256"] == summary["data"]["train_sha256"]
    # The precision choice for this device, as printed at start-up.
    assert {k: run.data.params[k] for k in ("mixed_precision", "grad_scaler", "attn_implementation", "device")} == {
        "mixed_precision": "no", "grad_scaler": "False", "attn_implementation": "sdpa", "device": "cpu"}
    assert summary["precision"]["mixed_precision"] == "no"
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx(_losses(out))
    assert {"learning_rate", "grad_norm", "tokens_per_s", "val_loss", "peak_memory_mb"} <= set(run.data.metrics)
    assert json.loads((model / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-random-llama"


def test_a_hub_base_model_is_recorded_and_reloaded_at_the_commit_it_was_trained_on(env, tmp_path, monkeypatch):
    """A Hub id resolves `main` from a local Hub cache, offline (tests/support/fakehub.py); the summary and the run
    record that commit, and after `main` moves, load_tuned and register still read the base at it."""
    import torch
    from huggingface_hub import constants
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from components.register.inputs import read_trained_model
    from components.register.logmodel import base_reference
    from tests.support.fakehub import add_commit
    from tuneline.llm.ml.models import _build_tiny_llama, load_tuned, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import, as is the cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    trained_on = add_commit(tmp_path / "hub", "fake-org/tiny", resolve_model("tiny-random-llama"), message="v1")
    out = _train(env, "hub", "--base-model", "fake-org/tiny")
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    assert summary["base_model"] == "fake-org/tiny" and summary["base_model_revision"] == trained_on
    run = MlflowClient().get_run(summary["mlflow_run_id"])
    assert run.data.tags["tuneline.base_model_revision"] == trained_on

    (tmp_path / "v2").mkdir()
    _build_tiny_llama(tmp_path / "v2", seed=1)
    moved_to = add_commit(tmp_path / "hub", "fake-org/tiny", tmp_path / "v2", message="v2")
    assert resolve_model("fake-org/tiny").name == moved_to
    model, _, _ = load_tuned(out / "model")
    trained_embeddings = load_file(resolve_model("tiny-random-llama") / "model.safetensors")[
        "model.embed_tokens.weight"]
    assert torch.equal(model.get_input_embeddings().weight, trained_embeddings)  # LoRA leaves embeddings alone
    bundled, _ = base_reference(read_trained_model(out / "model"), "bundle")
    assert bundled.name == trained_on


def test_padding_free_packing_gives_the_same_losses_as_padding(env):
    padded = _losses(_train(env, "padded", "--max-steps", "2", "--lora-dropout", "0"))
    packed_out = _train(env, "packed", "--max-steps", "2", "--lora-dropout", "0", "--packing", "true")
    assert _losses(packed_out) == pytest.approx(padded, abs=1e-5)
    summary = json.loads((packed_out / "model" / "training_summary.json").read_text())
    assert summary["real_token_share"] == 1.0


def test_early_stopping_on_validation_loss(env):
    # With a zero learning rate the validation loss cannot improve after the first evaluation.
    out = _train(env, "early", "--learning-rate", "0", "--max-steps", "10", "--eval-steps", "1",
                 "--early-stopping-patience", "2")
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    assert summary["stopped_early"] is True and summary["steps"] == 3


def test_full_fine_tuning_saves_a_loadable_model(env):
    from tuneline.llm.ml.models import load_tuned

    out = _train(env, "full", "--method", "full", "--max-steps", "2", "--learning-rate", "1e-3")
    assert (out / "model" / "model.safetensors").is_file()
    model, tokenizer, summary = load_tuned(out / "model")
    assert summary["method"] == "full" and tokenizer.padding_side == "left"
    assert sum(p.numel() for p in model.parameters()) > 0


def test_qlora_without_cuda_fails_fast_before_loading(env, capsys):
    # The base model name does not exist: reaching model loading would raise a different error.
    argv = ["--train", str(env["train"]), "--base-model", "no-such-model", "--method", "qlora",
            "--model-out", str(env["root"] / "q"), "--checkpoints", str(env["root"] / "qc"),
            "--mlflow-run-id-out", str(env["root"] / "q.json")]
    assert main(argv) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


_OUTPUTS = ["--model-out", "y", "--checkpoints", "z", "--mlflow-run-id-out", "r"]


def test_invalid_hyperparameters_are_named(env, capsys):
    with pytest.raises(SystemExit):
        main(["--train", "x", *_OUTPUTS, "--per-device-batch", "0"])
    assert "--per-device-batch: input 'per_device_batch': 0 is below the minimum 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--train", "x", *_OUTPUTS, "--warmup-ratio", "2"])
    assert "input 'warmup_ratio': 2.0 is above the maximum 1" in capsys.readouterr().err


def test_boolean_flags_take_true_false_text(env, capsys):
    with pytest.raises(SystemExit):
        main(["--train", "x", *_OUTPUTS, "--packing", "maybe"])
    assert "input 'packing': 'maybe' is not a boolean (true/false)" in capsys.readouterr().err


def test_without_mlflow_a_named_tracking_store_is_an_error_before_training(env, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError, as when not installed
    argv = ["--train", str(env["train"]), "--base-model", "tiny-random-llama", "--model-out", str(env["root"] / "n"),
            "--checkpoints", str(env["root"] / "nc"), "--mlflow-run-id-out", str(env["root"] / "n.json")]
    assert main(argv) == 2
    assert "MLFLOW_TRACKING_URI is set but MLflow is not installed" in capsys.readouterr().err
    assert not (env["root"] / "nc").exists()


def test_a_sigterm_during_the_step_reduction_is_kept_for_the_next_step():
    import os
    import signal

    from components.train.loop import StopFlag

    flag = StopFlag()
    previous = flag.install()
    try:
        reduced = float(flag.received)  # this step's reduction, taken before the signal
        os.kill(os.getpid(), signal.SIGTERM)  # the node drain lands while the reduction is in flight
        flag.agree(reduced)
        assert not flag.agreed  # no rank saw it in this step's sum, so no rank stops yet
        flag.agree(float(flag.received))  # the next step's sum carries it
        assert flag.agreed
    finally:
        signal.signal(signal.SIGTERM, previous)

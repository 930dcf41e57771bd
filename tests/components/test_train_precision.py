"""fp16 and quantised-model training details that a GPU run would hit: the GradScaler under FSDP, skipped
overflow steps, non-reentrant checkpointing for QLoRA, fp32 adapters.

No GPU here: FSDP2 runs on CPU over gloo with torch's CPU GradScaler (tests/components/fsdp_cpu_probe.py);
bitsandbytes 4-bit weights need CUDA, so the QLoRA preparation is checked on a 16-bit model carrying the flag
PEFT reads from a quantised one.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _probe(tmp_path, *args) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROBE_DIR": str(tmp_path), "MASTER_PORT": str(port),
           "TUNELINE_HOME": str(tmp_path / "home")}
    for key in [k for k in env if k.startswith(("ACCELERATE_", "FSDP_"))]:
        del env[key]
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "components" / "fsdp_cpu_probe.py"),
                           *map(str, args)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fp16_step_under_fsdp_unscales_once_and_updates_the_adapter(tmp_path):
    result = _probe(tmp_path, "step", 1024.0)
    assert result["error"] is None  # was: "unscale_() has already been called on this optimizer"
    assert not result["skipped"] and result["changed"]
    assert result["scheduler_steps"] == 1 and result["global_step"] == 1 and result["skipped_steps"] == 0


def test_an_fp16_step_skipped_on_overflow_leaves_the_schedule_where_it_was(tmp_path):
    # A scale of 1e38 turns every scaled gradient into inf: the GradScaler skips the update.
    result = _probe(tmp_path, "step", 1e38)
    assert result["error"] is None and result["skipped"] and not result["changed"]
    assert result["scheduler_steps"] == 0  # warm-up and decay wait for a real update
    assert result["global_step"] == 1 and result["skipped_steps"] == 1  # the data position moved on


def _config(*extra):
    from components.train.config import parse_args

    return parse_args(["--train", "x", "--base-model", "tiny-random-llama", "--model-out", "m", "--checkpoints", "c",
                       "--mlflow-run-id-out", "r", *extra])


def _tiny_bf16(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from tuneline.llm.ml.models import resolve_model

    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path))
    return AutoModelForCausalLM.from_pretrained(resolve_model("tiny-random-llama"), dtype=torch.bfloat16)


def test_qlora_activation_checkpointing_is_non_reentrant(tmp_path, monkeypatch):
    from components.train.modelsetup import prepare_kbit

    model = _tiny_bf16(tmp_path, monkeypatch)
    model.is_loaded_in_4bit = True  # what PEFT reads from a bitsandbytes-quantised model
    model = prepare_kbit(model, gradient_checkpointing=True)
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert layers
    for layer in layers:
        assert layer._gradient_checkpointing_func.keywords.get("use_reentrant") is False


def test_lora_adapters_are_fp32_on_a_16bit_base(tmp_path, monkeypatch):
    from components.train.modelsetup import add_lora

    model = add_lora(_tiny_bf16(tmp_path, monkeypatch), _config("--method", "qlora"))
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and set(trainable.values()) == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_state_written_before_skipped_steps_were_counted_still_loads(tmp_path):
    from components.train.state import TrainState

    (tmp_path / "state.json").write_text(json.dumps({"global_step": 3, "epoch": 0, "step_in_epoch": 3}))
    assert TrainState.load(tmp_path).skipped_steps == 0


def test_an_adapter_trained_with_fsdp_activation_checkpointing_keeps_peft_names(tmp_path):
    # accelerate's checkpoint wrapper adds "_checkpoint_wrapped_module." to every name inside a decoder layer;
    # PEFT, loading the adapter, would match none of them and silently serve the base model.
    result = _probe(tmp_path, "names")
    assert result["wrapped"]  # the wrapper was applied
    assert result["gathered"] == result["trainable"] and len(result["trainable"]) == 28

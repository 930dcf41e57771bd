"""One FSDP2 process on CPU running part of the train component; prints its findings as JSON.

Mode ``step INIT_SCALE``: with a GradScaler, one optimizer step of the train loop.
Mode ``names``: with activation checkpointing, the names of the gathered adapter.

accelerate makes a GradScaler only for fp16 on an accelerator device (accelerator.py ``Accelerator.__init__``),
so on CPU the test gives the accelerator torch's CPU GradScaler before ``prepare``, as accelerate gives it a
CUDA one on a V100 or T4. Everything else (the FSDP2 wrapping, accelerate's clip_grad_norm_ and optimizer step)
is accelerate's own code.

Run as: python tests/components/fsdp_cpu_probe.py step INIT_SCALE | names
        (each in a fresh process: it starts a process group)
"""

import json
import os
import sys

import torch


def main(mode: str, init_scale: float) -> None:
    if mode == "names":
        os.environ["FSDP_ACTIVATION_CHECKPOINTING"] = "true"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29561"), RANK="0",
                      LOCAL_RANK="0", WORLD_SIZE="1", ACCELERATE_USE_FSDP="true", FSDP_VERSION="2",
                      FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP")
    from accelerate import Accelerator
    from transformers import get_scheduler

    from components.train import modelsetup, parallel
    from components.train.config import parse_args
    from components.train.loop import Loop, StopFlag
    from components.train.state import TrainState
    from tests.support.tickets import write_splits
    from tuneline.llm.ml.chat import encode_all
    from tuneline.llm.ml.data import read_split

    folder = os.environ["PROBE_DIR"]
    splits = write_splits(os.path.join(folder, "data"), n_train=8)
    config = parse_args(["--train", str(splits["train"]), "--base-model", "tiny-random-llama", "--model-out", "m",
                         "--checkpoints", os.path.join(folder, "ckpt"), "--mlflow-run-id-out", "r",
                         "--per-device-batch", "2", "--max-steps", "2"])
    acc = Accelerator(mixed_precision="fp16", cpu=True)
    assert parallel.enable_fsdp_on_cpu(acc)
    acc.native_amp = True  # as on a GPU: autocast to fp16 in forward, unscale_gradients active
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    model, tokenizer = modelsetup.build(config, "no", acc.device, sharded=True, shards_params=True)
    train, _ = encode_all(tokenizer, read_split(config.train).records, config.max_seq_len)
    optimizer = torch.optim.AdamW(modelsetup.param_groups(model, 0.0), lr=1e-3)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=2)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    model, optimizer = acc.prepare(model, optimizer)
    if mode == "names":
        print(json.dumps({"trainable": trainable, "gathered": sorted(parallel.gathered_trainable(acc, model)),
                          "wrapped": any("_checkpoint_wrapped_module" in n for n, _ in model.named_parameters())}))
        return
    loop = Loop(config, acc, model, tokenizer, optimizer, scheduler, train, [], None, StopFlag(), TrainState())
    before = {n: p.detach().full_tensor().clone() for n, p in model.named_parameters() if p.requires_grad}
    error = None
    try:
        loop._step([[0, 1]])
    except RuntimeError as err:
        error = str(err)
    after = {n: p.detach().full_tensor() for n, p in model.named_parameters() if p.requires_grad}
    print(json.dumps({
        "error": error,
        "skipped": bool(optimizer.step_was_skipped),
        "changed": any(not torch.equal(before[n], after[n]) for n in before),
        "scheduler_steps": scheduler.last_epoch,
        "global_step": loop.state.global_step,
        "skipped_steps": loop.state.skipped_steps if hasattr(loop.state, "skipped_steps") else None,
    }))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)

"""Typed training configuration and its command line (one flag per field, each with help and a default)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tuneline.ml.models import DEFAULT_BASE_MODEL

METHODS = ("lora", "full", "qlora")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "no", "bf16", "fp16")


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class TrainConfig:
    train: Path
    model_out: Path
    checkpoints: Path
    validation: Path | None = None
    mlflow_run_id_out: Path | None = None
    base_model: str = DEFAULT_BASE_MODEL
    method: str = "lora"
    learning_rate: float = 2e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    epochs: int = 1
    max_steps: int = 24
    per_device_batch: int = 8
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    max_seq_len: int = 256
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    gradient_checkpointing: bool = False
    packing: bool = False
    eval_steps: int = 0
    max_eval_examples: int = 64
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    save_steps: int = 10
    keep_checkpoints: int = 2
    seed: int = 42
    log_steps: int = 1
    precision: str = "auto"
    experiment: str = "tuneline"

    def hyperparameters(self) -> dict:
        skip = {"train", "validation", "model_out", "checkpoints", "mlflow_run_id_out", "experiment"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def validate(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.lr_scheduler not in SCHEDULES:
            problems.append(f"--lr-scheduler must be one of {SCHEDULES}, got {self.lr_scheduler!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        positive = ("per_device_batch", "grad_accum", "max_seq_len", "lora_r", "lora_alpha", "epochs")
        problems += [f"--{n.replace('_', '-')} must be > 0" for n in positive if getattr(self, n) <= 0]
        non_negative = ("learning_rate", "weight_decay", "max_steps", "max_grad_norm", "eval_steps",
                        "early_stopping_patience", "save_steps", "keep_checkpoints", "max_eval_examples")
        problems += [f"--{n.replace('_', '-')} must be >= 0" for n in non_negative if getattr(self, n) < 0]
        if not 0 <= self.warmup_ratio < 1:
            problems.append("--warmup-ratio must be in [0, 1)")
        if not 0 <= self.lora_dropout < 1:
            problems.append("--lora-dropout must be in [0, 1)")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))


HELP = {
    "train": "folder holding the training split's data.jsonl (chat records)",
    "validation": "folder holding the validation split (loss for early stopping); optional",
    "model_out": "output folder: LoRA adapter or full model, tokenizer, training_summary.json",
    "checkpoints": "checkpoint folder; training resumes from its newest complete checkpoint",
    "mlflow_run_id_out": "file to write the MLflow run id to, as JSON text",
    "base_model": "catalog name (smollm2-135m-instruct, tiny-random-llama), local HF folder or Hub id",
    "method": "lora, full or qlora (4-bit base; needs CUDA)",
    "learning_rate": "peak learning rate",
    "lr_scheduler": "cosine, linear or constant decay after warmup",
    "warmup_ratio": "fraction of the optimizer steps spent warming up linearly",
    "weight_decay": "AdamW weight decay (not applied to biases and norms)",
    "epochs": "passes over the training split (ignored when --max-steps > 0)",
    "max_steps": "optimizer steps to run; 0 means run --epochs epochs",
    "per_device_batch": "examples per micro-batch on each process",
    "grad_accum": "micro-batches accumulated per optimizer step",
    "max_grad_norm": "gradient clipping norm; 0 disables clipping",
    "max_seq_len": "tokens per example; longer examples are truncated",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha (scale = alpha / r)",
    "lora_dropout": "dropout on the LoRA input",
    "lora_targets": "comma-separated module names, or all-linear",
    "gradient_checkpointing": "recompute activations in the backward pass to save memory (true/false)",
    "packing": "padding-free packing: a micro-batch is one row of concatenated examples (true/false)",
    "eval_steps": "validation loss every N steps; 0 means once per epoch and at the end",
    "max_eval_examples": "validation examples used for the loss; 0 means all",
    "early_stopping_patience": "stop after N evaluations without improvement; 0 disables",
    "early_stopping_min_delta": "smallest validation-loss decrease that counts as improvement",
    "save_steps": "checkpoint every N optimizer steps (and always on SIGTERM and at the end); 0: only those",
    "keep_checkpoints": "complete checkpoints kept; 0 keeps all",
    "seed": "seed for data order, adapter initialisation and dropout",
    "log_steps": "log metrics to MLflow every N steps",
    "precision": "auto (bf16/fp16 on GPU, fp32 on CPU), no, bf16 or fp16",
    "experiment": "MLflow experiment name",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m components.train", description="Supervised fine-tuning.")
    required = {"train", "model_out", "checkpoints"}
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = eval_type(f.type)
        if f.name in required:
            parser.add_argument(flag, dest=f.name, type=Path, required=True, help=HELP[f.name])
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default,
                                help=f"{HELP[f.name]} (default: {f.default})")
    return parser


def eval_type(annotation: str):
    # annotations are strings under `from __future__ import annotations`; Path-typed fields fall through
    return {"int": int, "float": float, "bool": parse_bool, "str": str}.get(annotation, Path)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    config = TrainConfig(**vars(args))
    try:
        config.validate()
    except ValueError as err:
        build_parser().error(str(err))
    return config

"""What a training run processes: dataset records, tokens per example, steps, and the model's parameters.

The values come from the pipeline: the `role: train` step's inputs (bound literals and parameters, else its
component.yaml defaults) and the `role: prepare` step's split ratios.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...spec import Pipeline
from ...spec.models import Role
from .prices import CostError

# Inputs of the training step the estimate reads (the train role declares them, so each has a value).
TRAIN_INPUTS = ("epochs", "max_steps", "per_device_batch", "grad_accum", "max_seq_len", "base_model", "method")
# Parameter counts of catalog models, for when their weights are not on disk yet.
KNOWN_PARAMS = {"smollm2-135m-instruct": 134_515_008, "tiny-random-llama": 164_352}
SAMPLE_RECORDS = 2000


@dataclass
class Workload:
    dataset: str
    records: int
    train_examples: int
    mean_tokens: float  # per example, after the max_seq_len cap
    token_counter: str  # "tokenizer <path>" or "regex estimate"
    epochs: int
    max_steps: int
    examples_per_step: int  # per GPU: per_device_batch * grad_accum
    base_model: str
    method: str
    params: int
    params_source: str

    def tokens(self, world: int) -> float:
        """Tokens the training loop processes with `world` data-parallel processes."""
        if self.max_steps > 0:
            return self.max_steps * self.examples_per_step * max(world, 1) * self.mean_tokens
        return self.epochs * self.train_examples * self.mean_tokens

    @property
    def flops_per_token(self) -> float:
        return (6 if self.method == "full" else 4) * self.params


def train_step(pipeline: Pipeline) -> str:
    step = pipeline.step_with_role(Role.train)
    if step is None:
        raise CostError(f"{pipeline.path}: no step's component declares `role: train`; nothing to estimate")
    return step


def _dataset_path(pipeline: Pipeline) -> Path:
    from ..triggers.newdata import dataset_param, resolve

    try:
        name = dataset_param(pipeline)
    except ValueError as exc:
        raise CostError(str(exc)) from None
    path = resolve(pipeline, str(pipeline.params[name]))
    if not path.exists():
        raise CostError(f"parameter '{name}': dataset not found: {path}")
    return path


def read_records(path: Path) -> list[list[dict[str, Any]]]:
    """The messages of each record, read the way the prepare step reads the dataset (every format it takes);
    records it would quarantine are skipped, not counted."""
    from ...llm.data.reasons import RecordError
    from ...llm.data.records import Budget, parse_line, parse_object
    from ...llm.data.sources import Dataset, SourceError

    try:
        dataset = Dataset(path)
        records = []
        for source in dataset.files:
            for item in dataset.records(source):
                try:
                    record = parse_line(item.data, Budget()) if item.data is not None else (
                        parse_object(item.obj, Budget(), source=item.raw))
                except RecordError:
                    continue
                records.append(record.messages)
    except SourceError as exc:
        raise CostError(str(exc)) from None
    if not records:
        raise CostError(f"{path}: no usable chat or prompt/completion records")
    return records


def local_model_dir(base_model: str, home: Path) -> Path | None:
    """The base model's folder when already on disk (a catalog build or a local path); never builds one."""
    for candidate in (home / "models" / base_model, Path(base_model).expanduser()):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def count_params(model_dir: Path) -> int | None:
    """Parameters in a folder's *.safetensors, from the headers alone (no weights are read)."""
    total = 0
    files = sorted(model_dir.glob("*.safetensors"))
    for file in files:
        with file.open("rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                total += math.prod(info["shape"])
    return total or None


def _token_lengths(records: list[list[dict[str, Any]]], model_dir: Path | None,
                   max_seq_len: int) -> tuple[list[int], str]:
    if model_dir is not None and any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        from ...llm.ml.chat import render

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if tokenizer.chat_template:
            # The same rendering training uses; counting apply_chat_template(tokenize=True) would count the
            # keys of the BatchEncoding it returns in transformers 5, not tokens.
            texts = [render(tokenizer, messages, generation_prompt=False) for messages in records]
            lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            return [min(n, max_seq_len) for n in lengths], f"tokenizer of {model_dir.name}"
    from ...llm.data.records import estimate_tokens

    # Chat templates add a few marker tokens around every message.
    lengths = [sum(estimate_tokens(str(m.get("content", ""))) + 4 for m in messages) for messages in records]
    return [min(n, max_seq_len) for n in lengths], "regex estimate (tuneline.llm.data.records.estimate_tokens)"


def workload(pipeline: Pipeline, home: Path, tokenizer: str = "auto") -> Workload:
    step = train_step(pipeline)
    values = {k: pipeline.input_value(step, k) for k in TRAIN_INPUTS}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise CostError(f"{pipeline.components[step].folder / 'component.yaml'}: the training step '{step}' "
                        f"gives no value or default for {', '.join(missing)}; the estimate needs them")
    dataset = _dataset_path(pipeline)
    records = read_records(dataset)
    train_share = 0.8
    prepare = pipeline.step_with_role(Role.prepare)
    if prepare is not None:
        train_share = (
            1
            - float(pipeline.input_value(prepare, "validation_ratio") or 0.0)
            - float(pipeline.input_value(prepare, "test_ratio") or 0.0)
        )
    model_dir = local_model_dir(str(values["base_model"]), home)
    if tokenizer == "real" and model_dir is None:
        raise CostError(
            f"--tokenizer real: base model {values['base_model']!r} is not on disk yet "
            f"(run the pipeline once, or use --tokenizer estimate)"
        )
    sample = records[:: max(1, len(records) // SAMPLE_RECORDS)]
    lengths, counter = _token_lengths(
        sample, model_dir if tokenizer != "estimate" else None, int(values["max_seq_len"])
    )
    params = count_params(model_dir) if model_dir is not None else None
    source = f"safetensors headers in {model_dir}" if params else "catalog table"
    if params is None and str(values["base_model"]) not in KNOWN_PARAMS:
        from .memory import ModelShape, find_config

        config = find_config(str(values["base_model"]), pipeline.root, home)
        if config is not None:
            params = ModelShape.from_config(json.loads(config.read_text()), str(config)).params
            source = f"computed from {config}"
    if params is None:
        params = KNOWN_PARAMS.get(str(values["base_model"]))
        if params is None:
            raise CostError(
                f"unknown parameter count of base model {values['base_model']!r}: put it on disk "
                f"(run the pipeline once) or use a catalog model"
            )
    return Workload(
        dataset=str(dataset),
        records=len(records),
        train_examples=max(1, round(len(records) * train_share)),
        mean_tokens=sum(lengths) / len(lengths),
        token_counter=counter,
        epochs=int(values["epochs"]),
        max_steps=int(values["max_steps"]),
        examples_per_step=int(values["per_device_batch"]) * int(values["grad_accum"]),
        base_model=str(values["base_model"]),
        method=str(values["method"]),
        params=params,
        params_source=source,
    )



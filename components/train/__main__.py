"""Supervised fine-tuning of a chat model: LoRA (default), full, or QLoRA, resumable after preemption.

Run as: python -m components.train --train DIR [--validation DIR] --base-model smollm2-135m-instruct
        --method lora --model-out DIR --checkpoints DIR --mlflow-run-id-out FILE
Distributed: torchrun --nproc-per-node 2 -m components.train ... [--distribution fsdp|zero2|zero3]   or
             accelerate launch --config_file components/train/accelerate/fsdp.yaml -m components.train ...

On start it resumes from the newest complete checkpoint in --checkpoints. On SIGTERM it checkpoints at the
end of the current optimizer step and exits with status 143, so a retried step continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections import Counter

from components.train.config import TrainConfig, hyperparameters, learning_rate, learning_rate_warning, parse_args
from components.train.modelsetup import MethodUnavailable, check_method
from tuneline.llm.ml.models import BASE_REVISION_KEY, SUMMARY_FILE
from tuneline.settings import disable_mlflow_telemetry
from tuneline.step.outputs import write_value


def _encode_split(records, tokenizer, max_seq_len: int, label: str, log, over_long: dict):
    """Encode a split. An example longer than max_seq_len keeps its first max_seq_len tokens (truncated on the
    right, so the end of the answer is what is lost); one with no answer token left is dropped. Both are
    counted in ``over_long[label]`` for training_summary.json and the run's summary."""
    from tuneline.llm.ml.chat import encode_all

    # A record the base model's chat template cannot express (roles out of order, a message the template
    # leaves out) is quarantined with the template's reason instead of failing the step.
    encoded, rejected = encode_all(tokenizer, records, max_seq_len)
    if rejected:
        log(f"{label}: {len(rejected)} of {len(records)} records quarantined, the chat template cannot express "
            f"them; first: {rejected[0].id}: {rejected[0].reason}")
    if not encoded:
        raise ValueError(f"{label}: the chat template of the base model expresses none of the records "
                         f"(first: {rejected[0].id}: {rejected[0].reason})")
    kept = [e for e in encoded if e.n_targets > 0]
    truncated = sum(e.truncated for e in encoded)
    over_long[label] = {"examples": len(encoded), "truncated": truncated, "dropped": len(encoded) - len(kept)}
    if rejected:
        over_long[label]["template_quarantined"] = [{"id": r.id, "reason": r.reason} for r in rejected[:50]]
    if truncated or len(kept) < len(encoded):
        log(f"{label}: {truncated} of {len(encoded)} examples truncated to {max_seq_len} tokens; "
            f"{len(encoded) - len(kept)} dropped (no answer tokens left)")
    if not kept:
        raise ValueError(f"{label}: no example keeps any answer token within --max-seq-len {max_seq_len}")
    return kept


def save_outputs(config: TrainConfig, acc, model, tokenizer, summary: dict) -> None:
    """Write the model on the main process. Under FSDP and ZeRO-3 no rank holds the whole model (or adapter):
    the weights are gathered first, and every rank must join that gather, so it happens before the
    main-process check. PEFT writes a sharded model's adapter wrongly from its own parameters (local shards,
    or zero-size tensors under ZeRO-3, as its save_pretrained warns); given the gathered state dict it keeps
    the adapter's entries from it (peft/utils/save_and_load.py ``get_peft_model_state_dict``)."""
    from components.train import parallel

    state_dict = None
    if config.method == "full":
        state_dict = acc.get_state_dict(model)  # gathers FSDP / ZeRO-3 shards; every rank must call it
    elif parallel.shards_parameters(acc):
        state_dict = parallel.gathered_trainable(acc, model)
    if acc.is_main_process:
        write_model(config, acc.unwrap_model(model), tokenizer, summary, state_dict)


def write_model(config: TrainConfig, unwrapped, tokenizer, summary: dict, state_dict: dict | None = None) -> None:
    """The model output: the full model or the adapter (its weights from `state_dict` when given: the gathered
    ones of a sharded run), the tokenizer and training_summary.json. Main process only."""
    from components.train.loop import dump_json

    out = config.model
    out.mkdir(parents=True, exist_ok=True)
    if config.method == "full":
        unwrapped.config.use_cache = True
        unwrapped.save_pretrained(out, state_dict=state_dict)
    else:
        for peft_config in unwrapped.peft_config.values():
            peft_config.base_model_name_or_path = config.base_model
        # PEFT's model card (README.md) names the base model by the folder it was loaded from (config
        # _name_or_path, and name_or_path in its tags): a path of this machine, which made the same adapter
        # differ between a pod and a laptop.
        base = unwrapped.get_base_model()
        base.config._name_or_path = base.name_or_path = config.base_model
        # "auto" would look the base model up on the Hub to decide about embedding layers; we never
        # train embeddings in LoRA mode, so no lookup is needed (and none is possible offline).
        unwrapped.save_pretrained(out, save_embedding_layers=False, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    dump_json(out / SUMMARY_FILE, summary)


def main(argv: list[str] | None = None) -> int:
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    try:
        return _main(parse_args(argv))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(config: TrainConfig) -> int:
    try:
        check_method(config.method)  # before any model is loaded
    except MethodUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.time()
    disable_mlflow_telemetry()

    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    from components.train import modelsetup, parallel
    from components.train.loop import Loop, StopFlag, plan
    from components.train.state import TrainState
    from tuneline.llm.ml import checkpoint as ckpt
    from tuneline.llm.ml.data import read_split
    from tuneline.llm.ml.device import detect

    untracked, code, base_revision = _preflight(config)
    if code is not None:
        return code
    stop = StopFlag()
    stop.install()
    chosen = detect(config.precision)
    precision = chosen.mixed_precision
    acc = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    parallel.enable_fsdp_on_cpu(acc)
    log = print if acc.is_main_process else (lambda *a, **k: None)

    if acc.distributed_type == DistributedType.DEEPSPEED:
        # DeepSpeed's engine accumulates by itself; the loop marks its boundaries (loop.py) and plans its steps
        # with the same count.
        try:
            config = dataclasses.replace(config, grad_accum=parallel.configure_deepspeed(
                acc, config.per_device_batch, config.grad_accum, config.max_grad_norm,
                full_model=config.method == "full"))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    train_split = read_split(config.train)
    val_split = read_split(config.validation) if config.validation else None
    model, tokenizer = _build_model(config, acc, chosen, base_revision)
    chosen = resolved_precision(chosen, model, acc, log)
    train, validation, over_long = _encode(config, tokenizer, train_split, val_split, log)

    steps = plan(config, len(train), acc.num_processes)
    n_parameters = modelsetup.parameter_count(model)
    config, optimizer, scheduler = _optimizer(config, model, n_parameters, steps.total_steps, log)
    parallel.name_fsdp_wrap_classes(acc, model)
    model, optimizer = acc.prepare(model, optimizer)

    loop = Loop(config, acc, model, tokenizer, optimizer, scheduler, train, validation, None, stop, TrainState())
    resume_from = ckpt.latest(config.checkpoints)
    if resume_from is not None:
        loop.load_checkpoint(resume_from)
    run = _start_run(config, acc, loop, untracked, chosen, steps.total_steps, log,
                     splits=(train_split, val_split), sizes=(len(train), len(validation)), base_revision=base_revision)
    loop.run = run
    log(f"training {config.method} on {config.base_model}: {len(train)} examples, {steps.total_steps} steps, "
        f"{acc.num_processes} process(es), precision {precision}")

    state = _fit(loop, run)

    summary = _summary(config, acc, chosen, loop, state, started, splits=(train_split, val_split),
                       sizes=(len(train), len(validation)), over_long=over_long, base_revision=base_revision)
    save_outputs(config, acc, model, tokenizer, summary)
    _finish(config, acc, run, state, summary, over_long, log)
    acc.end_training()
    return 0


def resolved_precision(chosen, model, acc, log):
    """The precision choice with the attention kernel transformers settled on for this model class, not the one
    asked for (tuneline/llm/ml/attention.py), printed once the model is built; preference reports the same."""
    from tuneline.llm.ml.attention import resolved

    chosen = chosen.with_attention(resolved(model))
    log(f"precision: {chosen.describe()}; distribution {acc.distributed_type.value}, "
        f"{acc.num_processes} process(es)", flush=True)
    return chosen


def _build_model(config: TrainConfig, acc, chosen, base_revision: str | None) -> tuple:
    """(model, tokenizer), identical on every rank; the dropout seeds differ per rank afterwards."""
    import torch
    from accelerate.utils import DistributedType

    from components.train import modelsetup, parallel

    torch.manual_seed(config.seed)
    fsdp = acc.distributed_type == DistributedType.FSDP
    model, tokenizer = modelsetup.build(
        config, chosen.mixed_precision, acc.device, attn_implementation=chosen.attention_request,
        sharded=parallel.is_sharded(acc), on_meta=fsdp and config.method != "qlora" and parallel.loads_on_meta(),
        shards_params=parallel.shards_parameters(acc), base_revision=base_revision)
    # After the shared initialisation each rank draws its own dropout masks.
    torch.manual_seed(config.seed + 1000 * acc.process_index)
    return model, tokenizer


def _encode(config: TrainConfig, tokenizer, train_split, val_split, log) -> tuple[list, list, dict]:
    """(train examples, validation examples, what was truncated or dropped per split)."""
    over_long: dict = {}
    train = _encode_split(train_split.records, tokenizer, config.max_seq_len, "train", log, over_long)
    validation = []
    if val_split is not None:
        validation = _encode_split(val_split.records, tokenizer, config.max_seq_len, "validation", log, over_long)
        if config.max_eval_examples:
            validation = validation[: config.max_eval_examples]
    return train, validation, over_long


def _fit(loop, run):
    """Train; the run ends KILLED on a stop signal, FAILED on any other error."""
    try:
        return loop.fit()
    except SystemExit:
        if run is not None:
            run.finish("KILLED")
        raise
    except BaseException:
        if run is not None:
            run.finish("FAILED")
        raise


def _summary(config: TrainConfig, acc, chosen, loop, state, started: float, *, splits: tuple,
             sizes: tuple[int, int], over_long: dict, base_revision: str | None) -> dict:
    """training_summary.json: what was trained, on what, how, and the loop's figures."""
    from tuneline.llm.ml.chat import RENDER_KWARGS

    train_split, val_split = splits
    return {
        "base_model": config.base_model,
        # The Hub commit the base model was read at (None for a catalog model or a folder): later steps load the
        # same weights, tokenizer and chat template from it (tuneline.llm.ml.models.resolve_summary_base).
        BASE_REVISION_KEY: base_revision,
        "method": config.method,
        "hyperparameters": hyperparameters(config),
        "data": {"train_sha256": train_split.sha256, "n_train": sizes[0],
                 "validation_sha256": val_split.sha256 if val_split else None, "n_validation": sizes[1],
                 "over_long": {"max_seq_len": config.max_seq_len, "truncation_side": "right", **over_long}},
        "world_size": acc.num_processes,
        "mixed_precision": chosen.mixed_precision,
        "precision": chosen.as_params(),
        "mlflow_run_id": state.mlflow_run_id,
        # Serving puts a bare request under the same instructions the model was tuned with.
        "system_prompt": _common_system_prompt(train_split.records),
        # The chat template's variables in every render of training and evaluation; serving uses the same.
        "chat_template_kwargs": dict(RENDER_KWARGS),
        **loop.summary(),
        "process_wall_time_s": time.time() - started,
    }


def _preflight(config: TrainConfig) -> tuple[str | None, int | None, str | None]:
    """(why the run cannot be tracked, or None; exit code 2 when the process cannot train as configured; the Hub
    commit of the base model, or None). Runs before the process group starts."""
    from tuneline.llm.ml.models import hub_revision, resolve_model
    from tuneline.llm.ml.tracking import mlflow_missing

    untracked = mlflow_missing()
    if untracked and os.environ.get("MLFLOW_TRACKING_URI"):
        # A tracking store was named: losing the run's record silently would be worse than failing.
        print(f"error: MLFLOW_TRACKING_URI is set but {untracked}", file=sys.stderr)
        return untracked, 2, None

    # Before the process group starts: a catalog model is built (and saved) by whichever rank gets there first,
    # and transformers saves nothing on ranks > 0 once torch.distributed is initialised.
    # A Hub id resolves its branch here, once: the model is then loaded at that commit, which the summary records.
    base_revision = hub_revision(resolve_model(config.base_model))
    from components.train import distribution

    try:
        distribution.apply(config.distribution)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return untracked, 2, base_revision
    return untracked, None, base_revision


def _optimizer(config: TrainConfig, model, n_parameters: int, total_steps: int, log) -> tuple:
    """(config with its learning rate settled, AdamW, the learning-rate schedule)."""
    import torch
    from transformers import get_scheduler

    from components.train import modelsetup

    rate_warning = learning_rate_warning(config, n_parameters)
    if rate_warning:
        log(f"warning: {rate_warning}")
    if config.learning_rate is None:
        config = dataclasses.replace(config, learning_rate=learning_rate(config, n_parameters))
        log(f"learning rate {config.learning_rate:g} for method {config.method} on "
            f"{n_parameters / 1e9:.2f}B parameters")
    optimizer = torch.optim.AdamW(modelsetup.param_groups(model, config.weight_decay), lr=config.learning_rate)
    scheduler = get_scheduler(config.lr_scheduler if config.lr_scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    return config, optimizer, scheduler


def _start_run(config: TrainConfig, acc, loop, untracked: str | None, chosen, total_steps: int, log, *,
               splits: tuple, sizes: tuple[int, int], base_revision: str | None):
    """The MLflow run on the main process (resumed when the checkpoint names one), or None."""
    train_split, val_split = splits
    run = None
    if untracked and acc.is_main_process:
        log(f"warning: this run is not tracked: {untracked}; its figures stay in {SUMMARY_FILE}")
        write_value(config.mlflow_run_id, "")
    if acc.is_main_process and not untracked:
        from tuneline.llm.ml.tracking import Run

        run = Run(run_id=loop.state.mlflow_run_id, experiment=config.experiment,
                  run_name=f"train-{config.method}-{config.base_model.replace('/', '-')}"[:100])
        loop.state.mlflow_run_id = run.run_id
        run.log_params({**hyperparameters(config), "train_sha256": train_split.sha256,
                        "validation_sha256": val_split.sha256 if val_split else "",
                        "n_train": sizes[0], "n_validation": sizes[1],
                        "world_size": acc.num_processes, "planned_steps": total_steps,
                        "distributed_type": acc.distributed_type.value,
                        **{k: v for k, v in chosen.as_params().items() if k != "reason"}})
        run.set_tags({"tuneline.dataset_sha256": train_split.sha256, "tuneline.base_model": config.base_model,
                      "tuneline.method": config.method,
                      **({f"tuneline.{BASE_REVISION_KEY}": base_revision} if base_revision else {})})
        write_value(config.mlflow_run_id, run.run_id)
    return run


def _finish(config: TrainConfig, acc, run, state, summary: dict, over_long: dict, log) -> None:
    """Final metrics to the run, and the closing line and step summary on the main process."""
    from components.train.loop import finite

    if run is not None:
        finals = {k: v for k, v in summary.items() if isinstance(v, float) and finite(v)}
        run.log_metrics(finals, step=state.global_step)
        run.log_artifact(config.model / SUMMARY_FILE)
        run.finish()
    if acc.is_main_process:
        log(f"done: {state.global_step} steps, final loss {summary['final_train_loss']:.4f}, "
            f"{summary['tokens_per_s'] or 0:.0f} tokens/s, model in {config.model}")
        from tuneline.step.summary import write_step_summary

        write_step_summary("over max_seq_len " + str(config.max_seq_len) + " (truncated on the right / dropped): "
                           + ", ".join(f"{k} {v['truncated']}/{v['dropped']} of {v['examples']}"
                                       for k, v in over_long.items()))


def _common_system_prompt(records: list) -> str | None:
    prompts = Counter(m["content"] for r in records for m in r.messages[:1] if m["role"] == "system")
    return prompts.most_common(1)[0][0] if prompts else None


if __name__ == "__main__":
    sys.exit(main())

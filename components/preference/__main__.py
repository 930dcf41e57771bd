"""Preference optimisation: DPO on chosen/rejected pairs or KTO on labelled records, LoRA or full, resumable.

Run as: python -m components.preference --train DIR [--validation DIR] [--test DIR] --base-model NAME
        [--sft-model DIR | --sft-model-uri models:/NAME@champion] --loss dpo --method lora --model-out DIR
        --checkpoints DIR --mlflow-run-id-out FILE
Distributed: torchrun --nproc-per-node 2 -m components.preference ... [--distribution ddp|fsdp|zero2|zero3]   or
             accelerate launch --config_file components/train/accelerate/fsdp.yaml -m components.preference ...
             (train's configs and modules: distribution.py, parallel.py; the held-out figures are reduced over
             every rank's records, and only rank 0 writes the model, progress and the MLflow run)

A component of its own rather than a method of ``train``: its inputs differ (a preference split instead of chat
records, beta, the loss, a reference model, the SFT model to start from), its outputs carry different figures
(reward accuracy and margin, not a token loss), and a pipeline runs it after ``train``, on ``train``'s output.
What the two share — the exact-resume loop, checkpoints, SIGTERM handling, progress reports, precision choice,
MLflow run and model saving — is imported from ``components.train`` unchanged; only the optimizer step and the
evaluation are replaced (``loop.PreferenceLoop``). TRL's DPOTrainer/KTOTrainer are not used: the HF Trainer does
not restore data order and RNG on resume, and this step must end equal to an uninterrupted run after a kill.

On start it resumes from the newest complete checkpoint in --checkpoints. On SIGTERM it checkpoints at the end
of the current optimizer step and exits with status 143. The summary (``training_summary.json`` and the MLflow
run) holds the held-out reward accuracy and margin against the reference, on --validation (``eval_*``) and, when
given, on --test (``test_*``), and how often the reference itself prefers the chosen side.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections import Counter

from components.train.__main__ import resolved_precision
from components.train.config import hyperparameters
from tuneline.llm.ml.models import BASE_REVISION_KEY, SUMMARY_FILE
from tuneline.settings import disable_mlflow_telemetry
from tuneline.step.args import component_program
from tuneline.step.outputs import write_value

PROGRAM = component_program(__file__)


def parse_args(argv: list[str] | None = None):
    return PROGRAM.parse(argv)


def main(argv: list[str] | None = None) -> int:
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    try:
        return _main(parse_args(argv))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read(config, log):
    from components.preference.data import read_preference_split

    train = read_preference_split(config.train)
    want = "pairs" if config.loss == "dpo" else "kto"
    if train.kind != want:
        raise ValueError(f"{train.path}: --loss {config.loss} needs {want} records, this split holds {train.kind} "
                         f"records; use --loss {'kto' if train.kind == 'kto' else 'dpo'}")
    if config.loss == "dpo" and not 0 <= config.label_smoothing < 0.5:
        raise ValueError(f"--label-smoothing {config.label_smoothing:g}: must be in [0, 0.5) (the assumed share of "
                         "flipped labels; at 0.5 the loss prefers neither side)")
    if config.loss == "kto" and config.per_device_batch < 2:
        raise ValueError("--loss kto needs --per-device-batch 2 or more: the KL estimate pairs each prompt with "
                         "another record's completion in the same batch")
    held_out = {}
    for name in ("validation", "test"):
        folder = getattr(config, name)
        if folder is not None:
            split = read_preference_split(folder)
            if split.kind != want:
                raise ValueError(f"{split.path}: holds {split.kind} records, the training split {want}")
            held_out[name] = split
    log(f"data: {len(train.records)} {want} records" + "".join(f", {n} {len(s.records)}" for n, s in held_out.items()))
    return train, held_out


def _fetch_start(uri: str):
    """The registered model to start from, downloaded (``registry.fetch_model``); its train-step folder."""
    import tempfile
    from pathlib import Path

    from tuneline.llm import registry

    return registry.fetch_model(uri, Path(tempfile.mkdtemp(prefix="tuneline-start-"))).model_dir


def _main(config) -> int:
    started = time.time()
    disable_mlflow_telemetry()
    from tuneline.llm.ml.data import DataError
    from tuneline.llm.ml.models import ModelNotAvailable
    from tuneline.llm.ml.tracking import mlflow_missing

    untracked = mlflow_missing()
    if untracked and os.environ.get("MLFLOW_TRACKING_URI"):
        print(f"error: MLFLOW_TRACKING_URI is set but {untracked}", file=sys.stderr)
        return 2
    try:
        # Before the process group exists; the launcher's RANK says which process speaks for the run.
        train_split, held_out = _read(config, print if os.environ.get("RANK", "0") == "0" else lambda *a: None)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config, start, base_model, base_revision, code = _starting_point(config)
    if code is not None:
        return code

    from components.preference import model as modelbuild
    from components.preference.loop import PreferenceLoop
    from components.train import parallel
    from components.train.loop import StopFlag, plan
    from components.train.state import TrainState
    from tuneline.llm.ml import checkpoint as ckpt
    from tuneline.llm.ml.device import detect

    stop = StopFlag()
    stop.install()
    chosen = detect(config.precision)
    precision = chosen.mixed_precision
    try:
        acc, log, config = _accelerator(config, chosen)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        model, reference, tokenizer = _build(config, acc, precision, base_revision)
    except ModelNotAvailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    chosen = resolved_precision(chosen, model, acc, log)
    train, encoded_held_out, validation, over_long = _encode(config, tokenizer, train_split, held_out)
    if not train:
        print(f"error: no training record fits --max-seq-len {config.max_seq_len} with an answer token left "
              f"({over_long['train']})", file=sys.stderr)
        return 2

    steps = plan(config, len(train), acc.num_processes)
    optimizer, scheduler = _optimizer(config, model, steps.total_steps)
    parallel.name_fsdp_wrap_classes(acc, model)  # the reference is sharded by the same classes
    model, optimizer = acc.prepare(model, optimizer)
    reference = modelbuild.place_reference(acc, reference)
    loop = PreferenceLoop(config, acc, model, tokenizer, optimizer, scheduler, train, validation, None, stop,
                          TrainState(), reference=reference, kind=train_split.kind)
    resume_from = ckpt.latest(config.checkpoints)
    if resume_from is not None:
        loop.load_checkpoint(resume_from)
    run = _start_run(config, acc, loop, untracked, chosen, steps.total_steps, log, train_split=train_split,
                     start=start, base_model=(base_model, base_revision), sizes=(len(train), len(validation)))
    loop.run = run
    log(f"preference {config.loss} ({config.method}) on {start}: {len(train)} records, {steps.total_steps} steps")

    state, held = _fit(loop, run, encoded_held_out)

    # Downstream steps load the output against base_model, where a LoRA trained on the merged SFT model does not
    # apply on its own: with the SFT adapter it is stacked into one adapter over the base (stack.py), which serving
    # loads beside the champion on one copy of the base; a start that cannot be stacked is merged instead.
    output = _output_form(config)
    summary = _summary(config, acc, loop, state, held, started, precision, output=output, start=start,
                       base_model=(base_model, base_revision), train_split=train_split, held_out=held_out,
                       n_train=len(train),
                       over_long=over_long)
    _save(config, acc, model, tokenizer, summary, precision, form=output[0], base_model=base_model)
    _finish(config, acc, run, state, summary, held, start, log)
    acc.end_training()
    return 0


def _starting_point(config) -> tuple:
    """(config with the SFT model fetched when named by URI, what the run starts from, its base model, the base
    model's Hub commit or None, exit code 2 when it cannot start, else None). Runs before the process group
    starts."""
    from components.preference import model as modelbuild
    from tuneline.llm.ml.models import ModelNotAvailable

    config, code = _resolve_start(config)
    if code is not None:
        return config, None, None, None, code
    try:
        start, base_model = modelbuild.start_point(config.base_model, config.sft_model)
        base_revision = _preflight(config, base_model)
    except (ModelNotAvailable, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return config, None, None, None, 2
    return config, start, base_model, base_revision, None


def _accelerator(config, chosen) -> tuple:
    """(Accelerator, a print for the main process, config as the distribution trains it); ValueError names what
    this distribution cannot train."""
    import torch
    from accelerate import Accelerator

    from components.train import parallel

    acc = Accelerator(mixed_precision=chosen.mixed_precision, cpu=not torch.cuda.is_available())
    parallel.enable_fsdp_on_cpu(acc)
    log = print if acc.is_main_process else (lambda *a, **k: None)
    return acc, log, _configure_distribution(config, acc)


def _build(config, acc, precision: str, base_revision: str | None) -> tuple:
    """(policy, reference, tokenizer), identical on every rank; the dropout seeds differ per rank afterwards."""
    import torch

    from components.preference import model as modelbuild
    from components.train import parallel

    torch.manual_seed(config.seed)
    built = modelbuild.build(config, precision, acc.device, sharded=parallel.is_sharded(acc),
                             on_meta=parallel.is_fsdp(acc) and parallel.loads_on_meta(), base_revision=base_revision)
    torch.manual_seed(config.seed + 1000 * acc.process_index)
    return built


def _preflight(config, base_model: str) -> str | None:
    """Before the process group starts: the base model is built or downloaded once (transformers saves nothing
    on ranks > 0 once torch.distributed is initialised, and a catalog model is built by whichever rank gets there
    first), and --distribution sets what ``accelerate launch`` would (train's ``distribution.apply``). Returns the
    base model's Hub commit (None for a catalog model or a folder): the one the SFT model recorded, else the one
    its branch resolves to now, which the run then loads and records as train does."""
    from pathlib import Path

    from components.train import distribution
    from tuneline.llm.ml.models import hub_revision, read_summary, resolve_model, resolve_summary_base

    sft = Path(config.sft_model) if config.sft_model is not None else None
    if sft is None:
        revision = hub_revision(resolve_model(base_model))
    else:
        summary = read_summary(sft)
        revision = summary.get(BASE_REVISION_KEY)
        if (sft / "adapter_config.json").is_file():
            resolve_summary_base(summary) if summary.get("base_model") else resolve_model(base_model)
    distribution.apply(config.distribution)
    return revision


def _configure_distribution(config, acc):
    """The config as this distribution trains it: DeepSpeed's accumulation and batch values (train's
    ``parallel.configure_deepspeed``), and a refusal of what it cannot hold (``model.check_reference``)."""
    from components.preference import model as modelbuild
    from components.train import parallel

    if parallel.is_deepspeed(acc):
        modelbuild.check_reference(config.method, acc.distributed_type, acc.state.deepspeed_plugin)
        config = dataclasses.replace(config, grad_accum=parallel.configure_deepspeed(
            acc, config.per_device_batch, config.grad_accum, config.max_grad_norm, full_model=config.method == "full"))
    return config


def _output_form(config) -> tuple[str, str | None]:
    """(how the model output is written, why): "adapter" (a LoRA on the base model), "full" (a full fine-tune),
    "stacked" (this LoRA and the SFT adapter as one adapter over the base) or "merged" (this LoRA merged into the
    SFT model, written as a full model, where stacking cannot express the policy). The same on every rank."""
    from components.preference.stack import unstackable

    if config.method == "full":
        return "full", None
    if config.sft_model is None:
        return "adapter", None
    problem = unstackable(config.sft_model)
    if problem is None:
        import json
        from pathlib import Path

        sft_rank = json.loads((Path(config.sft_model) / "adapter_config.json").read_text())["r"]
        return "stacked", (f"the SFT adapter (rank {sft_rank}) and this LoRA (rank {config.lora_r}) as one adapter "
                           f"of rank {sft_rank + config.lora_r} over the base model, served beside the base's other "
                           "adapters on one copy of it")
    return "merged", f"not stacked with the SFT model: {problem}"


def _save(config, acc, model, tokenizer, summary: dict, precision: str, *, form: str, base_model: str) -> None:
    """The model output, written by the main process. A LoRA on an SFT adapter is stacked with it from the
    adapter's weights, gathered from the shards first where no process holds them whole (train's
    ``parallel.gathered_trainable``; every rank joins the gather). A LoRA on any other SFT model is merged into
    it: in place when every process holds the whole policy, else into a model rebuilt on the main process from
    the gathered adapter."""
    from components.preference import model as modelbuild
    from components.train import parallel
    from components.train.__main__ import save_outputs, write_model

    save_as = _SaveAs(config, "full" if form == "merged" else config.method, base_model)
    if form in ("adapter", "full"):
        save_outputs(save_as, acc, model, tokenizer, summary)
    elif form == "stacked":
        gathered = parallel.gathered_trainable(acc, model) if parallel.shards_parameters(acc) else None
        if acc.is_main_process:
            _write_stacked(config, acc.unwrap_model(model), gathered, tokenizer, summary)
    elif parallel.shards_parameters(acc):
        adapter = parallel.gathered_trainable(acc, model)
        if acc.is_main_process:
            write_model(save_as, modelbuild.merged_policy(config, adapter, precision), tokenizer, summary)
    elif acc.is_main_process:
        write_model(save_as, acc.unwrap_model(model).merge_and_unload(), tokenizer, summary)


def _write_stacked(config, policy, gathered: dict | None, tokenizer, summary: dict) -> None:
    """The stacked adapter, the tokenizer and training_summary.json, as train writes an adapter. The trained
    adapter's weights are keyed as PEFT saves them, from the gathered state dict where there is one (peft
    0.21.2 utils/save_and_load.py ``get_peft_model_state_dict``, what ``save_pretrained`` calls)."""
    from peft.utils import get_peft_model_state_dict

    from components.preference.stack import stack_adapters
    from components.train.loop import dump_json

    adapter = get_peft_model_state_dict(policy, state_dict=gathered, save_embedding_layers=False)
    stack_adapters(config.sft_model, policy.peft_config["default"], adapter, config.model)
    tokenizer.save_pretrained(config.model)
    dump_json(config.model / SUMMARY_FILE, summary)


def _resolve_start(config):
    """(config with --sft-model set from --sft-model-uri when one is given, exit code 2 on a bad one)."""
    if config.sft_model_uri:
        if config.sft_model is not None:
            print("error: give --sft-model or --sft-model-uri, not both", file=sys.stderr)
            return config, 2
        try:
            config = dataclasses.replace(config, sft_model=_fetch_start(config.sft_model_uri))
        except (LookupError, ValueError, FileNotFoundError) as err:
            print(f"error: --sft-model-uri: {err}", file=sys.stderr)
            return config, 2
        print(f"starting from {config.sft_model_uri}", flush=True)
    return config, None


def _encode(config, tokenizer, train_split, held_out: dict) -> tuple[list, dict, list, dict]:
    """(train records, encoded held-out splits, validation records, what was truncated or dropped per split)."""
    from components.preference.data import encode_split

    over_long: dict = {}
    train, over_long["train"] = encode_split(tokenizer, train_split, config.max_seq_len)
    encoded_held_out = {}
    for name, split in held_out.items():
        encoded_held_out[name], over_long[name] = encode_split(tokenizer, split, config.max_seq_len)
    validation = encoded_held_out.get("validation", [])
    if config.max_eval_examples:
        validation = validation[: config.max_eval_examples]
    return train, encoded_held_out, validation, over_long


def _optimizer(config, model, total_steps: int) -> tuple:
    import torch
    from transformers import get_scheduler

    from components.train import modelsetup

    optimizer = torch.optim.AdamW(modelsetup.param_groups(model, config.weight_decay), lr=config.learning_rate)
    scheduler = get_scheduler(config.lr_scheduler if config.lr_scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


def _start_run(config, acc, loop, untracked: str | None, chosen, total_steps: int, log, *, train_split,
               start: str, base_model: tuple[str, str | None], sizes: tuple[int, int]):
    """The MLflow run on the main process (resumed when the checkpoint names one), or None. ``base_model``: its
    name and Hub commit."""
    base_model, base_revision = base_model
    run = None
    if untracked and acc.is_main_process:
        log(f"warning: this run is not tracked: {untracked}; its figures stay in {SUMMARY_FILE}")
        write_value(config.mlflow_run_id, "")
    if acc.is_main_process and not untracked:
        from tuneline.llm.ml.tracking import Run

        run = Run(run_id=loop.state.mlflow_run_id, experiment=config.experiment,
                  run_name=f"preference-{config.loss}-{config.method}-{base_model.replace('/', '-')}"[:100])
        loop.state.mlflow_run_id = run.run_id
        run.log_params({**hyperparameters(config), "train_sha256": train_split.sha256, "start": start,
                        "n_train": sizes[0], "n_validation": sizes[1], "world_size": acc.num_processes,
                        "planned_steps": total_steps, "distributed_type": acc.distributed_type.value,
                        **{k: v for k, v in chosen.as_params().items() if k != "reason"}})
        run.set_tags({"tuneline.dataset_sha256": train_split.sha256, "tuneline.base_model": base_model,
                      "tuneline.method": config.method, "tuneline.preference_loss": config.loss,
                      **({f"tuneline.{BASE_REVISION_KEY}": base_revision} if base_revision else {})})
        write_value(config.mlflow_run_id, run.run_id)
    return run


def _fit(loop, run, encoded_held_out: dict) -> tuple:
    """(final state, held-out scores); the run ends KILLED on a stop signal, FAILED on any other error."""
    try:
        state = loop.fit()
        held = {name: loop.score(records) for name, records in encoded_held_out.items() if records}
        return state, held
    except SystemExit:
        if run is not None:
            run.finish("KILLED")
        raise
    except BaseException:
        if run is not None:
            run.finish("FAILED")
        raise


def _summary(config, acc, loop, state, held: dict, started: float, precision: str, *, output: tuple, start: str,
             base_model: tuple[str, str | None], train_split, held_out: dict, n_train: int,
             over_long: dict) -> dict:
    """training_summary.json: what was trained from what (``base_model``: its name and Hub commit), how, and the
    held-out and loop figures."""
    from components.preference import model as modelbuild

    form, why = output
    return {
        "base_model": base_model[0],
        BASE_REVISION_KEY: base_model[1],
        "method": "full" if form == "merged" else config.method,
        "preference": {"loss": config.loss, "beta": config.beta, "start": config.sft_model_uri or start,
                       "output": form, "output_why": why, "reference": modelbuild.held_as(loop.reference)},
        "hyperparameters": hyperparameters(config),
        "data": {"kind": train_split.kind, "train_sha256": train_split.sha256, "n_train": n_train,
                 **{f"{n}_sha256": s.sha256 for n, s in held_out.items()},
                 "over_long": {"max_seq_len": config.max_seq_len, **over_long}},
        "world_size": acc.num_processes,
        "mixed_precision": precision,
        "mlflow_run_id": state.mlflow_run_id,
        "system_prompt": _common_system_prompt(train_split.records),
        "held_out": held,
        **{f"{name}_{k}": v for name, m in held.items() for k, v in m.items()},
        **loop.summary(),
        "process_wall_time_s": time.time() - started,
    }


def _finish(config, acc, run, state, summary: dict, held: dict, start: str, log) -> None:
    """Final metrics to the run, and the closing line and step summary on the main process."""
    from components.train.loop import finite

    if run is not None:
        finals = {k.replace("/", "_"): v for k, v in summary.items() if isinstance(v, float) and finite(v)}
        run.log_metrics(finals, step=state.global_step)
        run.log_artifact(config.model / SUMMARY_FILE)
        run.finish()
    if acc.is_main_process:
        figures = "; ".join(f"{n}: reward accuracy {m['rewards/accuracies']:.3f}"
                            + (f", margin {m['rewards/margins']:.4f}" if "rewards/margins" in m else "")
                            for n, m in held.items())
        log(f"done: {state.global_step} steps, final loss {summary['final_train_loss']:.4f}"
            f"{'; ' + figures if figures else ''}; model in {config.model}")
        from tuneline.step.summary import write_step_summary

        write_step_summary(f"{config.loss} {config.method} on {start}; {figures or 'no held-out split'}")


class _SaveAs:
    """The fields of the config ``train``'s ``save_outputs`` reads, with the method and base model as written."""

    def __init__(self, config, method: str, base_model: str) -> None:
        self.method, self.base_model, self.model = method, base_model, config.model


def _common_system_prompt(records: list) -> str | None:
    prompts = Counter(r.prompt[0]["content"] for r in records if r.prompt[0]["role"] == "system")
    return prompts.most_common(1)[0][0] if prompts else None


if __name__ == "__main__":
    sys.exit(main())

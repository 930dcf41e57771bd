"""Submit a pipeline to a target: compile it as the run will see it, check its data, and hand it to the target's
own submission (tuneline/targets/<name>/submit.py), through the Target interface (tuneline.targets.base).

Run as: tuneline submit pipelines/finetune.yaml --target kfp --host https://kfp.example.com --schedule
        tuneline submit pipelines/finetune.yaml --target azureml --subscription SUB --resource-group RG \
            --workspace WS --dry-run

`submit_pipeline` is the path `tuneline trigger check --submit kfp|azureml` takes when a trigger fires: compile
the pipeline, then submit it with the run arguments that point its data at the configured store (an object-store
URI on KFP, an azureml:// URI on Azure ML), never at a file baked into the image. `compile_submission` is that
compilation alone; `tuneline cluster check` calls it with the retraining CronJob's own command line, so what is
checked is what the CronJob submits.

The check's `--set` and the run's `--submit-param` mean different places for the same parameter: `--set
dataset=/mnt/data/tickets.jsonl` is where the check reads the data, `--submit-param dataset=<store URI>` where the
run reads it. A parameter given as a run argument is therefore not also a compile-time value: on KFP it is a run
argument over the compiled default, on Azure ML (whose job file carries its inputs) it replaces the `--set` one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import registry
from .base import SubmitSettings, missing_settings
from .options import CompileOptions

__all__ = ["SubmitSettings", "Submission", "SubmitError", "compile_submission", "submit_pipeline", "run_state",
           "submit_targets", "add_setting_flags", "settings_from_args"]


@dataclass
class Submission:
    target: str
    run_id: str | None
    lines: list[str]


class SubmitError(ValueError):
    """A submission that cannot be made as configured; the message says which setting is missing."""


def submission_options(images: str | None, platform: dict[str, Any] | None = None) -> CompileOptions:
    """The compile options of a `trigger check --submit` run (`--images FILE`, the target's own options)."""
    from .images import load_image_lock

    return CompileOptions(image_lock=load_image_lock(Path(images)) if images else None, platform=platform or {})


def submission_values(target: str, sets: dict[str, str], run_params: dict[str, str]) -> tuple[dict[str, str],
                                                                                            dict[str, str]]:
    """(compile-time values, run arguments) of a submission: a run argument is never also compiled in."""
    return _target(target).split_values(sets, run_params)


def _target(name: str):
    from . import CompileError

    try:
        return registry.get(name)
    except CompileError as exc:
        raise SubmitError(str(exc)) from exc


def submitted_pipeline(pipeline_path: str | Path, target: str, sets: dict[str, str], run_params: dict[str, str]):
    """The pipeline as the submitted run sees it: compiled values and run arguments, the target's defaults."""
    from ..spec import load_pipeline

    compiled_values, arguments = submission_values(target, sets, run_params)
    return load_pipeline(pipeline_path, {**compiled_values, **arguments}).for_target(target)


def compile_submission(pipeline_path: str | Path, target: str, out: Path, sets: dict[str, str],
                       run_params: dict[str, str], options: CompileOptions | None = None):
    """Compile what `submit_pipeline` submits; returns (CompileOutput, typed run arguments). Raises SpecError
    or CompileError as `tuneline compile` would, and SubmitError for data the target cannot read."""
    from ..spec import IOType
    from .build import compile_file

    platform = _target(target)
    compiled_values, arguments = submission_values(target, sets, run_params)
    pipeline = submitted_pipeline(pipeline_path, target, sets, run_params)
    options = options or CompileOptions()
    for name, param in pipeline.spec.params.items():
        if param.type in (IOType.uri_file, IOType.uri_folder):
            why = platform.data_problem(name, str(pipeline.params[name]), options, compiled_in=name not in arguments)
            if why:
                raise SubmitError(f"{pipeline_path}: {why}")
    typed = {name: pipeline.params[name] for name in arguments}
    output = compile_file(pipeline_path, (target,), out, platform.submission_options(options), compiled_values)
    return output, typed


def submit_pipeline(pipeline_path: str | Path, target: str, out: Path, sets: dict[str, str],
                    run_params: dict[str, str], settings: SubmitSettings,
                    options: CompileOptions | None = None) -> Submission:
    """Compile `pipeline_path` for `target` into `out` and submit one run through the platform's SDK client.

    `sets` are the check's values (as `tuneline run --set`); `run_params` are the run's arguments where the target
    takes run arguments, and compiled in where its job file carries its inputs (the target's `split_values`).
    `options` carry the cluster's image lock and MLflow Secret.
    """
    platform = _ready(target, settings, "--submit")
    output, arguments = compile_submission(pipeline_path, target, out, sets, run_params, options)
    lines = platform.submit(output.folder / target, output.pipeline, arguments, settings)
    first = lines[0].split() if lines else []
    return Submission(target=target, run_id=first[1] if len(first) == 2 else None, lines=lines)


def run_state(target: str, run_id: str, settings: SubmitSettings) -> str | None:
    """The platform's state of a submitted run, or None when it cannot be asked (no endpoint, no access, run
    gone): then the caller keeps the submission as its baseline, as it would without asking."""
    try:
        return _target(target).run_state(run_id, settings)
    except Exception:  # noqa: BLE001 - an unreachable or refusing API leaves the state unknown
        return None


def _ready(target: str, settings: SubmitSettings, flag: str):
    """`target`, once the settings it requires are there; `flag` is how the command named it, for the error."""
    platform = _target(target)
    missing = missing_settings(platform, settings)
    if missing:
        raise SubmitError(f"{flag} {target} needs {', '.join(missing)}")
    return platform


def submit_targets() -> tuple[str, ...]:
    """The targets a run can be submitted to: every registered one."""
    return registry.names()


def _dest(target: str, setting_name: str, kind: str = "submit") -> str:
    return f"{kind}_{target}_{setting_name}"


def add_setting_flags(parser, targets: tuple[str, ...], prefix: str = "", compile_only: bool = False) -> None:
    """Each target's settings as flags of `parser` (argparse), in a group per target; `prefix` starts each help
    text (`--submit kfp: `). The flags are the targets' own declarations (tuneline.targets.base.Setting): their
    compile settings always, their submission settings unless `compile_only`."""
    for name in targets:
        target = _target(name)
        kinds = [("compile", target.compile_settings), *([] if compile_only else [("submit", target.settings)])]
        settings = [(kind, setting) for kind, declared in kinds for setting in declared]
        if not settings:
            continue
        group = parser.add_argument_group(f"{name} options")
        for kind, setting in settings:
            group.add_argument(*setting.flags, dest=_dest(name, setting.name, kind), type=setting.type,
                               default=None, metavar=setting.metavar or setting.name.upper(),
                               help=f"{prefix.format(target=name)}{setting.help}")


def settings_from_args(target: str, args, environ) -> SubmitSettings:
    """`target`'s settings from the flags `add_setting_flags` added, else its environment variables."""
    from .base import settings_from

    platform = _target(target)
    given = {setting.name: getattr(args, _dest(target, setting.name), None) for setting in platform.settings}
    return settings_from(platform, {**given, "experiment": getattr(args, "experiment", None)}, environ)


def platform_options_from_args(targets: tuple[str, ...], args) -> dict[str, Any]:
    """Each target's own compile options (CompileOptions.platform) from the flags `add_setting_flags` added."""
    options = {}
    for name in targets:
        platform = _target(name)
        values = {s.name: getattr(args, _dest(name, s.name, "compile"), None) for s in platform.compile_settings}
        own = platform.compile_options(values)
        if own is not None:
            options[name] = own
    return options


def submit_compiled(target: str, folder: Path, pipeline: str, arguments: dict[str, Any], settings: SubmitSettings,
                    schedule: bool = False, dry_run: bool = False, no_cache: bool = False) -> list[str]:
    """Hand an already compiled `folder` to `target`'s own submission (`tuneline submit`), after checking that
    the settings it requires are there."""
    platform = _ready(target, settings, "--target")
    return platform.submit(folder, pipeline, arguments, settings, schedule=schedule, dry_run=dry_run,
                           no_cache=no_cache)


def explain(chain: list[BaseException], host: str | None, chosen: str | None) -> str | None:
    """The first target's advice on a failure (the chosen target asked first), or None."""
    names = [*([chosen] if chosen in submit_targets() else []), *(n for n in submit_targets() if n != chosen)]
    for name in names:
        hint = _target(name).explain(chain, host, name == chosen)
        if hint:
            return hint
    return None

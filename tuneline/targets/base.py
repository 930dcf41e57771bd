"""What every place a pipeline is compiled for and submitted to provides, behind one interface.

A target is a folder under tuneline/targets/ whose `target.py` defines `TARGET`, an object with the methods of
`Target`; the compiler front (tuneline.targets.build) and the submission path (tuneline.targets.submit) only call
these, so adding a target adds a folder and edits no branch (tuneline.targets.registry finds it). The local run
(tuneline.targets.local) is the reference the others are compared with and runs the graph itself rather than
compiling it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..graph import PipelineGraph
from .options import CompileOptions


@dataclass
class Compiled:
    """One target's compiled files (the pipeline or job first) and what it could not express."""

    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Setting:
    """One value a submission to a target needs or may take, declared by the target: the command-line flags that
    give it (`tuneline submit` and `tuneline trigger check --submit` both build theirs from these), the environment
    variables it falls back on, in order, and whether a submission is refused without it."""

    name: str
    flags: tuple[str, ...]
    help: str
    env: tuple[str, ...] = ()
    required: bool = False
    type: type = str
    metavar: str = ""  # how --help names the value (default: the name in capitals)

    def named(self) -> str:
        """How a user sets it, for an error: its flags, else its first variable."""
        return " / ".join(self.flags) + (f" or ${self.env[0]}" if self.env else "")


@dataclass
class SubmitSettings:
    """Where a run goes: each target's own `Setting` values by name (from flags, else the environment), and the
    experiment, which every target has."""

    values: dict[str, Any] = field(default_factory=dict)
    experiment: str | None = None

    def get(self, name: str) -> Any:
        return self.values.get(name)


class Target(Protocol):
    name: str
    settings: tuple[Setting, ...]  # what its submission reads, beside the experiment
    compile_settings: tuple[Setting, ...]  # the compile options only it reads (tuneline/targets/<name>/options.py)

    def compile_options(self, values: dict[str, Any]) -> Any:
        """Its own compile options (CompileOptions.platform[name]) from its compile settings' values by name (None:
        not given)."""

    def compile(self, graph: PipelineGraph, folder: Path, options: CompileOptions) -> Compiled:
        """Write the pipeline (and its schedule, when the graph has one) for this target into `folder`."""

    def split_values(self, sets: dict[str, str], run_params: dict[str, str]) -> tuple[dict[str, str],
                                                                                       dict[str, str]]:
        """(values compiled in, run arguments) of a submission: a run argument is never also compiled in."""

    def data_problem(self, name: str, value: str, options: CompileOptions, compiled_in: bool) -> str | None:
        """Why the platform cannot read `value` for the data parameter `name`, or None."""

    def submission_options(self, options: CompileOptions) -> CompileOptions:
        """The compile options of a run a trigger submits, from those of the submission."""

    def submit(self, folder: Path, pipeline: str, arguments: dict[str, Any], settings: SubmitSettings,
               schedule: bool = False, dry_run: bool = False, no_cache: bool = False) -> list[str]:
        """Submit the compiled `folder` through the platform's own client (and create its schedule when asked);
        the lines to print, the first `<kind> <run id>`. With `dry_run`, the calls it would make, as JSON, and
        nothing called; `no_cache` turns the run's step caching off where the platform decides it per run."""

    def run_state(self, run_id: str, settings: SubmitSettings) -> str | None:
        """The platform's state of a submitted run, or None when it cannot be asked."""

    def explain(self, chain: list[BaseException], host: str | None, chosen: bool) -> str | None:
        """What to do next about a failure whose exception chain is `chain` (outermost first), in one or two
        lines; None when it is not this platform's. `host` is the endpoint when the failure is an unreachable one;
        `chosen` says whether the command named this target (another target's SDK error can still be recognised:
        its credential chain's, say)."""


def values_as_run_arguments(sets: dict[str, str], run_params: dict[str, str]) -> tuple[dict[str, str],
                                                                                     dict[str, str]]:
    """`split_values` of a target whose runs take arguments: a run argument overrides the compiled default, so it is
    kept out of the compiled values."""
    return {k: v for k, v in sets.items() if k not in run_params}, dict(run_params)


def values_compiled_in(sets: dict[str, str], run_params: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """`split_values` of a target whose job file carries its inputs: a run's values are compiled in, and there are no
    run arguments."""
    return {**sets, **run_params}, {}


def missing_settings(target: Target, settings: SubmitSettings) -> list[str]:
    """The required settings `settings` lacks, each named as the user sets it."""
    return [setting.named() for setting in target.settings if setting.required and settings.get(setting.name) in
            (None, "")]


def settings_from(target: Target, given: dict[str, Any], environ: dict[str, str]) -> SubmitSettings:
    """`target`'s settings from the values given on the command line (by name; None: not given), else the first of
    its environment variables that is set."""
    values: dict[str, Any] = {}
    for setting in target.settings:
        value = given.get(setting.name)
        if value is None:
            value = next((environ[var] for var in setting.env if environ.get(var)), None)
            value = setting.type(value) if value is not None else None
        values[setting.name] = value
    return SubmitSettings(values=values, experiment=given.get("experiment"))

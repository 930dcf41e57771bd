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


@dataclass
class SubmitSettings:
    """Where a run goes: from `trigger check` flags, else the environment (tuneline.cli.ops)."""

    kfp_host: str | None = None
    kfp_namespace: str | None = None
    service_account: str | None = None
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    experiment: str | None = None


class Target(Protocol):
    name: str

    def compile(self, graph: PipelineGraph, folder: Path, options: CompileOptions) -> Compiled:
        """Write the pipeline (and its schedule, when the graph has one) for this target into `folder`."""

    def split_values(self, sets: dict[str, str], run_params: dict[str, str]) -> tuple[dict[str, str],
                                                                                       dict[str, str]]:
        """(values compiled in, run arguments) of a submission: a run argument is never also compiled in."""

    def data_problem(self, name: str, value: str, options: CompileOptions, compiled_in: bool) -> str | None:
        """Why the platform cannot read `value` for the data parameter `name`, or None."""

    def submission_options(self, options: CompileOptions) -> CompileOptions:
        """The compile options of a submitted run, from those of the submission."""

    def missing_settings(self, settings: SubmitSettings) -> list[str]:
        """The settings a submission needs and lacks, each named as the user sets it."""

    def submit(self, folder: Path, pipeline: str, arguments: dict[str, Any],
               settings: SubmitSettings) -> list[str]:
        """Submit the compiled `folder` through the platform's own client; the lines to print, the first
        `<kind> <run id>`."""

    def run_state(self, run_id: str, settings: SubmitSettings) -> str | None:
        """The platform's state of a submitted run, or None when it cannot be asked."""

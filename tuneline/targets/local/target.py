"""This machine behind the Target interface (tuneline.targets.base): the reference the cluster targets are compared
with, reached the same way they are (`tuneline submit --target local`, `trigger check --submit local`).

Compiling for it writes `steps.yaml`: each step's command line as the runner will execute it (from the project
folder), with constant inputs
filled in and the values known only at run time (an upstream step's output, the step's own output folder) left as
references; the pipeline file it came from (a path relative to `steps.yaml`) and the values compiled in. Submitting
runs the pipeline here, to the end, through the local runner (tuneline.targets.local.runner): a run here has no
queue to hand it to. There is no scheduler here either (the platform's own is what a schedule means on a cluster):
a `schedule:` is written down with the command to put in cron or a systemd timer, and `--schedule` is refused.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import yaml

from ...graph import PipelineGraph
from ...spec import OutputRef
from ...step.command import render_items
from ..base import Compiled, Setting, SubmitSettings, values_as_run_arguments
from ..options import CompileOptions

STEPS_FILE = "steps.yaml"


class LocalTarget:
    name = "local"
    settings = (Setting("home", ("--local-home",), "the local runner's state folder (default: $TUNELINE_HOME, else "
                        ".tuneline/ in the project)", env=("TUNELINE_HOME",)),)

    compile_settings = ()

    def compile_options(self, values: dict[str, Any]) -> Any:
        return None

    def compile(self, graph: PipelineGraph, folder: Path, options: CompileOptions) -> Compiled:
        folder.mkdir(parents=True, exist_ok=True)
        pipeline = graph.pipeline
        steps = []
        for name in graph.order:
            node = graph.nodes[name]
            inputs = {key: str(binding) if isinstance(binding, OutputRef) else pipeline.input_value(name, key)
                      for key, binding in node.bindings.items()}
            for key, spec in node.component.spec.inputs.items():
                inputs.setdefault(key, spec.default)
            outputs = {key: f"${{{{outputs.{key}}}}}" for key in node.component.spec.outputs}
            steps.append({"name": name, "component": node.component.spec.name,
                          "after": sorted(node.upstream),
                          "command": shlex.join(render_items(node.component.spec.command_items, inputs, outputs))})
        document: dict[str, Any] = {
            "pipeline": {"name": graph.name, "path": os.path.relpath(pipeline.path, folder.resolve())},
            "values": {name: pipeline.input_value(*name.split(".", 1)) if "." in name else pipeline.params[name]
                       for name in sorted(pipeline.overridden)},  # parameters and step inputs, as --set gave them
            "steps": steps,
        }
        schedule = pipeline.spec.schedule
        if schedule is not None:
            document["schedule"] = {"cron": schedule.cron, "timezone": schedule.timezone,
                                    "command": f"tuneline run {os.path.relpath(pipeline.path, pipeline.root)}",
                                    "note": "no scheduler here: run the command from cron or a systemd timer in "
                                            "the project folder"}
        path = folder / STEPS_FILE
        path.write_text("# The steps `tuneline run` executes, in order (tuneline.targets.local.target)\n"
                        + yaml.safe_dump(document, sort_keys=False, width=1 << 20))
        return Compiled(files=[path])

    def split_values(self, sets: dict[str, str], run_params: dict[str, str]) -> tuple[dict[str, str],
                                                                                       dict[str, str]]:
        return values_as_run_arguments(sets, run_params)  # the runner takes them as it takes --set

    def data_problem(self, name: str, value: str, options: CompileOptions, compiled_in: bool) -> str | None:
        if "://" in value:
            return f"parameter '{name}' = {value}: the local runner reads files on this machine, not a URI"
        return None

    def submission_options(self, options: CompileOptions) -> CompileOptions:
        return options  # the runner's cache keys on the data's digest, not its path

    def submit(self, folder: Path, pipeline: str, arguments: dict[str, Any], settings: SubmitSettings,
               schedule: bool = False, dry_run: bool = False, no_cache: bool = False) -> list[str]:
        from ... import settings as project
        from ...graph import build_graph
        from ...spec import load_pipeline
        from .runner import LocalRunner, RunOptions

        if schedule:
            raise ValueError("the local target has no scheduler: run `tuneline run` from cron or a systemd timer "
                             f"(the command is in {folder / STEPS_FILE})")
        compiled = yaml.safe_load((folder / STEPS_FILE).read_text())
        path = (folder / compiled["pipeline"]["path"]).resolve()
        values = {name: _as_text(value) for name, value in compiled["values"].items()}
        graph = build_graph(load_pipeline(path, {**values, **{k: _as_text(v) for k, v in arguments.items()}}))
        options = RunOptions(home=project.state_home(settings.get("home"), start=path.parent), no_cache=no_cache)
        if dry_run:
            from .plan import plan

            return [f"{step.name}: {step.action} ({step.why})" for step in plan(graph, options)]
        record = LocalRunner(graph, options).run()
        return [f"run {record.run_id}", f"  {record.status}: tuneline runs show {record.run_id}"]

    def run_state(self, run_id: str, settings: SubmitSettings) -> str | None:
        from ... import settings as project
        from .record import find_run

        found = find_run(project.state_home(settings.get("home")) / "runs", run_id)
        return str(found["status"]) if found else None

    def explain(self, chain: list[BaseException], host: str | None, chosen: bool) -> str | None:
        return None  # nothing remote to reach


def _as_text(value: Any) -> str:
    """A value as `--set` gives it (the loader types it again)."""
    return value if isinstance(value, str) else json.dumps(value)


TARGET = LocalTarget()

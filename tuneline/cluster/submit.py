"""What the retraining CronJob and the Azure ML retrain-check job submit, compiled from their own command lines.

Run as: tuneline cluster check pipelines/*.yaml            (this module holds part of its rules)

The CronJob's container command is read from the rendered overlay, `$(VAR)` expanded from its env as the kubelet
does, the files it mounts from ConfigMaps written out, and parsed by tuneline's own argument parser; then
tuneline.targets.submit compiles it exactly as `tuneline trigger check --submit` would in the pod, and the compiled
run is checked against the overlay like any pipeline (tuneline.cluster.check). The Azure ML job that
`tuneline trigger azureml-schedule` writes is compiled from the files the control image holds, where it runs.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..spec import SpecError
from ..targets import CompileError
from ..targets.kfp.options import DEFAULT_KFP_SERVICE_ACCOUNT
from .check import (
    DOCS,
    Sku,
    azureml_environment_problems,
    compiled_problems,
    environment_registry,
    image_problem,
    overlay_registry,
)
from .reads import KFP_NAMESPACE, Rendered, dataset_problem, docs_created, docs_filled

# How a `tuneline trigger ...` command line is read: the CLI's own parser, handed in by the command that runs the
# check (tuneline.cli.cluster), so this library never imports the CLI that imports it.
ParseTrigger = Callable[[list[str]], argparse.Namespace]


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args (https://kubernetes.io/docs/tasks/inject-data-application/
    define-command-argument-container/#use-environment-variables-to-define-arguments)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def container_files(spec: dict[str, Any], container: dict[str, Any], namespace: str, rendered: Rendered,
                    scratch: Path) -> dict[str, Path]:
    """{path in the container: local copy} for every ConfigMap key the container mounts."""
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    files = {}
    for mount in container.get("volumeMounts") or []:
        source = (volumes.get(mount.get("name")) or {}).get("configMap")
        if not source:
            continue
        body = rendered.bodies.get(("ConfigMap", namespace, source.get("name", ""))) or {}
        for key, value in (body.get("data") or {}).items():
            local = scratch / "files" / mount["name"] / key
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(value)
            files[f"{mount['mountPath'].rstrip('/')}/{key}"] = local
    return files


def submission_problems(label: str, argv: list[str], env: dict[str, str], files: dict[str, Path], root: Path,
                        pools: list[Any], skus: dict[str, Sku], folder: Path, rendered: Rendered,
                        registry: str | None, scratch: Path, parse: ParseTrigger,
                        code_root: Path | None = None) -> list[str]:
    """Compile what `tuneline <argv>` (a `trigger check --submit` command line) would submit, and check it.
    `files` maps paths in the container to local copies; `code_root` is where the command runs (the image's
    WORKDIR), the repository by default."""
    from ..spec import IOType
    from ..spec.load import parse_set_pairs
    from ..targets import submit

    try:
        args = parse(argv)
    except SystemExit:
        return [f"{label}: `tuneline {' '.join(argv)}` is not a command line tuneline accepts"]
    if getattr(args, "trigger_command", None) != "check" or not args.submit:
        return []
    base = code_root or root
    if args.images and args.images in files:
        args.images = str(files[args.images])
    elif args.images and not (base / args.images).is_file():
        return [f"{label}: --images {args.images}: no such file in the container (mount it from a ConfigMap)"]
    pipeline_path = base / args.pipeline
    sets, params = parse_set_pairs(args.set), parse_set_pairs(args.submit_param)
    try:
        pipeline = submit.submitted_pipeline(pipeline_path, args.submit, sets, params)
        out, _ = submit.compile_submission(pipeline_path, args.submit, scratch / "out", sets, params,
                                           submit.submission_options(
                                               args.images, submit.platform_options_from_args((args.submit,), args)))
    except (SpecError, CompileError, submit.SubmitError) as exc:
        text = "; ".join(str(p) for p in exc.problems) if isinstance(exc, SpecError) else str(exc)
        return [f"{label}: its submission ({args.submit}) does not compile: {text.replace(f'{base}/', '')}"]
    problems: list[str] = []
    filled = docs_filled([root / d for d in DOCS])
    for name, param in pipeline.spec.params.items():
        if param.type in (IOType.uri_file, IOType.uri_folder):
            why = dataset_problem(str(pipeline.params[name]), filled)
            if why:
                problems.append(f"{label}: parameter '{name}': {why}")
    if args.submit == "kfp":
        where = submit.settings_from_args("kfp", args, env)  # the CronJob's flags, else its container's variables
        namespace = where.get("namespace") or KFP_NAMESPACE
        account = where.get("service_account") or DEFAULT_KFP_SERVICE_ACCOUNT
        found, _ = compiled_problems(label, out.folder, root, pools, skus, folder, rendered, namespace, account,
                                     registry, docs_created([root / d for d in DOCS]))
        problems += found
    else:
        problems += azureml_environment_problems(label, out.folder, environment_registry(root)[1],
                                                 environment_registry(root)[0], registry)
    return problems


def cronjob_problems(root: Path, pools: list[Any], skus: dict[str, Sku], folder: Path,
                     rendered: Rendered, parse: ParseTrigger, checked: list[str] | None = None) -> list[str]:
    """Each CronJob of `folder` that runs `tuneline trigger check --submit`: its exact command line, with the
    environment and ConfigMap files its pod gets, compiled and checked as its submission."""
    problems = []
    for (kind, ns, name), body in sorted(rendered.bodies.items()):
        if kind != "CronJob":
            continue
        spec = (((body.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get(
            "spec") or {}
        for container in spec.get("containers") or []:
            words = list(container.get("command") or []) + list(container.get("args") or [])
            if not words or words[0] != "tuneline":
                continue
            env: dict[str, str] = {}
            for var in container.get("env") or []:
                if "value" in var:
                    env[var["name"]] = _expand(str(var["value"]), env)
                ref = (var.get("valueFrom") or {}).get("configMapKeyRef")
                if ref:
                    cm = rendered.bodies.get(("ConfigMap", ns, ref.get("name", ""))) or {}
                    if ref.get("key") in (cm.get("data") or {}):
                        env[var["name"]] = cm["data"][ref["key"]]
            registry = overlay_registry(rendered)
            label = f"CronJob {ns}/{name} ({folder})"
            with tempfile.TemporaryDirectory() as scratch:
                files = container_files(spec, container, ns, rendered, Path(scratch))
                argv = [_expand(str(w), env) for w in words[1:]]
                if checked is not None:
                    checked.append(f"{label}: checked what `tuneline {' '.join(argv[:3])} ...` submits")
                problems += submission_problems(label, argv, env, files, root, pools, skus, folder, rendered,
                                                registry, Path(scratch), parse)
    return problems


def control_image_root(root: Path, scratch: Path) -> Path:
    """A copy of what the control image holds under its WORKDIR (the `COPY <src> /app/<dst>` lines of
    environments/control/Dockerfile): where `trigger check` compiles inside the image."""
    import shutil

    dockerfile = root / "environments" / "control" / "Dockerfile"
    target = scratch / "control-image"
    target.mkdir(parents=True, exist_ok=True)
    for line in dockerfile.read_text().splitlines() if dockerfile.is_file() else []:
        found = re.match(r"^COPY\s+(\S+)\s+/app/(\S*)$", line.strip())
        if not found:
            continue
        source, dest = root / found.group(1), target / found.group(2)
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest if found.group(2) and not found.group(2).endswith("/") else dest / source.name)
    return target


def azureml_schedule_problems(path: Path, root: Path, pools: list[Any], skus: dict[str, Sku],
                              parse: ParseTrigger) -> list[str]:
    """The Azure ML retrain-check job `tuneline trigger azureml-schedule` writes: its command, run where it
    runs (the control image's files), compiled as it would submit."""
    import shlex

    from ..spec import load_pipeline
    from ..targets.azureml.retrain import ScheduleOptions, render

    pipeline = load_pipeline(path)
    with tempfile.TemporaryDirectory() as scratch:
        job, _ = render(pipeline, Path(scratch) / "job", ScheduleOptions())
        image_root = control_image_root(root, Path(scratch))
        argv = [w for w in shlex.split(job["command"])]
        label = f"Azure ML job {job['display_name']} (tuneline trigger azureml-schedule {path})"
        if argv[0] != "tuneline":
            return [f"{label}: its command does not run tuneline"]
        images, registered = environment_registry(root)
        names = {env.rsplit(":", 1)[0] for env in registered}
        own = job.get("environment")
        if isinstance(own, dict):  # the control image inline: held to the steps' image rules
            why = image_problem(str(own.get("image")), images)
            problems = [f"{label}: its own environment: {why}"] if why else []
        else:
            problems = [] if own in registered or str(own).removesuffix("@latest") in names else [
                f"{label}: its own environment {own} is not one that environments/ registers"]
        return problems + submission_problems(label, argv[1:], {}, {}, root, pools, skus, Path("-"), Rendered(), None,
                                              Path(scratch), parse, code_root=image_root)

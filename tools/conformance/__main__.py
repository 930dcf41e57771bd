"""Run a pipeline locally and as its compiled target runs it, and compare every step.

Run as: python -m tools.conformance azureml pipelines/finetune.yaml --set base_model=tiny-random-llama
        python -m tools.conformance azureml tests/fixtures/toy/pipelines/toy.yaml --work build/conformance
        python -m tools.conformance azureml tests/fixtures/toy/pipelines/resume.yaml --preempt-resumable
        python -m tools.conformance azureml tests/fixtures/toy/pipelines/reuse.yaml --resubmit
        python -m tools.conformance kfp tests/fixtures/toy/pipelines/toy.yaml --work build/conformance
        python -m tools.conformance kfp pipelines/feedback.yaml --set base_model=tiny-random-llama \
            --seed pipelines/finetune.yaml --seed-set base_model=tiny-random-llama
        python -m tools.conformance azureml pipelines/feedback.yaml --set base_model=tiny-random-llama \
            --seed pipelines/finetune.yaml --seed-set base_model=tiny-random-llama

`kfp` executes the compiled package with kfp.local in containers of the images `make images` builds, through a
podman service started for the run under `<TUNELINE_HOME>/podman` (see tools.conformance.kfp); `azureml`
applies Azure ML's documented runtime rules (tools.conformance.azureml), each node a job in a container of the
image its environment names, through a podman service started under the work folder, with nothing from this
machine but what a job would see (its folders, the datastores, the workspace's endpoint).
`--seed` runs an earlier pipeline of a loop into each run's stores first (registry, model cache), each seed alike:
the feedback loop improves and judges the champion that the fine-tuning pipeline registered, so both runs must
start from the same registered champion, as the platform's registry holds it when the loop runs. The local run's
seed is `tuneline run`; the kfp run's too, on this machine, into the store the cluster's pods share. A workspace
registers a model only from a job's output (docs/azureml.md, 'Register and deploy on a workspace'), so the azureml
run's seed is the seed pipeline compiled to Azure ML and run as its jobs, in the same workspace and datastores.
`--resubmit` then submits the same compiled job again in the same workspace, where its deterministic nodes must
reuse the first job's (tools.conformance.azureml R11) and the others must succeed on the outputs they reuse, and
fires the compiled schedule once, whose job (`force_rerun: true`) must run every node (R12).
Exit status 0 when every step matches, 1 when one differs, 2 when the compiled output breaks a runtime rule.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tuneline import settings
from tuneline.graph import PipelineGraph, build_graph
from tuneline.spec import SpecError, load_pipeline
from tuneline.spec.load import parse_set_pairs
from tuneline.targets.build import compile_graph
from tuneline.targets.local import record as rec
from tuneline.targets.local.runner import LocalRunner, RunOptions, read_value_output

from .azureml import AzureMLRuntime, NodeResult, RuntimeRuleBroken, compile_options, local_images, value_of
from .cluster_mlflow import ClusterMlflow
from .compare import compare_steps, report
from .envvars import environment
from .images import StaleImage, check_images
from .kfp import KfpLocalRun, KfpRunBroken, artifact_params, image_mounts, output_of, stage_data
from .podman import PodmanService
from .workspace_mlflow import WorkspaceMlflow

REPO = Path(__file__).resolve().parents[2]  # whose environments/ `make images` builds, with its tuneline/ inside
# The conditions both runs of a comparison share (string hashing orders PEFT's adapter_config.json target_modules;
# threads): the one thing a container of a step gets from this machine's environment.
CONDITIONS = ("PYTHONHASHSEED", "OMP_NUM_THREADS")
URI = re.compile(r"^[a-z0-9+.-]+://")


def run_in(graph: PipelineGraph, home: Path, env: dict[str, str | None]) -> rec.RunRecord:
    """`tuneline run` of `graph` with its state under `home` and `env` set (None: unset) for the run's length."""
    with environment({**env, "TUNELINE_HOME": str(home)}):
        return LocalRunner(graph, RunOptions(home=home, no_cache=True)).run()


def failed_steps(record: rec.RunRecord) -> list[str]:
    """`<step>: <reason>` of each step of `record` that failed."""
    return [f"{s.name}: {s.reason}" for s in record.steps.values() if s.status == rec.FAILED]


def run_local(graph: PipelineGraph, work: Path) -> rec.RunRecord:
    # The runner's own SQLite store under the run's home.
    return run_in(graph, work / "local", {"MLFLOW_TRACKING_URI": None})


class SeedFailed(Exception):
    pass


@dataclass(frozen=True)
class Seed:
    """An earlier pipeline of a loop, run into a store before the compared run (`--seed`)."""

    pipeline: str
    overrides: dict[str, str]

    def graph(self, target: str) -> PipelineGraph:
        """The target's parameter values (its deploy target among them), with the data read from this machine:
        the seed runs here, whatever object-store URI the target would import."""
        remote = build_graph(load_pipeline(self.pipeline, self.overrides)).for_target(target)
        local = build_graph(load_pipeline(self.pipeline, self.overrides))
        data = {name: str((local.pipeline.root / str(local.params[name])).resolve())
                for name in artifact_params(remote)
                if URI.match(str(remote.params[name])) and name not in self.overrides}
        return build_graph(load_pipeline(self.pipeline, {**self.overrides, **data})).for_target(target)

    def run_into(self, target: str, home: Path, env: dict[str, str | None]) -> None:
        # umask 0: a target's steps run as another user (uid 10001 in the images) and write to the same store.
        umask = os.umask(0)
        try:
            record = run_in(self.graph(target), home, env)
        finally:
            os.umask(umask)
        if record.status != rec.SUCCEEDED:
            failed = failed_steps(record)
            raise SeedFailed(f"the seed {self.pipeline} {record.status}: {'; '.join(failed)}")


def _step_number(name: str) -> int | None:
    """The number a checkpoint's name ends with (`checkpoint-00000011`, `step-3.json`), if any."""
    found = re.search(r"(\d+)\D*$", name)
    return int(found.group(1)) if found else None


def resume_report(runtime: AzureMLRuntime, graph: PipelineGraph, local: rec.RunRecord) -> tuple[list[str], bool]:
    """One line per preempted node: what its store held when it was killed, and whether the next job resumed."""
    lines, ok = [], True
    for name, killed in runtime.preempted.items():
        entries = killed.rw_mount_entries
        retry_log = runtime.results[name].log.read_text(errors="replace") if runtime.results[name].log else ""
        newest = entries[-1] if entries else None
        resumed = newest is not None and f"resumed from {newest}" in retry_log
        ok = ok and resumed
        step = _step_number(newest) if newest else None
        if resumed and step is not None:
            lines.append(f"azureml checkpoint resume: {name} killed at step {step} (exit {killed.exit_code}), "
                         f"resumed at step {step + 1}")
        else:
            lines.append(f"azureml checkpoint resume: {name} killed (exit {killed.exit_code}) with "
                         f"{newest or 'nothing'} in its store; the next job did {'' if resumed else 'NOT '}resume")
    return lines, ok


def conditions() -> dict[str, str]:
    return {k: os.environ[k] for k in CONDITIONS if k in os.environ}


class LocalRunFailed(Exception):
    pass


def seed_workspace(seed: Seed, work: Path, workspace: WorkspaceMlflow, env: dict[str, str],
                   datastores: Path, engine: PodmanService) -> None:
    """Run the seed pipeline as a workspace's jobs: its register step saves the champion into its own output on the
    default datastore and registers that output's URI (tuneline/llm/workspace_files.py), as on Azure ML, so the
    compared run's jobs fetch `models:/<name>@champion` from the same `datastores` through the same workspace."""
    out = compile_graph(seed.graph("azureml"), ("azureml",), work / "seed-compiled", compile_options())
    # Its own job folders (its node names are the compared pipeline's too); the datastores outlive both (R8).
    runtime = AzureMLRuntime(out.folder / "azureml" / "pipeline_job.yml", work / "seed", env=env,
                             datastores=datastores, workspace=workspace, engine=engine, images=local_images(REPO))
    try:
        check_images(engine, runtime.images_used(), REPO)
        results = runtime.run()
    except StaleImage as exc:
        raise SeedFailed(f"the seed {seed.pipeline}: {exc}") from exc
    except RuntimeRuleBroken as exc:  # R7: the first failed node ends the pipeline job
        done = ", ".join(f"{n} {r.status}" for n, r in runtime.results.items())
        raise SeedFailed(f"the seed {seed.pipeline} as Azure ML jobs failed ({done or 'no node finished'}): "
                         f"{exc}") from exc
    failed = [f"{n}: {r.status}" for n, r in results.items() if r.status not in ("succeeded", "skipped")]
    if failed:
        raise SeedFailed(f"the seed {seed.pipeline} as Azure ML jobs failed: {'; '.join(failed)}")


def _states(results: dict[str, NodeResult]) -> str:
    return ", ".join(f"{name} {'reused' if r.reused_from else r.status}" for name, r in results.items())


def resubmit(runtime: AzureMLRuntime, compiled: Path, home: Path) -> tuple[list[str], bool]:
    """R11: the job `runtime` ran, submitted again in its workspace: each deterministic node reuses the first
    job's, each other one runs on what it binds. R12: the compiled schedule fired once: every node runs again."""
    options = {"datastores": runtime.datastores, "workspace": runtime.workspace, "engine": runtime.engine,
               "env": runtime.env, "images": runtime.images}
    again = AzureMLRuntime(runtime.job_file, home / "resubmitted", **options)
    results = again.run()
    deterministic = {name for name in results if again.deterministic(name)}
    ok = all(bool(r.reused_from) == (name in deterministic) and r.status in ("succeeded", "skipped")
             for name, r in results.items())
    lines = [f"azureml resubmission: {_states(results)}"]
    schedule = compiled / "schedule.yml"
    if schedule.is_file():
        fired = AzureMLRuntime.from_schedule(schedule, home / "scheduled", **options)
        results = fired.run()
        ok = ok and all(not r.reused_from and r.status in ("succeeded", "skipped") for r in results.values())
        lines.append(f"azureml schedule fired: {_states(results)}")
    return lines, ok


def conform_azureml(graph: PipelineGraph, work: Path, preempt_resumable: bool = False,
                    seed: Seed | None = None, resubmitted: bool = False) -> tuple[str, bool]:
    """The local run, then the compiled job's nodes as Azure ML jobs, each in a container of its environment's
    image (tools.conformance.azureml R6) through a podman service started under `work`, and the comparison."""
    out = compile_graph(graph, ("azureml",), work / "compiled", compile_options())
    home = work / "azureml"
    home.mkdir(parents=True, exist_ok=True)
    resumable = [n for n in graph.order if graph.nodes[n].component.spec.resume_outputs]
    env = conditions()
    datastores = home / "datastores"
    with PodmanService.start(work / "podman") as engine:
        runtime = AzureMLRuntime(out.folder / "azureml" / "pipeline_job.yml", home, env=env, datastores=datastores,
                                 engine=engine, images=local_images(REPO))
        try:
            check_images(engine, runtime.images_used(), REPO)  # before the local run: a stale image fails in seconds
        except StaleImage as exc:
            raise RuntimeRuleBroken(str(exc)) from exc
        if seed is not None:
            seed.run_into("azureml", work / "local", {"MLFLOW_TRACKING_URI": None})
        local = run_local(graph, work)
        if local.status != rec.SUCCEEDED:
            failed = failed_steps(local)
            raise LocalRunFailed(f"the local run {local.status}: {'; '.join(failed)}")
        # Tracking is the workspace's (R9): a real MLflow server reached only through the variables Azure ML
        # injects. Its folder (database, credentials) is outside every folder a job's container mounts.
        with WorkspaceMlflow(work / "workspace-mlflow") as workspace:
            if seed is not None:
                seed_workspace(seed, home, workspace, env, datastores, engine)
            runtime.workspace = workspace
            results = runtime.run(preempt=resumable if preempt_resumable else ())
            again, reused = resubmit(runtime, out.folder / "azureml", home) if resubmitted else ([], True)

    def output(step: str, name: str):
        result = results.get(step)
        if result is None or name not in result.outputs:
            return None
        spec = graph.nodes[step].component.spec.outputs[name]
        if spec.resume:
            # The store is the folder the wrapper keyed inside the output; its key is the local cache key.
            return result.outputs[name] / local.steps[step].cache_key
        if spec.type.is_artifact:
            return result.outputs[name]
        return read_value_output(value_of(result, name), spec.type)

    matches = compare_steps(graph, local, {n: r.status for n, r in results.items()}, output)
    lines, resumed = resume_report(runtime, graph, local)
    return "\n".join([report("azureml", matches), *lines, *again]), all(m.ok for m in matches) and resumed and reused


def conform_kfp(pipeline_path: str, overrides: dict[str, str], work: Path,
                seed: Seed | None = None) -> tuple[str, bool]:
    root = work / "kfp-root"  # kfp.local's pipeline root, bind-mounted into every task at the same path
    data = artifact_params(build_graph(load_pipeline(pipeline_path)))
    remote = {k for k, v in overrides.items() if k in data and URI.match(v)}
    # What is compiled: the KFP target's values (`target_defaults`), the cluster's data URIs among them; a file
    # given with --set is a run argument (below), as a user submits a run with other data, since KFP imports URIs.
    graph = build_graph(load_pipeline(
        pipeline_path, {k: v for k, v in overrides.items() if k not in data or k in remote})).for_target("kfp")
    # The importers read the data from the stand-in store (K3 in tools.conformance.kfp), the local run the very
    # same files, so both start from the same bytes: the local values (no target), also where --set gave a URI.
    local_values = build_graph(load_pipeline(pipeline_path, {k: v for k, v in overrides.items() if k not in remote}))
    staged = stage_data(local_values, root)
    env = {"TUNELINE_HOME": str(root / "home"), **conditions()}
    with PodmanService.start(settings.home() / "podman") as engine, \
            ClusterMlflow.start(engine, work / "mlflow", REPO) as mlflow:
        # The cluster's MLflow server, reached as a pod reaches it: the Service name from the ConfigMap, the
        # login from the Secret, each only where the compiled step reads them (tools.conformance.cluster_mlflow).
        runner = KfpLocalRun(graph, work, engine, env=env, mounts=image_mounts(graph, REPO), hosts=mlflow.hosts)
        package = runner.compile(REPO)
        mlflow.give_pods_their_env(package)
        runner.check_images(package, REPO)  # before the local run: a stale image fails in seconds
        if seed is not None:
            seed.run_into("kfp", work / "local", {"MLFLOW_TRACKING_URI": None})
            # the loop's earlier pipeline, as the pipeline's user, into the cluster's server and the pods' store
            seed.run_into("kfp", Path(env["TUNELINE_HOME"]), mlflow.host_env())
            # The pods open what the seed left in their shared store as another user (uid 10001).
            for path in [root, *root.rglob("*")]:
                if not path.is_symlink():
                    path.chmod(0o777 if path.is_dir() else 0o666)
        local = run_local(build_graph(load_pipeline(pipeline_path, {**overrides, **staged})).for_target("kfp"), work)
        if local.status != rec.SUCCEEDED:
            failed = failed_steps(local)
            raise KfpRunBroken(f"the local run {local.status}: {'; '.join(failed)}")
        results = runner.run(package, staged, root)
    matches = compare_steps(graph, local, {n: r.status for n, r in results.items()}, output_of(results, graph))
    return report("kfp", matches), all(m.ok for m in matches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.conformance", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("kfp", "azureml"), help="the platform whose runtime is applied")
    parser.add_argument("pipeline", help="pipeline YAML")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="parameter override")
    parser.add_argument("--work", default="build/conformance", help="scratch folder (emptied first)")
    parser.add_argument("--seed", metavar="PIPELINE",
                        help="run this pipeline into each run's stores first, as the loop's earlier pipeline")
    parser.add_argument("--seed-set", action="append", default=[], metavar="NAME=VALUE",
                        help="parameter override of the --seed pipeline")
    parser.add_argument("--preempt-resumable", action="store_true",
                        help="kill each step with a resume: true output after its first checkpoint, run it again, "
                             "and check that it resumed (its outputs must still match the uninterrupted local run)")
    parser.add_argument("--resubmit", action="store_true",
                        help="azureml: submit the compiled job again in the same workspace (its deterministic nodes "
                             "must reuse the first job's) and fire its schedule once (every node must run)")
    args = parser.parse_args(argv)
    if args.resubmit and args.target != "azureml":
        parser.error("--resubmit applies to azureml (Azure ML's reuse and schedules)")
    overrides = parse_set_pairs(args.set)
    seed = Seed(args.seed, parse_set_pairs(args.seed_set)) if args.seed else None
    try:
        # Both runs take the target's parameter values (its `target_defaults`), so they run the same steps alike.
        graph = build_graph(load_pipeline(args.pipeline, overrides)).for_target(args.target)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    work = Path(args.work).resolve() / Path(args.pipeline).stem / args.target
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # Both runs hash strings alike, so set-ordered files (PEFT's adapter_config.json target_modules) agree.
    os.environ.setdefault("PYTHONHASHSEED", "0")
    try:
        if args.target == "kfp":
            text, ok = conform_kfp(args.pipeline, overrides, work, seed)
        else:
            text, ok = conform_azureml(graph, work, args.preempt_resumable, seed, args.resubmit)
    except LocalRunFailed as exc:
        print(f"{args.pipeline}: {exc}", file=sys.stderr)
        return 1
    except (KfpRunBroken, RuntimeRuleBroken, SeedFailed, SpecError) as exc:
        print(f"{args.pipeline}: {args.target}: {exc}", file=sys.stderr)
        print(f"{args.target} conformance: 0/{len(graph.order)} steps match local")
        return 2
    print(f"{args.pipeline}:")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

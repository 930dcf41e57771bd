"""Execute a pipeline graph on this machine, one subprocess per step.

Run as: tuneline run pipelines/finetune.yaml [--set name=value] [--no-cache] [--from STEP] [--only STEP]

Each step runs the exact command line its container would run. Outputs, logs and `run.json` land in
`.tuneline/runs/<run id>/`; successful steps are stored in a content-addressed cache so an unchanged re-run
reuses them and a changed input reruns exactly the affected steps.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import __version__, settings
from ...graph import Node, PipelineGraph
from ...spec import IOType, Literal, OutputRef, ParamRef
from ...step import progress as step_progress
from ...step.cache import SUMMARY, StepCache, link_tree, step_cache_key
from ...step.command import render_items
from ...step.digest import path_sha256
from ...step.gate import SKIPPED as GATE_SKIPPED  # the words a gated-off step records on every target
from ..images import deploy_image_env, resolve_images
from . import record as rec
from .resume import ResumeStore, StoreBusy, open_stores

# Kubernetes gives a pod 30 s between SIGTERM and SIGKILL; locally a user pressing Ctrl-C wants it sooner.
STOP_GRACE_SECONDS = float(os.environ.get("TUNELINE_STOP_GRACE", "10"))
POLL_SECONDS = 0.2


class StepFailed(Exception):
    """A step could not start or finish; the message is the reason shown to the user."""


@dataclass
class RunOptions:
    home: Path
    no_cache: bool = False
    from_step: str | None = None
    only_step: str | None = None


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def step_environment(root: Path, home: Path, run_id: str, step: str, code_root: Path | None = None) -> dict[str, str]:
    """The environment of a step's process. `code_root` is the folder above the component's `components/`
    (tuneline's own for a shipped `tuneline/<name>` component): it comes first on PYTHONPATH, so a shipped
    component's package is found even from a project that has a `components/` folder of its own."""
    env = dict(os.environ)
    # `python` in a command must be this project's interpreter, as it is the image's in a container.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    first = [str(code_root)] if code_root is not None and code_root != root else []
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*first, str(root), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["TUNELINE_RUN_ID"] = run_id
    env["TUNELINE_STEP"] = step
    env["TUNELINE_HOME"] = str(home)
    env["MLFLOW_TRACKING_URI"] = settings.tracking_uri(home)
    env.update(settings.TELEMETRY_OFF)
    return env


def read_value_output(path: Path, kind: IOType) -> Any:
    if not path.is_file():
        raise StepFailed(f"value output '{path.name}' was not written")
    if kind == IOType.string:
        return path.read_text()  # verbatim, as KFP's launcher reads a STRING output (tuneline.step.outputs)
    text = path.read_text().strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise StepFailed(f"value output '{path.name}' holds {text[:40]!r}, not JSON") from None
    expected = {IOType.boolean: bool, IOType.integer: int, IOType.number: (int, float), IOType.string: str}[kind]
    if not isinstance(value, expected) or (kind != IOType.boolean and isinstance(value, bool)):
        raise StepFailed(f"value output '{path.name}' holds {value!r}, expected {kind.value}")
    return value


class LocalRunner:
    def __init__(self, graph: PipelineGraph, options: RunOptions,
                 on_change: Callable[[rec.RunRecord], None] | None = None):
        self.graph = graph
        self.options = options
        self.root = graph.pipeline.root
        self.cache = StepCache(options.home / "cache")
        self.on_change = on_change or (lambda _record: None)
        self.interrupted = False
        self.process: subprocess.Popen[bytes] | None = None
        run_id = new_run_id()
        folder = options.home / "runs" / run_id
        folder.mkdir(parents=True)
        self.record = rec.RunRecord(
            run_id=run_id, pipeline=graph.name, pipeline_path=str(graph.pipeline.path), folder=str(folder),
            params=dict(graph.params), order=list(graph.order), tuneline_version=__version__,
            steps={name: rec.StepRecord(name=name, component=graph.nodes[name].component.name,
                                               role=graph.nodes[name].component.spec.role)
                   for name in graph.order})

    # ------------------------------------------------------------------------------------------ plan

    def _selection(self) -> tuple[set[str], set[str]]:
        """(steps to consider, steps that must execute even when cached)."""
        nodes = self.graph.nodes
        for flag, name in (("--from", self.options.from_step), ("--only", self.options.only_step)):
            if name is not None and name not in nodes:
                raise StepFailed(f"{flag} {name}: no such step (steps: {', '.join(self.graph.order)})")
        if self.options.only_step:
            target = self.options.only_step
            ancestors: set[str] = set()
            frontier = [target]
            while frontier:
                for up in nodes[frontier.pop()].upstream:
                    if up not in ancestors:
                        ancestors.add(up)
                        frontier.append(up)
            return ancestors | {target}, {target}
        if self.options.from_step:
            return set(nodes), self.graph.downstream_closure({self.options.from_step})
        return set(nodes), set()

    # ------------------------------------------------------------------------------------------ run

    def run(self) -> rec.RunRecord:
        previous = signal.signal(signal.SIGINT, self._on_interrupt)
        previous_term = signal.signal(signal.SIGTERM, self._on_interrupt)
        try:
            considered, forced = self._selection()
            for name in self.graph.order:
                step = self.record.steps[name]
                if self.interrupted:
                    self._finish(step, rec.NOT_RUN, "run interrupted")
                    continue
                if name not in considered:
                    self._finish(step, rec.NOT_RUN, f"not selected (--only {self.options.only_step})")
                    continue
                cache_only = bool(self.options.only_step) and name not in forced
                self._run_step(self.graph.nodes[name], forced=name in forced, cache_only=cache_only)
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)
            if self.interrupted:
                self.record.status = rec.INTERRUPTED
            elif any(s.status == rec.FAILED for s in self.record.steps.values()):
                self.record.status = rec.FAILED
            else:
                self.record.status = rec.SUCCEEDED
            self.record.duration_s = time.time() - self.record.started
            self.record.lineage = self._lineage()
            self.record.save()
            self.on_change(self.record)
        return self.record

    def _on_interrupt(self, signum: int, _frame: Any) -> None:
        self.interrupted = True

    def _changed(self) -> None:
        self.record.save()
        self.on_change(self.record)

    def _finish(self, step: rec.StepRecord, status: str, reason: str = "") -> None:
        step.status = status
        step.reason = reason
        self._changed()

    def _run_step(self, node: Node, forced: bool, cache_only: bool) -> None:
        step = self.record.steps[node.name]
        blocked = self._blocked_by(node)
        if blocked:
            self._finish(step, *blocked)
            return
        step_dir = Path(self.record.folder) / "steps" / node.name
        outputs_dir = step_dir / "outputs"
        outputs_dir.mkdir(parents=True, exist_ok=True)
        step.started = time.time()
        try:
            inputs, key_inputs = self._resolve_inputs(node)
            step.inputs = inputs
            spec_dump = node.component.spec.model_dump(mode="json")
            step.cache_key = step_cache_key(node.component.folder, spec_dump, key_inputs)
            use_cache = node.cache_enabled and not self.options.no_cache and not forced
            entry = self.cache.lookup(step.cache_key) if use_cache or cache_only else None
            if entry is not None:
                link_tree(entry.folder / "outputs", outputs_dir)
                if (entry.folder / SUMMARY).is_file():
                    link_tree(entry.folder / SUMMARY, step_dir / SUMMARY)
                step.outputs = {name: self._absolute(out, outputs_dir) for name, out in entry.outputs.items()}
                step.cache = "hit"
                step.duration_s = time.time() - step.started
                self._finish(step, rec.CACHED, f"reused cache entry {step.cache_key[:12]}")
                return
            if cache_only:
                raise StepFailed(f"no cached result for '{node.name}' with these inputs; "
                                 f"run the pipeline once without --only")
            step.cache = "miss" if use_cache else "disabled"
            output_paths = self._prepare_outputs(node, outputs_dir)
            stores = self._open_stores(node, step)
            try:
                output_paths.update({store.output: str(store.path) for store in stores})
                values = {name: (v["path"] if "path" in v else v["value"]) for name, v in inputs.items()}
                step.command = render_items(node.component.spec.command_items, values, output_paths)
                self._execute(node, step, step_dir)
                for store in stores:
                    store.adopt_into(outputs_dir / store.output)
            finally:
                for store in stores:
                    store.release()
            step.outputs = self._collect_outputs(node, outputs_dir)
            if node.cache_enabled:
                stored = {name: self._relative(out, outputs_dir) for name, out in step.outputs.items()}
                self.cache.store(step.cache_key, step_dir, stored,
                                 {"run_id": self.record.run_id, "step": node.name, "created": time.time()})
            step.duration_s = time.time() - step.started
            self._finish(step, rec.SUCCEEDED)
        except StepFailed as exc:
            step.duration_s = time.time() - step.started
            self._finish(step, rec.INTERRUPTED if self.interrupted else rec.FAILED, str(exc))
        except KeyError as exc:  # a command placeholder without a value
            step.duration_s = time.time() - step.started
            self._finish(step, rec.FAILED, str(exc.args[0]))

    def _blocked_by(self, node: Node) -> tuple[str, str] | None:
        for up in sorted(node.upstream):
            upstream = self.record.steps[up]
            if upstream.status == rec.SKIPPED:
                return rec.SKIPPED, f"upstream step '{up}' was skipped"
            if upstream.status not in rec.FINISHED_OK:
                return rec.NOT_RUN, f"upstream step '{up}' {upstream.status}"
        if node.condition is not None:
            ref = node.condition
            value = self.record.steps[ref.step].outputs[ref.output]["value"]
            if value is not True:
                return rec.SKIPPED, f"{GATE_SKIPPED} (condition {ref.step}.{ref.output} is false)"
        return None

    # ------------------------------------------------------------------------------------------ io

    def _resolve_inputs(self, node: Node) -> tuple[dict[str, Any], dict[str, Any]]:
        """(inputs as recorded — values, or paths with digests; the same reduced to what the cache key needs)."""
        resolved: dict[str, Any] = {}
        key: dict[str, Any] = {}
        for name, spec_in in node.component.spec.inputs.items():
            binding = node.bindings.get(name)
            if binding is None:
                if spec_in.default is not None:
                    resolved[name] = {"value": spec_in.default}
                    key[name] = spec_in.default
                continue
            if isinstance(binding, OutputRef):
                upstream = self.record.steps[binding.step].outputs[binding.output]
                if "path" in upstream:
                    resolved[name] = {"path": upstream["path"], "sha256": upstream["sha256"]}
                    key[name] = {"sha256": upstream["sha256"]}
                else:
                    resolved[name] = {"value": upstream["value"]}
                    key[name] = upstream["value"]
                continue
            value = self.graph.resolve_literal(binding)
            if spec_in.type.is_artifact:
                path = (self.root / value) if not os.path.isabs(value) else Path(value)
                source = f"parameter '{binding.name}'" if isinstance(binding, ParamRef) else "literal"
                if spec_in.type == IOType.uri_file and not path.is_file():
                    raise StepFailed(f"input '{name}' ({source}): file not found: {value}")
                if spec_in.type.is_folder and not path.is_dir():
                    raise StepFailed(f"input '{name}' ({source}): folder not found: {value}")
                digest = path_sha256(path)
                resolved[name] = {"path": str(path), "sha256": digest}
                key[name] = {"sha256": digest}
            else:
                assert isinstance(binding, Literal | ParamRef)
                resolved[name] = {"value": value}
                key[name] = value
        return resolved, key

    def _open_stores(self, node: Node, step: rec.StepRecord) -> list[ResumeStore]:
        """The stable checkpoint folder of each `resume: true` output (tuneline.targets.local.resume)."""
        names = node.component.spec.resume_outputs
        if not names:
            return []
        assert step.cache_key is not None
        try:
            stores = open_stores(self.options.home, step.cache_key, names, fresh=self.options.no_cache)
        except StoreBusy as exc:
            raise StepFailed(str(exc)) from None
        step.resume = {s.output: {"store": str(s.path), "entries_at_start": s.entries_at_start} for s in stores}
        return stores

    def _prepare_outputs(self, node: Node, outputs_dir: Path) -> dict[str, str]:
        paths = {}
        for name, spec_out in node.component.spec.outputs.items():
            path = outputs_dir / name
            if spec_out.type.is_folder:
                path.mkdir(parents=True, exist_ok=True)
            paths[name] = str(path)
        return paths

    def _collect_outputs(self, node: Node, outputs_dir: Path) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        for name, spec_out in node.component.spec.outputs.items():
            path = outputs_dir / name
            if spec_out.type.is_artifact:
                if spec_out.type == IOType.uri_file and not path.is_file():
                    raise StepFailed(f"output '{name}' (uri_file) was not written")
                outputs[name] = {"type": spec_out.type.value, "path": str(path), "sha256": path_sha256(path)}
            else:
                outputs[name] = {"type": spec_out.type.value, "value": read_value_output(path, spec_out.type)}
        return outputs

    @staticmethod
    def _relative(out: dict[str, Any], outputs_dir: Path) -> dict[str, Any]:
        if "path" not in out:
            return out
        return {"type": out["type"], "file": "outputs/" + Path(out["path"]).relative_to(outputs_dir).as_posix(),
                "sha256": out["sha256"]}

    @staticmethod
    def _absolute(out: dict[str, Any], outputs_dir: Path) -> dict[str, Any]:
        if "file" not in out:
            return out
        return {"type": out["type"], "path": str(outputs_dir / out["file"].removeprefix("outputs/")),
                "sha256": out["sha256"]}

    # ------------------------------------------------------------------------------------------ process

    def _execute(self, node: Node, step: rec.StepRecord, step_dir: Path) -> None:
        log_path = step_dir / "log.txt"
        step.log = str(log_path)
        env = step_environment(self.root, self.options.home, self.record.run_id, node.name,
                               code_root=node.component.folder.resolve().parents[1])
        env["TUNELINE_STEP_SUMMARY"] = str(step_dir / SUMMARY)
        # what the compiled step would hand on, where the pipeline's `images:` names a registry: locally there is no
        # compile to warn about a Docker Hub default, so without one the step asks for its image instead
        if self.graph.pipeline.spec.images is not None:
            env.update(deploy_image_env(node.component.spec.deploys_image,
                                        resolve_images(self.graph.pipeline.spec.images)))
        timeout = node.step.timeout_seconds
        policy = node.component.spec.retry
        backoff = policy.backoff_seconds
        for number in range(1, node.retries + 2):
            attempt = rec.Attempt(number=number, started=time.time())
            step.attempts.append(attempt)
            step.status = rec.RUNNING
            self._changed()
            progress_path = step_dir / f"progress-{number}.jsonl"
            env[step_progress.ENV] = str(progress_path)
            step.progress = None
            with log_path.open("ab") as log:
                log.write(f"--- attempt {number}: {' '.join(step.command)}\n".encode())
                log.flush()
                attempt.exit_code, attempt.reason = self._wait(
                    subprocess.Popen(step.command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True), timeout,
                    lambda path=progress_path: self._read_progress(step, path))
            self._read_progress(step, progress_path)  # the last line, written just before the exit
            attempt.duration_s = time.time() - attempt.started
            if attempt.exit_code == 0:
                return
            if self.interrupted:
                raise StepFailed("interrupted (Ctrl-C); the step was stopped")
            # A timeout would expire again and a usage or data error (exit 2) would fail again: only the
            # exit codes the policy names (preemption, OOM kill, transient I/O by default) get another try.
            timed_out = attempt.reason.startswith("timed out")
            if number <= node.retries and (timed_out or not policy.retries_exit(attempt.exit_code)):
                tries = len(step.attempts)
                why = "a timeout" if timed_out else f"exit code {attempt.exit_code}"
                raise StepFailed(f"{attempt.reason}; not retried: {why} is not in retry.on {policy.on}"
                                 f" (after {tries} attempt{'s' if tries > 1 else ''})")
            if number <= node.retries:
                delay = backoff * (2 ** (number - 1))
                step.reason = f"attempt {number} {attempt.reason}; retrying in {delay:g}s"
                self._changed()
                deadline = time.time() + delay
                while time.time() < deadline and not self.interrupted:
                    time.sleep(min(POLL_SECONDS, delay))
                if self.interrupted:
                    raise StepFailed("interrupted (Ctrl-C) while waiting to retry")
        tries = len(step.attempts)
        raise StepFailed(f"{step.attempts[-1].reason} after {tries} attempt{'s' if tries > 1 else ''}")

    @staticmethod
    def _read_progress(step: rec.StepRecord, path: Path) -> None:
        step.progress = step_progress.read_latest(path, step.progress)

    def _wait(self, process: subprocess.Popen[bytes], timeout: float | None,
              poll: Callable[[], None] = lambda: None) -> tuple[int, str]:
        self.process = process
        started = time.time()
        try:
            while True:
                code = process.poll()
                if code is not None:
                    return code, (f"exited with code {code}" if code else "succeeded")
                if self.interrupted:
                    return self._stop(process), "interrupted"
                if timeout is not None and time.time() - started > timeout:
                    return self._stop(process), f"timed out after {timeout:g}s"
                poll()
                self.on_change(self.record)
                time.sleep(POLL_SECONDS)
        finally:
            self.process = None

    @staticmethod
    def _stop(process: subprocess.Popen[bytes]) -> int:
        """SIGTERM the step's process group (so it can checkpoint), then SIGKILL after the grace period."""
        try:
            os.killpg(process.pid, signal.SIGTERM)
            return process.wait(timeout=STOP_GRACE_SECONDS) or -signal.SIGTERM
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait() or -signal.SIGKILL
        except ProcessLookupError:
            return process.wait()

    def _lineage(self) -> list[dict[str, Any]]:
        lineage = []
        for edge in self.graph.edges():
            produced = self.record.steps[edge.source].outputs.get(edge.output, {})
            lineage.append({"from": f"{edge.source}.{edge.output}", "to": f"{edge.target}.{edge.input}",
                            "sha256": produced.get("sha256"), "value": produced.get("value")})
        return lineage

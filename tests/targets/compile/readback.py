"""Read the DAG back out of compiled KFP and Azure ML files, for parity and golden tests."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from tuneline.step.gate import GATE_INPUT
from tuneline.targets.kfp.compiler import FINGERPRINT_PREFIX

FIXTURES = Path(__file__).parent / "fixtures" / "project"
TOY = FIXTURES / "pipelines" / "toy.yaml"
TOY_MULTINODE = FIXTURES / "pipelines" / "toy-multinode.yaml"

Edge = tuple[str, str, str, str]  # (source step, output, target step, input or "when")


def kfp_documents(path: Path) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def kfp_dag(path: Path) -> dict:
    """{'steps', 'edges', 'params', 'conditions': {step: (source, output)}, 'param_inputs': {(step, input): param}}"""
    spec, _ = kfp_documents(path)
    importers = {}  # importer task -> pipeline parameter it imports
    display = {}    # KFP task key (sanitised: make-data) -> step name (its display name: make_data)
    steps, edges, conditions, param_inputs = set(), set(), {}, {}

    def resolve(source: dict, outer: dict):
        if "taskOutputArtifact" in source:
            ref = source["taskOutputArtifact"]
            if ref["producerTask"] in importers:
                return importers[ref["producerTask"]]
            return ref["producerTask"], ref["outputArtifactKey"]
        if "taskOutputParameter" in source:
            ref = source["taskOutputParameter"]
            return ref["producerTask"], ref["outputParameterKey"]
        if "componentInputParameter" in source:
            name = source["componentInputParameter"]
            return outer.get(name, name)
        if "componentInputArtifact" in source:
            return outer[source["componentInputArtifact"]]
        if "runtimeValue" in source:
            return ("literal", repr(source["runtimeValue"]["constant"]))
        raise ValueError(source)

    def walk(tasks: dict, outer: dict) -> None:
        for name, task in tasks.items():
            if task["componentRef"]["name"] == "comp-importer" or task["componentRef"]["name"].startswith(
                    "comp-importer"):
                importers[name] = resolve(task["inputs"]["parameters"]["uri"], outer)
        # A fingerprint task only keys the cache of the steps reading imported data (tuneline.step.fingerprint).
        fingerprints = {n for n, t in tasks.items() if t["componentRef"]["name"].startswith("comp-fingerprint")}
        for name, task in tasks.items():
            if name in importers or name in fingerprints:
                continue
            steps.add(name)
            display[name] = task["taskInfo"]["name"]
            for kind in ("artifacts", "parameters"):
                for input_name, source in task.get("inputs", {}).get(kind, {}).items():
                    if input_name.startswith(FINGERPRINT_PREFIX):
                        continue
                    origin = resolve(source, outer)
                    if input_name == GATE_INPUT:  # `when:` is the gate input the step's wrapper reads
                        conditions[name] = origin
                    elif isinstance(origin, tuple) and origin[0] != "literal":
                        edges.add((origin[0], origin[1], name, input_name))
                    elif isinstance(origin, str):
                        param_inputs[(name, input_name)] = origin

    walk(spec["root"]["dag"]["tasks"], {})
    for step, (source, output) in conditions.items():
        edges.add((source, output, step, "when"))
    params = set(spec["root"].get("inputDefinitions", {}).get("parameters", {}))
    d = display.get
    return {"steps": {d(s) for s in steps}, "edges": {(d(a), o, d(b), i) for a, o, b, i in edges}, "params": params,
            "conditions": {d(s): (d(a), o) for s, (a, o) in conditions.items()},
            "param_inputs": {(d(s), i): p for (s, i), p in param_inputs.items()}}


_PARENT = re.compile(r"^\$\{\{parent\.(inputs|jobs)\.([a-zA-Z0-9_]+)(?:\.outputs\.([a-zA-Z0-9_]+))?\}\}$")


def azureml_dag(job_file: Path) -> dict:
    job = yaml.safe_load(job_file.read_text())
    steps, edges, conditions, param_inputs = set(), set(), {}, {}
    for name, node in job["jobs"].items():
        steps.add(name)
        for input_name, value in (node.get("inputs") or {}).items():
            match = _PARENT.match(value) if isinstance(value, str) else None
            if match and input_name == GATE_INPUT:
                conditions[name] = (match.group(2), match.group(3))
                edges.add((match.group(2), match.group(3), name, "when"))
            elif match and match.group(1) == "jobs":
                edges.add((match.group(2), match.group(3), name, input_name))
            elif match:
                param_inputs[(name, input_name)] = match.group(2)
    return {"steps": steps, "edges": edges, "params": set(job.get("inputs") or {}), "conditions": conditions,
            "param_inputs": param_inputs}


def variant(tmp_path: Path, old: str, new: str, source: Path = TOY) -> Path:
    """A copy of the fixture project whose pipeline has `old` replaced by `new`."""
    project = tmp_path / "project"
    shutil.copytree(FIXTURES, project)
    text = source.read_text()
    assert old in text, old
    path = project / "pipelines" / source.name
    path.write_text(text.replace(old, new))
    return path

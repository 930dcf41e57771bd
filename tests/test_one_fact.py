"""One fact, one place: each name several modules share is spelled once, in the module that owns it.

Strings are read from the code's syntax tree (docstrings left out, comments never in it), so prose may still
name a fact while code that writes the value again fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tuneline import settings
from tuneline.ml.models import SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[1]
CODE = ("tuneline", "components", "bench")

# value -> the modules allowed to write it, and why each one is.
OWNERS: dict[str, dict[str, str]] = {
    settings.TELEMETRY_VAR: {"tuneline/settings.py": "owner"},
    settings.SPOT_LABEL: {"tuneline/settings.py": "owner"},
    settings.CHECKPOINT_MOUNT: {"tuneline/settings.py": "owner"},
    settings.REQUEST_LOG_FILE: {"tuneline/settings.py": "owner"},
    SUMMARY_FILE: {
        "tuneline/ml/models.py": "owner",
        # Logged as a code-based MLflow model and loaded where tuneline may not be installed: it imports only
        # mlflow, so it keeps its own spelling.
        "components/register/pyfunc_model.py": "self-contained pyfunc",
    },
}
EXACT_OWNERS: dict[str, dict[str, str]] = {
    settings.REQUEST_LOG_ENV: {"tuneline/settings.py": "owner"},
    settings.DEFAULT_GATE_METRIC: {
        "tuneline/settings.py": "owner",
        # the names of the metrics it computes, not a default
        "tuneline/ml/metrics.py": "metric table",
    },
}


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}


def string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs]


def writers(value: str, exact: bool) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for folder in CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = [line for line, text in string_constants(path) if (text == value if exact else value in text)]
            if lines:
                found[path.relative_to(ROOT).as_posix()] = lines
    return found


@pytest.mark.parametrize("value,owners,exact", [(v, o, False) for v, o in OWNERS.items()]
                         + [(v, o, True) for v, o in EXACT_OWNERS.items()])
def test_shared_name_is_written_once(value: str, owners: dict[str, str], exact: bool) -> None:
    found = writers(value, exact)
    assert "tuneline/settings.py" in found or set(owners) & set(found), f"{value!r}: its owner no longer writes it"
    strays = {path: lines for path, lines in found.items() if path not in owners}
    assert not strays, f"{value!r} restated outside {sorted(owners)}: {strays}; import the constant instead"


def test_the_scan_sees_a_restated_name(tmp_path: Path) -> None:
    # The check above is only as good as the scan: a literal in code counts, the same words in a docstring do not.
    module = tmp_path / "m.py"
    module.write_text(f'"""Reads {SUMMARY_FILE}."""\nPATH = "out/{SUMMARY_FILE}"\n')
    assert string_constants(module) == [(2, f"out/{SUMMARY_FILE}")]


def _spot_tolerations(doc: object) -> list[dict]:
    if isinstance(doc, dict):
        here = [doc] if doc.get("key") == settings.SPOT_LABEL else []
        return here + [t for v in doc.values() for t in _spot_tolerations(v)]
    if isinstance(doc, list):
        return [t for v in doc for t in _spot_tolerations(v)]
    return []


def test_spot_names_match_the_manifests() -> None:
    # The manifests under k8s/ stay plain YAML; what they say about spot nodes must be what the code writes.
    found = []
    for path in sorted((ROOT / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found += [(path.name, t.get("value"), t.get("effect")) for t in _spot_tolerations(doc)]
    assert found, "no manifest under k8s/ tolerates the spot taint any more"
    label, rest = settings.SPOT_TAINT.split("=")
    value, effect = rest.split(":")
    assert (label, value) == (settings.SPOT_LABEL, settings.SPOT_VALUE)
    assert {(v, e) for _, v, e in found} == {(value, effect)}, found


def test_default_gate_metric_is_the_components_own() -> None:
    # The components declare their gate metric's default in component.yaml; where no component is at hand
    # (a trigger's drift check, a promotion rule) the core falls back to the same metric.
    from tuneline.spec.load import load_component

    declared = {name: load_component(ROOT / "components" / name).spec.inputs["gate_metric"].default
                for name in ("evaluate", "register")}
    assert set(declared.values()) == {settings.DEFAULT_GATE_METRIC}, declared

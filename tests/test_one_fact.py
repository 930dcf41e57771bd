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
from tuneline.llm.ml.models import SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[1]
CODE = ("tuneline", "components", "bench")

# value -> the modules allowed to write it, and why each one is.
OWNERS: dict[str, dict[str, str]] = {
    settings.TELEMETRY_VAR: {"tuneline/settings.py": "owner"},
    settings.SPOT_LABEL: {"tuneline/settings.py": "owner"},
    settings.CHECKPOINT_MOUNT: {"tuneline/settings.py": "owner"},
    settings.REQUEST_LOG_FILE: {"tuneline/settings.py": "owner"},
    SUMMARY_FILE: {
        "tuneline/llm/ml/models.py": "owner",
        # Logged as a code-based MLflow model and loaded where tuneline may not be installed: it imports only
        # mlflow, so it keeps its own spelling.
        "components/register/pyfunc_model.py": "self-contained pyfunc",
    },
}
EXACT_OWNERS: dict[str, dict[str, str]] = {
    settings.REQUEST_LOG_ENV: {"tuneline/settings.py": "owner"},
    settings.DEFAULT_GATE_METRIC: {
        "tuneline/settings.py": "owner",
        # the names of the metrics evaluations produce and gates may name, and the table that computes them: not a
        # default
        "tuneline/spec/metrics.py": "metric vocabulary",
        "tuneline/llm/ml/metrics.py": "metric table",
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


# ------------------------------------------------------------------------- component defaults
# A component input's default is declared in its component.yaml and nowhere else: the program gets it through
# the typed args generated from that file (`tuneline.step.args`), library callers through the parsed spec.
# A Python module in the component's folder that binds the input's name to the same literal restates it: a
# dataclass field or assignment (`seed: str = "tuneline"`, `NEAR_DUP_THRESHOLD = 0.85`), a parameter default
# (`def run(seed="tuneline")`), a keyword (`Budget(max_chars=20_000)`), a dict entry or an argparse default.
# Only a literal equal to the declared default counts, so a name reused with another value, or a value reused
# under another name, is not flagged.

COMPONENTS = sorted(p.parent for p in (ROOT / "components").glob("*/component.yaml"))


def _literal(node: ast.AST | None) -> tuple[bool, object]:
    if node is None:
        return False, None
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _same(value: object, default: object) -> bool:
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default) and value == default
    if isinstance(value, int | float) and isinstance(default, int | float):
        return float(value) == float(default)
    return type(value) is type(default) and value == default


def _names_input(name: str, inp: str) -> bool:
    """`name` spells input `inp`: the same words, alone or inside a longer name (DEFAULT_SEED, --near-dup)."""
    words, want = name.lower().lstrip("-").replace("-", "_").split("_"), inp.split("_")
    return any(words[i:i + len(want)] == want for i in range(len(words) - len(want) + 1))


def _nested_keywords(value: ast.AST) -> list[tuple[int, str, ast.AST]]:
    """Keywords of the calls inside a default (`field(default_factory=lambda: Budget(max_chars=20_000))`)."""
    return [(k.value.lineno, k.arg, k.value) for call in ast.walk(value) if isinstance(call, ast.Call)
            for k in call.keywords if k.arg not in (None, "default", "default_factory")]


def _bindings(tree: ast.AST) -> list[tuple[int, str, ast.AST]]:
    """(line, name, value) of every default or constant a module declares. A keyword in an ordinary call is a
    use, not a declaration (`collate(batch, packing=False)` says what that call does), so only the calls inside
    a default count."""
    out: list[tuple[int, str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
                out += _nested_keywords(value)
                value = next((k.value for k in value.keywords if k.arg == "default"), None)
            if value is not None:
                out.append((node.lineno, node.target.id, value))
        elif isinstance(node, ast.Assign):
            out += [(node.lineno, t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                out += [(default.lineno, arg.arg, default), *_nested_keywords(default)]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flag = next((a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                         and a.value.startswith("--")), None)
            out += [(node.lineno, flag, k.value) for k in node.keywords if k.arg == "default" and flag]
    return out


def restated_defaults(folder: Path, defaults: dict[str, object]) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, name, node in _bindings(tree):
            ok, value = _literal(node)
            for inp, default in defaults.items():
                if ok and _names_input(name, inp) and _same(value, default):
                    found.append(f"{path.relative_to(folder.parent)}:{line}: {name} = {value!r} restates input "
                                 f"{inp!r} of {folder.name}/component.yaml")
    return found


def component_defaults(folder: Path) -> dict[str, object]:
    from tuneline.spec.load import load_component

    spec = load_component(folder).spec
    return {name: inp.default for name, inp in spec.inputs.items() if inp.default is not None}


@pytest.mark.parametrize("folder", COMPONENTS, ids=[p.name for p in COMPONENTS])
def test_no_component_default_restated_in_code(folder: Path) -> None:
    defaults = component_defaults(folder)
    assert not restated_defaults(folder, defaults), "\n".join(restated_defaults(folder, defaults))


def test_a_restated_default_is_found(tmp_path: Path) -> None:
    # Each form a restatement takes is caught, and nothing else is: other values, other names, prose.
    (tmp_path / "m.py").write_text('''"""seed = "tuneline" in prose is fine."""
import argparse
from dataclasses import dataclass, field

NEAR_DUP_THRESHOLD = 0.85
OTHER = 0.85


@dataclass
class Config:
    seed: str = "tuneline"
    num_perm: int = field(default=128)
    near_dup: bool = 1


    budget: Budget = field(default_factory=lambda: Budget(max_chars=20_000))


def run(workers=0, batch_size=64, redact_pii=True):
    argparse.ArgumentParser().add_argument("--max-tokens", default=4096)
    return collate(batch, near_dup=True), {"seed": "tuneline"}
''')
    defaults = {"near_dup_threshold": 0.85, "seed": "tuneline", "num_perm": 128, "near_dup": True, "workers": 0,
                "batch_size": 512, "max_tokens": 4096, "max_chars": 20000, "redact_pii": True}
    found = {line.split(": ", 1)[1].split(" restates")[0] for line in restated_defaults(tmp_path, defaults)}
    assert found == {"NEAR_DUP_THRESHOLD = 0.85", "seed = 'tuneline'", "num_perm = 128", "workers = 0",
                     "--max-tokens = 4096", "max_chars = 20000", "redact_pii = True"}

"""No function in the package, the components or the benchmarks runs over 80 lines.

A function's length is counted from its `def` line to its last line (decorators excluded), as `ast` reports
them; a nested function counts towards its enclosing function and is also measured on its own.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("tuneline", "components", "bench")
LIMIT = 80

# Functions still over the limit, with the length they may not exceed while they wait to be split. A new
# function over the limit fails, and so does one of these growing or shrinking under the limit (then drop it).
# None is left: the proxy's routes became `_Handlers` methods and the rollout's phases `_Rollout` methods.
ALLOWED: dict[str, int] = {}


def lengths(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, def line, length) of every function in one file."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                found.append((name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return found


def measured() -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for name, line, length in lengths(path):
                out[f"{rel}::{name}"] = (f"{rel}:{line}", length)
    return out


def test_the_measure_counts_def_to_last_line(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("@decorated\ndef outer():\n    def inner():\n        pass\n    return inner\n\n\n"
                   "class C:\n    async def method(self):\n        return 1\n")
    assert lengths(src) == [("outer", 2, 4), ("outer.inner", 3, 2), ("C.method", 9, 2)]


def test_no_function_runs_over_the_limit():
    found = measured()
    over = sorted(f"{where} {key.split('::')[1]} is {length} lines"
                  for key, (where, length) in found.items() if length > LIMIT and key not in ALLOWED)
    assert not over, f"functions over {LIMIT} lines (split them):\n" + "\n".join(over)


def test_the_allowances_are_current():
    found = measured()
    stale = sorted(f"{key}: allowed {cap}, now {found[key][1] if key in found else 'gone'}"
                   for key, cap in ALLOWED.items() if key not in found or not LIMIT < found[key][1] <= cap)
    assert not stale, "update ALLOWED in this file:\n" + "\n".join(stale)

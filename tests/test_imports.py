"""The package's import graph, function-level imports included: no cycles, and no import of the components."""

from pathlib import Path

from tuneline.runner.imports import imported_modules, module_name

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tuneline"


def graph() -> dict[str, set[str]]:
    modules = {module_name(p, REPO): p for p in PACKAGE.rglob("*.py")}
    # Edges between modules as written (a package's __init__ runs too, but none of ours holds logic), so a
    # cycle names the imports to change.
    return {name: {m for m in imported_modules(path, REPO) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    return next((c for n in sorted(edges) if n not in state and (c := visit(n))), None)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_counting_function_level_imports():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_package_does_not_import_the_components():
    offenders = {module_name(p, REPO): sorted(m for m in imported_modules(p, REPO) if m.split(".")[0] == "components")
                 for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}

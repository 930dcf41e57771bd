"""The package's import graph, function-level imports included: no module cycles, no import of the components, and
no import between two parts of the package that the layer table does not allow."""

from pathlib import Path

from tuneline.step.imports import imported_modules, module_name

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


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_edges(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(package_of(a), package_of(b)) for a, targets in edges.items() for b in targets
            if package_of(a) != package_of(b) and package_of(b) != "tuneline"}


# Which top-level part of tuneline imports which, function-level imports counted (the layers are the tree in the
# README, "How the repository is laid out"). It is a ratchet: an import between two parts that no line here allows
# fails, so the shape cannot regress unseen; an edge a change removes is deleted here.
ALLOWED_PACKAGE_IMPORTS = {
    "__main__": {"cli"},
    "cli": {"cluster", "graph", "llm", "ops", "serving", "settings", "spec", "step", "targets"},
    "cluster": {"graph", "settings", "spec", "targets"},
    "graph": {"spec"},
    "llm": {"settings", "spec", "step"},
    "ops": {"llm", "serving", "settings", "spec", "targets"},
    "serving": {"llm", "settings"},
    "spec": {"settings"},
    "step": {"spec"},
    "targets": {"graph", "settings", "spec", "step"},
}
# The bottom layer: imported by others, importing no other part of tuneline.
LEAVES = {"settings"}


def test_no_part_of_the_package_imports_another_that_the_table_does_not_allow():
    found = package_edges(graph())
    allowed = {(a, b) for a, targets in ALLOWED_PACKAGE_IMPORTS.items() for b in targets}
    new = sorted(found - allowed)
    assert not new, "imports between parts of tuneline that the layer table does not allow: " + ", ".join(
        f"{a} -> {b}" for a, b in new)
    gone = sorted(allowed - found)
    assert not gone, "allowed imports that no longer exist (delete them from the table): " + ", ".join(
        f"{a} -> {b}" for a, b in gone)
    assert not {a for a, _ in found} & LEAVES


def test_the_layer_table_fails_on_an_upward_import():
    edges = {"tuneline.settings": {"tuneline.serving.proxy"}, "tuneline.serving.proxy": set()}
    assert package_edges(edges) == {("settings", "serving")}
    assert ("settings", "serving") not in {(a, b) for a, t in ALLOWED_PACKAGE_IMPORTS.items() for b in t}


def test_the_step_contract_sits_on_the_pipeline_language_alone():
    """Component programs, the local runner and both compilers import the step contract; if it imported any of
    them back, the targets and the programs they run would be one tangle again."""
    assert ALLOWED_PACKAGE_IMPORTS["step"] <= {"spec", "settings"}


def test_nothing_but_the_command_line_reaches_up_into_operations_and_the_cluster_tools():
    """The engine, the targets, the LLM library and serving sit below operations (triggers, cost, feedback export)
    and the cluster tooling; only the command line (and the cluster tooling, into operations) imports them."""
    importers = {a for a, targets in ALLOWED_PACKAGE_IMPORTS.items() if targets & {"ops", "cluster"}}
    assert importers <= {"cli", "cluster"}


def test_the_serving_layer_does_not_reach_up_into_operations():
    """The endpoint writes its request log and ratings itself (tuneline.serving.requestlog); the export and the
    triggers that read them are operations, above it."""
    assert "ops" not in ALLOWED_PACKAGE_IMPORTS["serving"]


def strongly_connected(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The groups of parts that all reach each other (more than one part each)."""
    nodes = {n for edge in edges for n in edge}
    onward = {n: {b for a, b in edges if a == n} for n in nodes}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in onward[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reached = {n: reach(n) for n in sorted(nodes)}
    groups = {frozenset({m for m in nodes if m in reached[n] and n in reached[m]} | {n}) for n in nodes}
    return sorted(sorted(g) for g in groups if len(g) > 1)


def test_the_group_finder_finds_parts_that_reach_each_other():
    assert strongly_connected({("a", "b"), ("b", "a"), ("b", "c")}) == [["a", "b"]]
    assert strongly_connected({("a", "b"), ("b", "c")}) == []


def test_no_two_parts_of_the_package_reach_each_other():
    """Zero package-level cycles, function-level imports counted: each part can be read, tested and replaced
    with only the parts below it."""
    assert strongly_connected(package_edges(graph())) == []

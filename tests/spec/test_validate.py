"""`tuneline validate`: every malformed case exits 2 with a `file:line:col: message` line and no traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GOOD = (Path(__file__).parents[1] / "fixtures/toy/pipelines/toy.yaml").read_text()


def write(toy: Path, text: str) -> Path:
    path = toy / "pipelines" / "case.yaml"
    path.write_text(text)
    return path


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    if needle.endswith("$"):  # the whole line, not a substring
        lines = [i for i, line in enumerate(text.splitlines(), start=1) if line.rstrip() == needle[:-1]]
    else:
        lines = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return lines[occurrence - 1]


def assert_problem(cli, path: Path, line: int, pattern: str) -> None:
    code, out, err = cli("validate", str(path))
    assert code == 2, out + err
    assert "Traceback" not in err
    shown = path.relative_to(Path.cwd())  # messages show paths as the user would type them
    wanted = re.compile(rf"^{re.escape(str(shown))}:{line}:\d+: .*{pattern}", re.M)
    assert wanted.search(err), f"no line {line} matching {pattern!r} in:\n{err}"


def test_the_toy_pipeline_is_valid(toy, cli):
    code, out, err = cli("validate", "pipelines/toy.yaml", "components/gen/component.yaml", "components/check")
    assert (code, err) == (0, "")
    assert "3 files valid" in out


@pytest.mark.parametrize(
    ("old", "new", "needle", "pattern"),
    [
        ("steps:", "stpes:", "stpes:", r"unknown key 'stpes'; did you mean 'steps'\?"),
        ("    component: components/check", "    component: components/check\n    retires: 2", "retires",
         r"unknown key 'retires'; did you mean 'retries'\?"),
        ('{count: "${{params.count}}"}', '{count: "${{params.count}}", cuont: 3}', "cuont",
         r"has no input 'cuont'; did you mean 'count'\?"),
        ("      report: ${{steps.check.outputs.report}}\n", "", "    inputs:$",
         r"misses required input 'report' \(uri_file\)"),
        ('{count: "${{params.count}}"}', "{count: many}", "count: many", r"count: expected an integer, got str"),
        ("size: ${{steps.check.outputs.size}}", "size: ${{steps.gen.outputs.data}}", "size: ${{steps.gen",
         r"output 'gen.data' is uri_folder, input expects number"),
        ("report: ${{steps.check.outputs.report}}", "report: ${{steps.gen.outputs.data}}", "report: ${{steps.gen",
         r"output 'gen.data' is uri_folder, input expects uri_file"),
        ('{count: "${{params.count}}"}', "{count: 3, flavour: weird}", "flavour: weird",
         r"'weird' is not one of \['plain', 'fancy'\]"),
        ('{count: "${{params.count}}"}', "{count: 0}", "{count: 0}", r"0 is below the minimum 1"),
        ('{count: "${{params.count}}"}', "{count: 5000}", "{count: 5000}", r"5000 is above the maximum 1000"),
        ("${{steps.check.outputs.size}}", "${{steps.chek.outputs.size}}", "steps.chek",
         r"unknown step 'chek'; did you mean 'check'\?"),
        ("${{steps.check.outputs.size}}", "${{steps.check.outputs.sise}}", "outputs.sise",
         r"step 'check' \(check\) has no output 'sise'; did you mean 'size'\?"),
        ('"${{params.count}}"', '"${{params.cont}}"', "params.cont",
         r"unknown parameter 'cont'; did you mean 'count'\?"),
        ("when: ${{steps.check.outputs.passed}}", "when: ${{steps.check.outputs.size}}", "when:",
         r"when: output 'check.size' is integer, not boolean"),
        ("when: ${{steps.check.outputs.passed}}", "when: ${{params.count}}", "when:",
         r"when: must reference a boolean step output"),
        ('cron: "0 3 * * 1"', 'cron: "61 3 * * 1"', "cron:", r"cron minute: 61 is outside 0-59"),
        ('cron: "0 3 * * 1"', 'cron: "0 3 * *"', "cron:", r"needs 5 fields"),
        ("timezone: UTC", "timezone: Mars/Olympus", "timezone", r"unknown timezone 'Mars/Olympus'"),
        ("compute: cpu", "compute: gpu", "compute: gpu", r"unknown compute profile 'gpu'; did you mean 'cpu'\?"),
        # /dev/shm is memory-backed and charged to the container's memory limit: as large as it, it OOM-kills
        ('memory: 1Gi}', 'memory: 1Gi, shm: 1024Mi}', "shm: 1024Mi",
         r"shm 1024Mi is not below the memory limit 1Gi of step 'gen' \(its `memory`\)"),
        ("    component: components/gen", "    component: components/gne", "components/gne",
         r"no component.yaml in 'components/gne'"),
        ("new_data_fraction: 0.15", "new_data_fraction: -1", "new_data_fraction",
         r"triggers.new_data_fraction: Input should be greater than 0"),
        ("timeout", "x", "    component: components/check",  # no-op replacement: then add a bad timeout below
         r"never"),
    ][:-1],
)
def test_malformed_pipeline(toy, cli, old, new, needle, pattern):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    assert_problem(cli, write(toy, text), line_of(text, needle), pattern)


def test_shared_memory_at_the_components_own_memory_limit_is_refused(toy, cli):
    """A profile without `memory` leaves the component's resources.memory as the container's limit."""
    component = toy / "components" / "gen" / "component.yaml"
    component.write_text(component.read_text() + "resources: {memory: 2Gi}\n")
    text = GOOD.replace('kubeflow: {cpu: "1", memory: 1Gi}', 'kubeflow: {cpu: "1", shm: 2Gi}')
    assert_problem(cli, write(toy, text), line_of(text, "shm: 2Gi"),
                   r"shm 2Gi is not below the memory limit 2Gi of step 'gen' \(component gen's resources.memory\)")
    text = GOOD.replace('kubeflow: {cpu: "1", memory: 1Gi}', 'kubeflow: {cpu: "1", shm: 1Gi}')
    code, out, err = cli("validate", str(write(toy, text)))
    assert code == 0, out + err


def test_bad_timeout_and_literal_reference(toy, cli):
    text = GOOD.replace("    component: components/check", "    component: components/check\n    timeout: soon")
    assert_problem(cli, write(toy, text), line_of(text, "timeout: soon"), r"'soon' is not a duration")
    text = GOOD.replace('"${{params.count}}"', '"n=${{params.count}}"')
    assert_problem(cli, write(toy, text), line_of(text, "n=${{"), r"a reference must be the whole value")


def test_cycle_is_named(toy, cli):
    text = GOOD.replace("    component: components/gen", "    component: components/gen\n"
                                                            "    when: ${{steps.check.outputs.passed}}")
    code, out, err = cli("validate", str(write(toy, text)))
    assert code == 2
    assert re.search(r"case.yaml:\d+:\d+: cycle between steps: (gen -> check -> gen|check -> gen -> check)", err)


def test_duplicate_key_names_both_lines(toy, cli):
    text = GOOD.replace("  threshold: {type: number, default: 4}",
                        "  threshold: {type: number, default: 4}\n  count: {type: integer, default: 6}")
    assert_problem(cli, write(toy, text), line_of(text, "count: {type: integer", 2),
                   rf"duplicate key 'count' \(first defined on line {line_of(text, 'count: {type: integer')}\)")


def test_several_problems_reported_together(toy, cli):
    text = GOOD.replace("stpes", "steps").replace('"${{params.count}}"', "many").replace("61", "0")
    text = text.replace('cron: "0 3 * * 1"', 'cron: "0 25 * * 1"')
    code, _, err = cli("validate", str(write(toy, text)))
    assert code == 2
    assert len(err.strip().splitlines()) >= 1
    assert "hour: 25 is outside 0-23" in err


def test_component_errors_point_into_the_component_file(toy, cli):
    path = toy / "components/gen/component.yaml"
    text = path.read_text().replace("count: {type: integer, min: 1, max: 1000, default: 3}",
                                    "count: {type: integer, min: 1, max: 1000, default: lots}")
    path.write_text(text)
    code, _, err = cli("validate", "pipelines/toy.yaml")
    assert code == 2
    assert re.search(rf"component.yaml:{line_of(text, 'default: lots')}:\d+: .*expected an integer", err)
    path.write_text(text.replace("default: lots", "default: 3").replace("--out ${{outputs.data}}",
                                                                       "--out ${{outputs.dat}}"))
    code, _, err = cli("validate", "pipelines/toy.yaml")
    assert re.search(r"component.yaml:\d+:\d+: command uses unknown output 'dat'; did you mean 'data'\?", err)


def test_set_override_is_typed(toy, cli):
    code, _, err = cli("run", "pipelines/toy.yaml", "--set", "count=many")
    assert code == 2 and "--set count: 'many' is not an integer" in err
    code, _, err = cli("run", "pipelines/toy.yaml", "--set", "count=0")
    assert code == 2 and "gen.count: 0 is below the minimum 1" in err
    code, _, err = cli("run", "pipelines/toy.yaml", "--set", "cuont=3")
    assert code == 2 and "did you mean 'count'?" in err

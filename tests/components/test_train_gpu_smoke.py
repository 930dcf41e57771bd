"""`make gpu-smoke`'s script in its dry mode: every stage on a tiny model, on CPU, with MLflow not installed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.heavy
def test_gpu_smoke_dry_run_passes_every_stage_without_mlflow(tmp_path):
    # The GPU machines it is meant for have no MLflow: an mlflow package that cannot be imported stands for that.
    blocked = tmp_path / "no-mlflow" / "mlflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('mlflow is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{blocked.parent}", "TMPDIR": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, "bench/gpu_smoke.py", "--dry-run", "--keep-work", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    stages = {row["stage"]: row for row in result["stages"]}
    assert list(stages) == ["build", "lora", "full", "mfu", "fsdp", "resume"]
    assert all(row["status"] == "ok" for row in stages.values())
    assert stages["lora"]["steps"] == 12 and stages["lora"]["precision"] == "no"  # CPU: fp32
    assert "killed at step" in stages["resume"]["note"] and stages["resume"]["steps"] == 12
    assert "stage    status" in done.stdout  # the one table
    work = next(tmp_path.glob("gpu-smoke-*"))
    assert "this run is not tracked: MLflow is not installed" in (work / "lora.log").read_text()


def test_gpu_smoke_names_missing_packages_before_doing_anything(monkeypatch, capsys, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_smoke
    finally:
        sys.path.remove(str(ROOT / "bench"))
    monkeypatch.setattr(gpu_smoke, "REQUIRED", [*gpu_smoke.REQUIRED, "no_such_package_here"])
    assert gpu_smoke.main(["--dry-run", "--out", str(tmp_path / "x.json")]) == 2
    assert "missing Python packages: no_such_package_here" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def _requirement_names(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {line.split("==")[0].lower().replace("_", "-") for line in lines if line}


def test_every_package_the_script_needs_is_in_the_gpu_stack_or_carried():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_smoke
    finally:
        sys.path.remove(str(ROOT / "bench"))
    distributions = {"yaml": "pyyaml"}  # import name -> the distribution that provides it, where they differ
    stack, carried = _requirement_names(ROOT / "bench" / "gpu_stack.txt"), _requirement_names(
        ROOT / "bench" / "gpu_carry.txt")
    assert not stack & carried, "a package is both preinstalled and carried"
    missing = [name for name in gpu_smoke.REQUIRED if distributions.get(name, name) not in stack | carried]
    assert not missing, f"needed by bench/gpu_smoke.py but neither in gpu_stack.txt nor gpu_carry.txt: {missing}"


def test_carried_wheels_are_locked_versions():
    lock = _requirement_names(ROOT / "environments" / "constraints.txt")
    assert _requirement_names(ROOT / "bench" / "gpu_carry.txt") <= lock
    assert "==" not in (ROOT / "bench" / "gpu_carry.txt").read_text(), "versions come from the lock, not here"


def test_make_gpu_smoke_keeps_a_pythonpath_holding_carried_wheels():
    # The carried wheels are installed with pip --target and found through PYTHONPATH: a recipe that set
    # PYTHONPATH to the checkout alone would hide them, and the run would stop at "missing Python packages".
    for target in ("gpu-smoke", "gpu-smoke-dry"):
        plan = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": "/carried/site"}, check=True).stdout
        assert f"PYTHONPATH={ROOT}:/carried/site " in plan, plan

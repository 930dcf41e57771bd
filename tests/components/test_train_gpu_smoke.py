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

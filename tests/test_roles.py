"""The core finds steps by their declared role: renaming the demo's train component and step changes nothing."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def renamed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of the project with components/train renamed to components/sft, and its step to sft."""
    root = tmp_path_factory.mktemp("renamed")
    for part in ("components", "pipelines", "config", "data", "environments"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "components" / "train").rename(root / "components" / "sft")
    for path in (root / "components" / "sft").rglob("*"):
        if path.suffix in (".py", ".yaml"):
            path.write_text(path.read_text().replace("components.train", "components.sft"))
    spec = root / "components" / "sft" / "component.yaml"
    spec.write_text(spec.read_text().replace("\nname: train\n", "\nname: sft\n"))
    pipeline = root / "pipelines" / "finetune.yaml"
    text = pipeline.read_text().replace("components/train", "components/sft").replace("steps.train.", "steps.sft.")
    pipeline.write_text(re.sub(r"(?m)^  train:$", "  sft:", text))
    assert "train" not in re.findall(r"(?m)^  (\w+):$", pipeline.read_text())
    return root


def tuneline(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNELINE_HOME": str(root / ".tuneline"), "PYTHONPATH": f"{root}{os.pathsep}{REPO}",
           "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the scratch project's own SQLite store under TUNELINE_HOME
    return subprocess.run([sys.executable, "-m", "tuneline", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_validate_cost_and_compile_work_after_the_rename(renamed: Path):
    checked = tuneline(renamed, "validate", "pipelines/finetune.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    cost = tuneline(renamed, "cost", "pipelines/finetune.yaml", "--target", "aks", "--tokenizer", "estimate")
    assert cost.returncode == 0, cost.stdout + cost.stderr
    money = re.search(r"Standard_NC24ads_A100_v4\s+1\s+[\d,]+\s+\S+\s+([\d.]+)\s+([\d.]+)", cost.stdout)
    assert money and float(money.group(2)) > 0, cost.stdout
    compiled = tuneline(renamed, "compile", "pipelines/finetune.yaml", "--target", "all", "--out", "build")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    assert (renamed / "build" / "finetune" / "azureml" / "components" / "sft.yml").is_file()


@pytest.mark.slow
def test_run_and_trigger_check_work_after_the_rename(renamed: Path):
    (renamed / "pipelines" / "short.yaml").write_text("""\
name: short
params:
  dataset: {type: uri_file, default: data/sample/tickets.jsonl}
steps:
  prepare:
    component: components/prepare
    inputs: {raw: "${{params.dataset}}"}
  sft:
    component: components/sft
    inputs: {train: "${{steps.prepare.outputs.train}}", base_model: tiny-random-llama, max_steps: 1,
             per_device_batch: 2, save_steps: 0, max_seq_len: 768}
triggers: {new_data_fraction: 0.15}
""")
    run = tuneline(renamed, "run", "pipelines/short.yaml", timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"train step: \d+s measured vs \d+s estimated", run.stdout), run.stdout
    check = tuneline(renamed, "trigger", "check", "pipelines/short.yaml", "--no-record")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "retrain: no" in check.stdout

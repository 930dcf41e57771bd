"""The preference step on a multi-node profile compiles as train's does: the compilers know no step by name, so a
profile with nodes and processes per node turns any step into a TrainJob (KFP) or a PyTorch distribution (Azure
ML), and the step's own `distribution` input reaches each process's command line."""

import json
import shlex
from pathlib import Path

import pytest
import yaml
from azure.ai.ml import load_job
from readback import kfp_documents

from tuneline.targets.build import compile_file
from tuneline.targets.kfp.options import KfpOptions
from tuneline.targets.options import CompileOptions

PIPELINE = Path(__file__).resolve().parents[3] / "pipelines" / "preference.yaml"
PROFILE = """  gpu_multi:
    kubeflow: {gpus: 4, nodes: 2, processes_per_node: 4, accelerator: nvidia-a100, cpu: "32", memory: 320Gi, shm: 64Gi}
    azureml: {cluster: gpu-multi, instance_type: Standard_ND96asr_v4, nodes: 2, processes_per_node: 4, shm_size: 64g}
steps:
"""


@pytest.fixture
def compiled(tmp_path):
    text = PIPELINE.read_text()
    step = "  preference:\n    component: components/preference\n    compute: gpu\n"
    assert step in text and "\nsteps:\n" in text
    text = text.replace("\nsteps:\n", "\n" + PROFILE, 1).replace(
        step, step.replace("compute: gpu", "compute: gpu_multi") + "    # sharded as train would be\n", 1)
    text = text.replace("      sft_model: ${{steps.train.outputs.model}}\n",
                        "      sft_model: ${{steps.train.outputs.model}}\n      distribution: fsdp\n", 1)
    # A project of its own whose components, data and environments are this repository's.
    project = tmp_path / "project"
    (project / "pipelines").mkdir(parents=True)
    for name in ("components", "data", "environments"):
        (project / name).symlink_to(PIPELINE.parents[1] / name)
    path = project / "pipelines" / PIPELINE.name
    path.write_text(text)
    options = CompileOptions(platform={"kfp": KfpOptions(hf_secret="hf-login")})
    compile_file(path, ("kfp", "azureml"), tmp_path, options)
    return tmp_path / "preference"  # named after the pipeline file


def test_kfp_runs_the_preference_step_as_a_trainjob_with_its_distribution(compiled):
    manifest = yaml.safe_load((compiled / "kfp" / "trainjob-preference.yaml").read_text())
    trainer = manifest["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    command = trainer["command"][trainer["command"].index("--") + 1:]
    assert command[:5] == ["torchrun", "--nnodes=2", "--nproc-per-node=4", "-m", "components.preference"]
    assert command[command.index("--distribution") + 1] == "fsdp"
    # Its base model may come from the Hub, as train's: the shared cache and the token reach the job's pods.
    env = trainer["env"]
    assert {"name": "HF_HOME", "value": "/mnt/checkpoints/hf-cache"} in env
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-login", "key": "HF_TOKEN"}}} in env
    spec, _ = kfp_documents(compiled / "kfp" / "pipeline.yaml")
    launcher = spec["deploymentSpec"]["executors"]["exec-preference"]["container"]["command"]
    assert json.loads(launcher[launcher.index("--manifest") + 1]) == manifest


def test_azureml_gives_the_preference_step_a_pytorch_distribution(compiled):
    job = load_job(str(compiled / "azureml" / "pipeline_job.yml"))
    node = job.jobs["preference"]
    assert node.distribution.type == "pytorch" and node.distribution.process_count_per_instance == 4
    assert node.resources.instance_count == 2
    assert job.jobs["train"].distribution is None  # its profile is the one-GPU one
    component = yaml.safe_load((compiled / "azureml" / "components" / "preference.yml").read_text())
    words = shlex.split(component["command"].replace("$[[", "").replace("]]", ""))
    assert words[words.index("--distribution") + 1] == "${{inputs.distribution}}"
    assert yaml.safe_load((compiled / "azureml" / "pipeline_job.yml").read_text())["jobs"]["preference"][
        "inputs"]["distribution"] == "fsdp"

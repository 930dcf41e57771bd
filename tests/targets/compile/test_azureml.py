import os
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from azure.ai.ml import load_component, load_job
from azure.ai.ml.constants import TimeZone
from azure.ai.ml.entities._load_functions import load_schedule
from readback import FIXTURES, TOY, variant

from tuneline.graph import build_graph
from tuneline.spec import load_pipeline
from tuneline.targets import CompileError
from tuneline.targets.azureml.compiler import cluster_conflicts
from tuneline.targets.azureml.schedule import WINDOWS_TIME_ZONES
from tuneline.targets.build import compile_graph
from tuneline.targets.options import CompileOptions


@pytest.mark.parametrize("stem", ["toy", "toy-multinode"])
def test_every_file_loads_and_validates_with_azure_ai_ml(compiled, stem):
    folder = compiled[stem] / "azureml"
    for path in sorted((folder / "components").glob("*.yml")):
        component = load_component(str(path))
        assert component._validate().passed, (path, component._validate().error_messages)
    job = load_job(str(folder / "pipeline_job.yml"))
    result = job._validate()
    assert result.passed, result.error_messages
    assert set(job.jobs) == {"make_data", "fit", "check", "publish", "announce"}  # no if_else node
    schedule = load_schedule(str(folder / "schedule.yml"))
    assert schedule._validate().passed
    assert schedule.trigger.expression == yaml.safe_load((folder / "schedule.yml").read_text())["trigger"][
        "expression"]


def test_multinode_step_has_distribution_and_instance_count(compiled):
    job = load_job(str(compiled["toy-multinode"] / "azureml" / "pipeline_job.yml"))
    fit = job.jobs["fit"]
    assert fit.distribution.type == "pytorch"
    assert fit.distribution.process_count_per_instance == 4
    assert fit.resources.instance_count == 2
    assert fit.resources.shm_size == "16g"
    assert fit.compute == "gpu-spot"
    assert fit.outputs["checkpoints"].mode == "rw_mount"
    assert job.jobs["make_data"].distribution is None


def test_when_is_a_gate_folder_the_step_reads_not_a_condition_node(compiled):
    folder = compiled["toy"] / "azureml"
    job = yaml.safe_load((folder / "pipeline_job.yml").read_text())
    assert job["jobs"]["publish"]["inputs"]["tuneline_gate"] == "${{parent.jobs.check.outputs.passed}}"
    check = yaml.safe_load((folder / "components" / "check.yml").read_text())
    # Command components have no primitive outputs: the boolean lives in a file in a folder.
    assert check["outputs"]["passed"]["type"] == "uri_folder"
    assert "'${{outputs.passed}}/value'" in check["command"]
    assert check["is_deterministic"] is False  # cache: false in the component
    publish = yaml.safe_load((folder / "components" / "publish.yml").read_text())
    assert publish["inputs"]["tuneline_gate"]["type"] == "uri_folder"
    assert publish["command"].startswith("python -m tuneline.step.gate --gate '${{inputs.tuneline_gate}}' ")
    announce = yaml.safe_load((folder / "components" / "announce.yml").read_text())
    assert announce["inputs"]["model_uri"]["type"] == "uri_folder"  # a string output arrives as its value folder
    assert "\"$(cat '${{inputs.model_uri}}/value')\"" in announce["command"]


def test_values_are_single_quoted_so_the_shell_keeps_them_whole(tmp_path):
    path = variant(tmp_path, "base:    {type: string, default: tiny-model}", 'base: {type: string, default: \'"a b"\'}')
    out = compile_graph(build_graph(load_pipeline(path)), ("azureml",), tmp_path / "out", CompileOptions())
    fit = yaml.safe_load((out.folder / "azureml" / "components" / "fit.yml").read_text())
    assert "--base '${{inputs.base}}'" in fit["command"]
    text = fit["command"].replace("${{inputs.base}}", '"a b"')
    words = shlex.split(text)
    assert words[words.index("--base") + 1] == '"a b"'


def test_a_value_with_a_single_quote_is_a_compile_error(tmp_path):
    path = variant(tmp_path, "base:    {type: string, default: tiny-model}", "base: {type: string, default: \"it's\"}")
    with pytest.raises(CompileError, match="single quote"):
        compile_graph(build_graph(load_pipeline(path)), ("azureml",), tmp_path / "out", CompileOptions())


def test_retries_are_a_warning_and_instance_type_makes_a_compute_file(tmp_path):
    from azure.ai.ml.entities._load_functions import load_compute

    out = compile_graph(build_graph(load_pipeline(TOY)), ("azureml",), tmp_path, CompileOptions())
    assert any("fit: retries: 2 is not applied on Azure ML" in w for w in out.warnings)
    job = yaml.safe_load((out.folder / "azureml" / "pipeline_job.yml").read_text())
    assert "instance_type" not in job["jobs"]["fit"]["resources"]  # ignored on AmlCompute
    compute = load_compute(str(out.folder / "azureml" / "compute" / "gpu-spot.yml"))
    assert compute.size == "Standard_NC24ads_A100_v4" and compute.type == "amlcompute"


def test_a_spot_profile_is_a_low_priority_cluster(tmp_path):
    """gpu-spot was compiled as a dedicated cluster: full price, never preempted, nothing to resume."""
    from azure.ai.ml.entities._load_functions import load_compute

    out = compile_graph(build_graph(load_pipeline(TOY)), ("azureml",), tmp_path / "spot", CompileOptions())
    assert load_compute(str(out.folder / "azureml" / "compute" / "gpu-spot.yml")).tier == "low_priority"
    assert not any("starts from the beginning" in w for w in out.warnings)  # fit has a resume output
    dedicated = variant(tmp_path, "shm_size: 16g, spot: true}", "shm_size: 16g}")
    out = compile_graph(build_graph(load_pipeline(dedicated)), ("azureml",), tmp_path / "dedicated", CompileOptions())
    assert load_compute(str(out.folder / "azureml" / "compute" / "gpu-spot.yml")).tier == "dedicated"


def test_code_paths_are_relative_and_point_at_the_project(compiled):
    folder = compiled["toy"] / "azureml"
    for path in (folder / "components").glob("*.yml"):
        code = yaml.safe_load(path.read_text())["code"]
        assert not os.path.isabs(code)
        assert os.path.samefile(path.parent / code, FIXTURES)
    job = yaml.safe_load((folder / "pipeline_job.yml").read_text())
    assert os.path.normpath(folder / job["inputs"]["dataset"]["path"]) == str(FIXTURES / "data" / "toy.jsonl")


def test_environments_are_the_kfp_images_inline_wherever_the_job_is_compiled(tmp_path):
    """No `azureml:<name>@latest` that nothing registered: the step's image, as the KFP package names it, from a
    project that has no environments/ folder too (the control image has none)."""
    project = tmp_path / "bare"
    shutil.copytree(FIXTURES, project, ignore=shutil.ignore_patterns("environments"))
    assert not (project / "environments").exists()
    graph = build_graph(load_pipeline(project / "pipelines" / "toy.yaml"))
    options = CompileOptions(no_cache=True, image_registry="acr.example.io/tl", image_tag="2.0.1")
    out = compile_graph(graph, ("azureml", "kfp"), tmp_path / "out", options)
    folder = out.folder / "azureml"
    fit = yaml.safe_load((folder / "components" / "fit.yml").read_text())
    assert fit["environment"] == {"image": "acr.example.io/tl/toy-gpu:2.0.1"}
    assert "acr.example.io/tl/toy-gpu:2.0.1" in (out.folder / "kfp" / "pipeline.yaml").read_text()
    assert yaml.safe_load((folder / "pipeline_job.yml").read_text())["settings"]["force_rerun"] is True
    job = load_job(str(folder / "pipeline_job.yml"))
    assert job._validate().passed
    assert job.jobs["fit"].component.environment.image == "acr.example.io/tl/toy-gpu:2.0.1"
    assert not any("default registry" in w for w in out.warnings)
    unset = variant(tmp_path, 'images: {registry: registry.example.com/toy, tag: "1.4.0"}', "")
    default = compile_graph(build_graph(load_pipeline(unset)), ("azureml",), tmp_path / "default", CompileOptions())
    assert any("default registry 'tuneline/'" in w for w in default.warnings)


def test_a_scheduled_run_is_never_served_the_first_runs_outputs(compiled, tmp_path):
    """Same inputs every time + deterministic components = Azure ML reuses every node: the schedule forces reruns."""
    folder = compiled["toy"] / "azureml"
    schedule = load_schedule(str(folder / "schedule.yml"))
    assert schedule._validate().passed
    assert schedule.create_job.settings.force_rerun is True
    assert yaml.safe_load((folder / "pipeline_job.yml").read_text())["settings"]["force_rerun"] is False
    assert set(schedule.create_job.jobs) == {"make_data", "fit", "check", "publish", "announce"}
    out = compile_graph(build_graph(load_pipeline(TOY)), ("azureml",), tmp_path, CompileOptions())
    assert any("parameter 'dataset' is the local path" in w for w in out.warnings)


def test_every_mapped_time_zone_is_one_azure_ml_knows():
    known = {zone.value for zone in TimeZone}
    assert set(WINDOWS_TIME_ZONES.values()) <= known


def test_resume_output_is_rw_mounted_at_a_stable_datastore_path(compiled):
    """`resume: true`: no `${{name}}` (the job's own name) in the path, so a re-submitted job mounts the same
    folder; the wrapper keeps its keyed store inside it (--in-output)."""
    folder = compiled["toy"] / "azureml"
    raw = yaml.safe_load((folder / "pipeline_job.yml").read_text())
    assert raw["jobs"]["fit"]["outputs"] == {"checkpoints": {
        "type": "uri_folder", "mode": "rw_mount",
        "path": "azureml://datastores/${{default_datastore}}/paths/tuneline/checkpoints/toy/fit/checkpoints/"}}
    assert "outputs" not in raw["jobs"]["make_data"]
    job = load_job(str(folder / "pipeline_job.yml"))
    assert job._validate().passed
    assert job.jobs["fit"].outputs["checkpoints"].mode == "rw_mount"
    assert "${{name}}" not in job.jobs["fit"].outputs["checkpoints"].path
    fit = yaml.safe_load((folder / "components" / "fit.yml").read_text())
    wrapper, step = fit["command"].split(" -- ", 1)
    assert shlex.split(wrapper)[:6] == ["python", "-m", "tuneline.step.resume", "--component", "components/fit",
                                        "--in-output"]
    assert "--store checkpoints='${{outputs.checkpoints}}'" in wrapper
    assert "--artifact train='${{inputs.train}}'" in wrapper
    assert step.startswith("python -m components.fit ")


REPO = Path(__file__).resolve().parents[3]
REPO_PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))


def test_a_cluster_name_has_one_definition_across_the_repositorys_pipelines(tmp_path):
    """finetune-multinode's gpu-spot was dedicated while the other pipelines' gpu-spot is low priority: whichever
    pipeline ran second in a workspace was refused (tier cannot change)."""
    graphs = [build_graph(load_pipeline(path)) for path in REPO_PIPELINES]
    assert len(graphs) >= 3
    assert cluster_conflicts(graphs) == []
    problems = cluster_conflicts([build_graph(load_pipeline(TOY)),
                                  build_graph(load_pipeline(variant(tmp_path, "shm_size: 16g, spot: true}",
                                                                    "shm_size: 16g}")))])
    assert len(problems) == 1 and "cluster 'gpu-spot'" in problems[0] and "'dedicated'" in problems[0]


@pytest.mark.parametrize("path", REPO_PIPELINES, ids=lambda p: p.stem)
def test_every_cluster_a_repository_pipeline_runs_on_gets_a_compute_file(path, tmp_path):
    """`submit` creates the clusters compute/ describes and nothing else: a profile without a VM size (the cpu
    profiles had none) left prepare waiting for a cluster nobody created on a fresh workspace."""
    from azure.ai.ml.entities._load_functions import load_compute

    out = compile_graph(build_graph(load_pipeline(path)), ("azureml",), tmp_path, CompileOptions())
    folder = out.folder / "azureml"
    job = yaml.safe_load((folder / "pipeline_job.yml").read_text())
    used = {body["compute"].removeprefix("azureml:") for body in job["jobs"].values()}
    files = {p.stem for p in (folder / "compute").glob("*.yml")}
    assert used <= files, used - files
    for name in used:
        assert load_compute(str(folder / "compute" / f"{name}.yml"))._to_rest_object() is not None
    assert not any("no compute file" in w for w in out.warnings)


def test_a_cluster_without_a_vm_size_is_warned_about_once(tmp_path):
    out = compile_graph(build_graph(load_pipeline(TOY)), ("azureml",), tmp_path, CompileOptions())
    unsized = [w for w in out.warnings if "cluster 'cpu-cluster' has no instance_type" in w]
    assert len(unsized) == 1, out.warnings


def test_the_code_snapshot_leaves_out_git_and_what_git_ignores(tmp_path):
    """Without .amlignore the SDK read .gitignore, which cannot list .git/: every job uploaded the history too."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    ignored = {line for line in (REPO / ".gitignore").read_text().splitlines() if line and not line.startswith("#")}
    kept = {line for line in (REPO / ".amlignore").read_text().splitlines() if line and not line.startswith("#")}
    assert ignored <= kept, ignored - kept
    project = tmp_path / "project"
    for name in (".git/objects/ab/cdef", ".git/HEAD", ".venv/bin/python", ".tuneline/runs/x.json", "build/a/b.yml",
                 "tuneline/cli/main.py", "tuneline/__pycache__/cli.cpython-311.pyc", "components/train/__main__.py",
                 "pipelines/finetune.yaml", "data/sample/tickets.jsonl", "config/skus.yaml"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    shutil.copy(REPO / ".gitignore", project / ".gitignore")
    shutil.copy(REPO / ".amlignore", project / ".amlignore")
    uploaded = {remote for _, remote in get_upload_files_from_folder(project, ignore_file=get_ignore_file(project))}
    assert uploaded == {".gitignore", ".amlignore", "tuneline/cli/main.py", "components/train/__main__.py",
                        "pipelines/finetune.yaml", "data/sample/tickets.jsonl", "config/skus.yaml"}


def test_steps_that_load_a_model_get_the_hub_token_secret_by_uri_only(tmp_path):
    """--azureml-hf-token-secret puts the Key Vault secret's URI, never a token, into exactly the steps that may
    download a Hub model (inputs of kind model_ref: train and evaluate; components declaring `loads_models`:
    register and deploy, which fetch the adapter's base); the job still loads with azure-ai-ml."""
    from tuneline.settings import HF_TOKEN_SECRET_VAR, HF_TOKEN_VAR
    from tuneline.targets.azureml.options import AzureMLOptions
    from tuneline.targets.placement import loads_models

    uri = "https://tl-vault.vault.azure.net/secrets/hf-token"
    path = Path(__file__).resolve().parents[3] / "pipelines" / "finetune.yaml"
    graph = build_graph(load_pipeline(path))
    options = CompileOptions(platform={"azureml": AzureMLOptions(hf_token_secret=uri)})
    compile_graph(graph, ("azureml",), tmp_path, options)
    job_file = tmp_path / "azureml" / "pipeline_job.yml"
    jobs = yaml.safe_load(job_file.read_text())["jobs"]
    carrying = {name for name, job in jobs.items() if HF_TOKEN_SECRET_VAR in job["environment_variables"]}
    assert carrying == {name for name, node in graph.nodes.items() if loads_models(node)} == {
        "train", "evaluate", "register", "deploy"}
    assert {jobs[name]["environment_variables"][HF_TOKEN_SECRET_VAR] for name in carrying} == {uri}
    assert all(HF_TOKEN_VAR not in job["environment_variables"] for job in jobs.values())
    assert load_job(str(job_file))._validate().passed
    # Without the option no step names a secret.
    compile_graph(graph, ("azureml",), tmp_path / "plain", CompileOptions())
    job_file = tmp_path / "plain" / "azureml" / "pipeline_job.yml"
    assert HF_TOKEN_SECRET_VAR not in job_file.read_text()


def test_a_token_given_for_the_hub_token_secret_is_refused():
    from tuneline.targets.azureml.options import azureml_options

    with pytest.raises(CompileError, match="--azureml-hf-token-secret: expected a Key Vault secret URI"):
        azureml_options({"hf_token_secret": "hf_abcdefghijklmnopqrstuvwxyz"})
    assert azureml_options({"hf_token_secret": "https://v.vault.azure.net/secrets/hf/0a1b"}).hf_token_secret

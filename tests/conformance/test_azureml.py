"""The compiled toy pipeline, executed by Azure ML's documented runtime rules, matches `tuneline run`.

A job runs in a container of the project's image (R6): the tests that run one need root, podman and the images
`make images` builds from this working tree (the `image_engine` fixture), so they are in the heavy tier, which
builds the images first (`make test-heavy`); without them they are skipped.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from tools.conformance.__main__ import REPO, main
from tools.conformance.azureml import AzureMLRuntime, RuntimeRuleBroken, compile_options, local_images

TOY = Path(__file__).resolve().parents[1] / "fixtures" / "toy" / "pipelines" / "toy.yaml"


@pytest.mark.heavy
@pytest.mark.parametrize(("count", "publish"), [(5, "succeeded"), (2, "skipped")])
def test_toy_pipeline_matches_local_with_the_gate_open_and_closed(image_engine, tmp_path, capsys, count, publish):
    assert main(["azureml", str(TOY), "--set", f"count={count}", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "azureml conformance: 3/3 steps match local" in out
    assert f"publish      {publish}" in out
    assert "passed: True" in out if publish == "succeeded" else "passed: False" in out


def _compiled(tmp_path: Path) -> Path:
    from tuneline.targets.build import compile_file

    return compile_file(TOY, ("azureml",), tmp_path / "c", compile_options()).folder / "azureml" / "pipeline_job.yml"


@pytest.mark.slow
@pytest.mark.heavy
def test_a_folder_where_a_uri_file_is_mounted_breaks_a_runtime_rule(image_engine, tmp_path):
    job_file = _compiled(tmp_path)
    component = job_file.parent / "components" / "publish.yml"
    body = yaml.safe_load(component.read_text())
    body["inputs"]["report"]["type"] = "uri_folder"  # check writes a file there
    component.write_text(yaml.safe_dump(body))
    runtime = AzureMLRuntime(job_file, tmp_path / "run", engine=image_engine, images=local_images(REPO))
    for name in ("gen", "check"):
        runtime.results[name] = runtime.run_node(name)
    with pytest.raises(RuntimeRuleBroken, match="a uri_folder input must be a folder"):
        runtime.run_node("publish")


def test_a_mounted_input_is_readable_to_the_jobs_user_whatever_mode_its_writer_gave(tmp_path):
    """R2: a datastore keeps no POSIX modes, so a 0600 file an upstream job wrote (PEFT's adapter weights) is
    readable in the next job's mount; the job's user is not root, so a copy keeping 0600 failed evaluate."""
    from tools.conformance.azureml import _mount

    upstream = tmp_path / "model"
    upstream.mkdir()
    (upstream / "adapter_model.safetensors").write_bytes(b"w")
    (upstream / "adapter_model.safetensors").chmod(0o600)
    mounted = _mount(upstream, "uri_folder", tmp_path / "inputs" / "model", "node 'evaluate' input 'model'")
    assert (mounted / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o644
    assert mounted.stat().st_mode & 0o777 == 0o755


def test_primitive_outputs_are_refused(tmp_path):
    job_file = _compiled(tmp_path)
    component = job_file.parent / "components" / "gen.yml"
    body = yaml.safe_load(component.read_text())
    body["outputs"]["flag"] = {"type": "boolean", "is_control": True}
    component.write_text(yaml.safe_dump(body))
    with pytest.raises(RuntimeRuleBroken, match="primitive outputs are not supported"):
        AzureMLRuntime(job_file, tmp_path / "run").run_node("gen")


@pytest.mark.slow
@pytest.mark.heavy
def test_a_job_whose_image_is_not_here_is_refused_before_it_runs(image_engine, tmp_path):
    """Compiled with the default registry, the toy names `tuneline/train-cpu:latest` (Docker Hub): nothing pulls it."""
    from tuneline.targets.build import compile_file
    from tuneline.targets.options import CompileOptions

    job_file = compile_file(TOY, ("azureml",), tmp_path / "c", CompileOptions()).folder / "azureml" / "pipeline_job.yml"
    runtime = AzureMLRuntime(job_file, tmp_path / "run", engine=image_engine, images=local_images(REPO))
    with pytest.raises(RuntimeRuleBroken, match=r"image tuneline/train-cpu:latest is not here"):
        runtime.run_node("gen")


def test_the_private_preview_flag_is_refused(tmp_path, monkeypatch):
    from tools.conformance.azureml import validate_offline

    monkeypatch.setitem(os.environ, "AZURE_ML_CLI_PRIVATE_FEATURES_ENABLED", "true")
    with pytest.raises(RuntimeRuleBroken, match="must validate without it"):
        validate_offline(_compiled(tmp_path))


RESUME = TOY.parent / "resume.yaml"


@pytest.mark.slow
@pytest.mark.heavy
def test_a_preempted_resumable_node_resumes_from_its_rw_mount_output(image_engine, tmp_path, capsys):
    """R8: count's checkpoints live at a datastore path; killed after its first checkpoint and submitted again,
    it resumes from there, and its outputs still equal an uninterrupted local run's."""
    assert main(["azureml", str(RESUME), "--preempt-resumable", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "azureml conformance: 2/2 steps match local" in out
    line = next(x for x in out.splitlines() if x.startswith("azureml checkpoint resume: count killed at step "))
    killed, resumed = (int(x) for x in re.findall(r"step (\d+)", line))
    assert resumed == killed + 1 and 1 <= killed < 6
    assert "(exit 143)" in line


def test_datastore_paths_resolve_to_folders_that_outlive_jobs(tmp_path):
    runtime = AzureMLRuntime(_compiled(tmp_path), tmp_path / "run")
    folder, mode = runtime._output_folder("fit", "checkpoints", {
        "type": "uri_folder", "mode": "rw_mount",
        "path": "azureml://datastores/${{default_datastore}}/paths/tuneline/checkpoints/x/${{output_name}}/"},
        tmp_path / "scratch")
    assert (folder, mode) == (tmp_path / "run/datastores/workspaceblobstore/tuneline/checkpoints/x/checkpoints",
                              "rw_mount")
    assert runtime._output_folder("fit", "model", None, tmp_path / "scratch") == (tmp_path / "scratch", None)
    with pytest.raises(RuntimeRuleBroken, match="mode 'download'"):
        runtime._output_folder("fit", "model", {"mode": "download"}, tmp_path / "scratch")
    with pytest.raises(RuntimeRuleBroken, match="known expressions"):
        runtime._output_folder("fit", "model", {"path": "azureml://datastores/x/paths/${{run_id}}/"}, tmp_path)


PROBE = """
import json, os, sys
json.dump({"uid": os.getuid(), "prefix": sys.prefix, "cwd": os.getcwd(), "env": dict(os.environ),
           "seen": [p for p in sys.argv[2:] if os.path.exists(p)]}, open(sys.argv[1] + "/probe.json", "w"))
"""


@pytest.mark.slow
@pytest.mark.heavy
def test_a_job_runs_in_its_image_as_the_image_user_with_nothing_from_the_host(image_engine, tmp_path, monkeypatch):
    """R6: the command runs in the environment's image, as its user, from a snapshot of `code:`, with the image's
    environment and the job's variables only: no host venv, PATH, PYTHONPATH, model cache or repository."""
    job_file = _compiled(tmp_path)
    code = tmp_path / "probe"
    code.mkdir()
    (code / "probe.py").write_text(PROBE)
    (code / "secret.txt").write_text("left out")
    (code / ".amlignore").write_text("secret.txt\n")  # what azure-ai-ml leaves out of the snapshot
    component = job_file.parent / "components" / "gen.yml"
    body = yaml.safe_load(component.read_text())
    host_paths = [str(REPO), sys.prefix, str(Path.home() / ".cache" / "huggingface"), str(code)]
    body["code"], body["command"] = str(code), "python probe.py '${{outputs.data}}' " + " ".join(host_paths)
    component.write_text(yaml.safe_dump(body))
    monkeypatch.setenv("TUNELINE_HOST_ONLY", "1")
    runtime = AzureMLRuntime(job_file, tmp_path / "run", engine=image_engine, images=local_images(REPO))
    result = runtime.run_node("gen")
    probe = json.loads((result.outputs["data"] / "probe.json").read_text())
    image = image_engine.client().images.get(runtime.image("gen")).attrs["Config"]
    image_env = dict(item.split("=", 1) for item in image["Env"])
    assert image["User"].split(":")[0] == str(probe["uid"]) != "0"
    assert probe["prefix"] == image_env["VIRTUAL_ENV"] != sys.prefix
    snapshot = tmp_path / "run" / "jobs" / "gen" / "code"
    assert probe["cwd"] == str(snapshot) and sorted(p.name for p in snapshot.iterdir()) == [".amlignore", "probe.py"]
    assert probe["seen"] == []  # not the repository, the host venv, its model cache, nor the code folder itself
    env = probe["env"]
    assert "TUNELINE_HOST_ONLY" not in env and env["TUNELINE_STEP"] == "gen"  # the node's environment_variables
    for name in ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "TUNELINE_HOME", "HOME"):
        assert env[name] == image_env[name], name
    extra = set(env) - set(image_env) - set(runtime.job["jobs"]["gen"]["environment_variables"])
    assert extra <= {"HOSTNAME", "container", "TERM", "PWD", "SHLVL", "_"}, extra  # the engine's and bash's own


NETWORK_PROBE = """
import json, os, socket, ssl, sys
def reaches(host, port, tls=False):
    try:
        with socket.create_connection((host, int(port)), timeout=3) as sock:
            if tls:
                ssl.create_default_context(cafile=os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]).wrap_socket(
                    sock, server_hostname=host).close()
        return True
    except OSError:
        return False
front = os.environ["MLFLOW_TRACKING_URI"].split("/")[2].rsplit(":", 1)
json.dump({"pid": os.getpid(), "loopback": reaches("127.0.0.1", sys.argv[2]), "workspace": reaches(*front, tls=True)},
          open(sys.argv[1] + "/probe.json", "w"))
"""


@pytest.mark.slow
@pytest.mark.heavy
def test_a_job_reaches_its_workspace_but_not_this_machines_loopback_and_is_not_pid_1(image_engine, tmp_path):
    """A compute node has a network of its own: the workspace's endpoint is reachable (TLS, its certificate), a
    service on this machine's 127.0.0.1 is not, as it was on the host network. And the command is not PID 1, where
    a SIGTERM with no handler would be ignored instead of ending it as on Azure ML."""
    import socket

    from tools.conformance.workspace_mlflow import WorkspaceMlflow

    job_file = _compiled(tmp_path)
    code = tmp_path / "probe"
    code.mkdir()
    (code / "probe.py").write_text(NETWORK_PROBE)
    # A workspace of its own: the module's shared one is asserted to hold no `toy` experiment.
    with socket.socket() as host_only, WorkspaceMlflow(tmp_path / "workspace") as workspace:
        host_only.bind(("127.0.0.1", 0))
        host_only.listen()
        component = job_file.parent / "components" / "gen.yml"
        body = yaml.safe_load(component.read_text())
        body["code"] = str(code)
        body["command"] = f"python probe.py '${{{{outputs.data}}}}' {host_only.getsockname()[1]}"
        component.write_text(yaml.safe_dump(body))
        runtime = AzureMLRuntime(job_file, tmp_path / "run", workspace=workspace, engine=image_engine,
                                 images=local_images(REPO))
        probe = json.loads((runtime.run_node("gen").outputs["data"] / "probe.json").read_text())
        assert not workspace.address.startswith("127."), "this machine has no route out: jobs share its network"
    assert probe == {"pid": probe["pid"], "loopback": False, "workspace": True} and probe["pid"] != 1


TRACKED = TOY.parent / "tracked.yaml"


def _tracked_job(tmp_path: Path, plain_mlflow: bool) -> Path:
    """The toy `gen -> track` job, its track node bound to `plain_mlflow` and setting a tracking URI of its own."""
    from tuneline.targets.build import compile_file

    folder = compile_file(TRACKED, ("azureml",), tmp_path / "c", compile_options()).folder
    job_file = folder / "azureml" / "pipeline_job.yml"
    body = yaml.safe_load(job_file.read_text())
    body["jobs"]["track"]["inputs"]["plain_mlflow"] = plain_mlflow
    # the job's own value, which R9 replaces
    body["jobs"]["track"]["environment_variables"]["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/job.db"
    job_file.write_text(yaml.safe_dump(body, sort_keys=False))
    return job_file


@pytest.mark.slow
@pytest.mark.heavy
def test_a_step_tracks_through_the_runtimes_injected_mlflow_variables(image_engine, tmp_path, workspace):
    """R9: the job sees only Azure ML's azureml:// URI and token; the run lands in the workspace's MLflow."""
    runtime = AzureMLRuntime(_tracked_job(tmp_path, False), tmp_path / "run", workspace=workspace,
                             engine=image_engine)
    results = runtime.run()
    assert (results["track"].outputs["logged"] / "value").read_text() == "3"
    with workspace.client() as client:
        # The run Azure ML created for the job (MLFLOW_RUN_ID), in the pipeline's experiment: the job page's run.
        experiment = client.get_experiment_by_name("toy-tracked")
        runs = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == "track"]
        assert [r.data.metrics.get("lines") for r in runs] == [3.0]
        assert runs[0].data.tags["tuneline.run_name"] == "track"
        # A workspace's artifact root: the file stays in the job's outputs, and the run says so.
        assert runs[0].info.artifact_uri.startswith("azureml://")
        assert "azureml-mlflow" in runs[0].data.tags["tuneline.artifact_not_uploaded.lines.txt"]
        assert client.get_experiment_by_name("toy") is None  # no run of the step's own beside it


@pytest.mark.slow
@pytest.mark.heavy
def test_the_harness_fails_a_step_that_does_not_handle_the_injected_mlflow_variables(image_engine, tmp_path,
                                                                                      workspace):
    """The track step opened MLflow with the injected azureml:// URI as it stands: without azureml-mlflow (which
    no image carries) MLflow has no store for that scheme, and the job fails as it would on a workspace."""
    runtime = AzureMLRuntime(_tracked_job(tmp_path, True), tmp_path / "run", workspace=workspace,
                             engine=image_engine)
    with pytest.raises(RuntimeRuleBroken, match=r"node 'track' exited(.|\n)*azureml"):
        runtime.run()


def test_the_workspace_endpoint_takes_only_the_jobs_bearer_token(workspace, monkeypatch):
    import requests

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "not-the-job-token")
    url = f"{workspace.rest_uri}/api/2.0/mlflow/experiments/search"
    assert requests.post(url, json={"max_results": 1}, verify=str(workspace.cert), timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer not-the-job-token"}
    assert requests.post(url, json={"max_results": 1}, headers=wrong, verify=str(workspace.cert),
                         timeout=30).status_code == 401
    right = {"Authorization": f"Bearer {workspace.current_token}"}
    assert requests.post(url, json={"max_results": 1}, headers=right, verify=str(workspace.cert),
                         timeout=30).status_code == 200
    outside = url.replace("/workspaces/tuneline-ws/", "/workspaces/other/")
    assert requests.post(outside, json={"max_results": 1}, headers=right, verify=str(workspace.cert),
                         timeout=30).status_code == 404


def test_champion_and_candidate_are_version_tags_on_a_workspace(workspace):
    """A workspace's MLflow registry has no aliases (the stand-in answers their calls as it does): setting the
    champion failed, and looking it up raised instead of reading the version tags."""
    import mlflow

    from tuneline.llm import registry

    with workspace.client() as client:
        assert not registry.aliases_supported(client)
        client.create_registered_model("tagged-llm")
        for _ in range(2):
            client.create_model_version("tagged-llm", "s3://bucket/tagged-llm/model")
        with pytest.raises(mlflow.exceptions.MlflowException, match="ENDPOINT_NOT_FOUND"):
            client.set_registered_model_alias("tagged-llm", "champion", "1")  # the call the registry made before
        assert registry.version_by_alias(client, "tagged-llm", registry.CHAMPION) is None
        registry.set_alias(client, "tagged-llm", registry.CHAMPION, 1)
        registry.set_alias(client, "tagged-llm", registry.CANDIDATE, 2)
        assert registry.version_by_alias(client, "tagged-llm", registry.CHAMPION).version == "1"
        registry.set_alias(client, "tagged-llm", registry.CHAMPION, 2)
        assert registry.version_by_alias(client, "tagged-llm", registry.CHAMPION).version == "2"
        assert registry.version_by_alias(client, "tagged-llm", registry.CANDIDATE).version == "2"
        assert "tuneline.alias.champion" not in client.get_model_version("tagged-llm", "1").tags


def test_the_workspace_hands_out_artifact_locations_only_azureml_mlflow_serves(workspace, tmp_path):
    """What register (mlflow.pyfunc.log_model: a logged model, then its files) and deploy (downloading a version)
    meet in a workspace: azureml:// locations that MLflow cannot read or write without azureml-mlflow."""
    import mlflow

    with workspace.client() as client:
        experiment = client.create_experiment("artifacts")
        assert client.get_experiment(experiment).artifact_location.startswith("azureml://")
        run = client.create_run(experiment).info.run_id
        model = client.create_logged_model(experiment, name="model")
        assert model.artifact_location.startswith("azureml://")
        (tmp_path / "weights.txt").write_text("w")
        with pytest.raises(mlflow.exceptions.MlflowException, match="azureml"):
            client.log_artifact(run, str(tmp_path / "weights.txt"))


def test_the_jobs_token_is_renewed_before_it_expires(workspace, monkeypatch):
    """MLflow re-reads MLFLOW_TRACKING_TOKEN at each request, but nothing renewed it: a step running past the
    token's lifetime got 401. The stand-in, like the workspace, refuses the old token once it has renewed it."""
    import time

    import requests

    from tuneline import settings

    experiment_id, run_id = workspace.job_run("refresh", "job")
    env = workspace.job_env(experiment_id, run_id)
    env["AZUREML_RUN_TOKEN_EXPIRY"] = str(int(time.time()) + settings.TOKEN_REFRESH_MARGIN_S + 2)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    old = env["MLFLOW_TRACKING_TOKEN"]
    uri = settings.use_tracking()
    deadline = time.time() + 30
    while os.environ["MLFLOW_TRACKING_TOKEN"] == old and time.time() < deadline:
        time.sleep(0.5)
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == workspace.current_token != old
    assert float(os.environ["AZUREML_RUN_TOKEN_EXPIRY"]) > time.time() + 3000
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.run_id == run_id  # with the renewed token
    url = f"{workspace.rest_uri}/api/2.0/mlflow/experiments/search"
    stale = {"Authorization": f"Bearer {old}"}
    assert requests.post(url, json={"max_results": 1}, headers=stale, verify=str(workspace.cert),
                         timeout=30).status_code == 401


@pytest.mark.slow
def test_register_on_a_workspace_keeps_the_model_in_its_output_and_deploy_reads_it_back(workspace, tmp_path):
    """On a workspace, register cannot upload through MLflow (azureml:// artifact roots): it saves the model into
    its `files` output, registers the output's datastore URI as the version's source, and fetch_model (deploy,
    the champion comparison) reads the files from the datastore. The stand-in's datastores are folders the
    harness owns (R8a); on Azure ML the read is MLClient.models.download, which needs Azure and is not run here."""
    import json
    import subprocess

    from tests.components.tuned_fixtures import REPO, make_adapter, make_metrics, register_cmd
    from tuneline.llm.workspace_files import DATASTORES_VAR

    experiment_id, run_id = workspace.job_run("register-on-workspace", "register")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AZUREML_"))}
    datastores = tmp_path / "datastores"
    env.update(workspace.job_env(experiment_id, run_id), TUNELINE_HOME=str(tmp_path / "home"),
               MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO), **{DATASTORES_VAR: str(datastores)})
    outs = tmp_path / "outs"
    files = datastores / "workspaceblobstore" / "azureml" / run_id / "files"  # R8a: the output's default path
    cmd = register_cmd(make_adapter(tmp_path / "train" / "model"), make_metrics(tmp_path / "m.json", tuned=0.5), outs,
                       "--name", "ws-model")
    cmd[cmd.index("--files-out") + 1] = str(files)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (outs / "model_uri").read_text() == "models:/ws-model/1"
    source = json.loads((files / "registered.json").read_text())["model_uri_source"]
    with workspace.client() as client:
        version = client.get_model_version("ws-model", "1")
    saved = files / version.run_id  # the registration run's folder in the output
    assert version.source == source == (f"azureml://datastores/workspaceblobstore/paths/azureml/{run_id}/files/"
                                        f"{version.run_id}/model")
    assert version.tags["tuneline.alias.champion"] == "true"
    assert (saved / "model" / "MLmodel").is_file() and (saved / "model_card.md").is_file()
    assert (saved / "evaluation" / "m.json").is_file()
    # deploy's read, in a later job of the same workspace
    reader = ("import sys; from pathlib import Path; from tuneline.llm.registry import fetch_model; "
              "f = fetch_model('models:/ws-model@champion', Path(sys.argv[1])); print(f.version, f.model_dir); "
              "from components.evaluate.__main__ import resolve_champion; "  # evaluate's champion comparison
              "print(resolve_champion('models:/ws-model@champion'))")
    env.update(workspace.job_env(*workspace.job_run("register-on-workspace", "deploy")))
    proc = subprocess.run([sys.executable, "-c", reader, str(tmp_path / "fetched")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    number, model_dir, champion_dir = proc.stdout.split()
    assert number == "1" and (Path(model_dir) / "adapter_config.json").is_file()
    assert (Path(champion_dir) / "adapter_config.json").is_file()

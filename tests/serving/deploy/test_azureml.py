"""Azure ML endpoint + deployment YAML: loadable by azure-ai-ml's own loaders, relative paths, auth mode and probes
as configured, the serve image as a custom container with Triton's routes on the Triton repository; apply.sh
creates the endpoint, then the deployment in the idle slot, then the traffic, and rollback.sh returns to the
previous slot (run against tests/support/fake_az.py: no workspace is reachable here). test_azureml_serving.py runs
the deployment's container command and routes on a real repository."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tuneline.serving.deploy import azureml, azureml_sizes
from tuneline.serving.deploy.policy import RolloutPolicy
from tuneline.spec.load import load_component

REPO = Path(__file__).resolve().parents[3]
URI = "models:/tuneline-llm/4"
SERVE_IMAGE = "myacr.azurecr.io/tuneline/serve:0.1.0"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A Triton repository's shape (write_repository's real one is served in test_azureml_serving.py)."""
    folder = tmp_path / "repository"
    for model in ("tuneline-llm", "tuneline-llm-stream"):
        (folder / model / "1").mkdir(parents=True)
        (folder / model / "config.pbtxt").write_text(f'name: "{model}"\n')
    return folder


def _write(out: Path, model_dir: Path, options: azureml.AzureMLOptions, policy: RolloutPolicy, version: int = 4):
    return azureml.write(
        out,
        options,
        policy,
        repository_dir=model_dir,
        model_name="tuneline-llm",
        model_version=version,
        model_uri=f"models:/tuneline-llm/{version}",
    )


def test_canary_files_load_with_the_sdk(tmp_path: Path, model_dir: Path):
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    out = tmp_path / "azureml"
    options = azureml.AzureMLOptions(
        image=SERVE_IMAGE,
        auth_mode="key", instance_type="Standard_NC24ads_A100_v4", instance_count=2
    )
    paths = _write(out, model_dir, options, RolloutPolicy(strategy="canary", canary_percent=10))
    azureml.load_check(paths)
    endpoint = load_online_endpoint(paths["endpoint"])
    deployment = load_online_deployment(paths["deployment"])
    # Traffic may only name deployments that exist: it is set by apply.sh after the deployment, never on create.
    assert endpoint.auth_mode == "key" and not endpoint.traffic
    assert "traffic" not in yaml.safe_load(paths["endpoint"].read_text())
    assert deployment.name == "green" and deployment.endpoint_name == "tuneline-llm"
    assert deployment.instance_type == "Standard_NC24ads_A100_v4" and deployment.instance_count == 2
    assert (
        deployment.liveness_probe.failure_threshold == 30 and deployment.readiness_probe.initial_delay == 10
    )
    # no startup probe on Azure ML, and Triton answers nothing until the engine has loaded
    assert deployment.liveness_probe.initial_delay == 600
    assert deployment.request_settings.max_concurrent_requests_per_instance == 32  # the engine batches on a GPU
    assert (out / "repository" / "tuneline-llm-stream" / "config.pbtxt").is_file()


def test_the_deployment_is_the_serve_image_with_triton_routes(tmp_path: Path, model_dir: Path):
    """A custom container: the serve image, its inference_config routes on Triton's HTTP port, no scoring script
    and no conda file (the plain-generate scoring path pinned a torch no public index served)."""
    from azure.ai.ml import load_online_deployment

    out = tmp_path / "azureml"
    options = azureml.AzureMLOptions(image="myacr.azurecr.io/tuneline/serve:0.1.0")
    paths = _write(out, model_dir, options, RolloutPolicy())
    deployment = load_online_deployment(paths["deployment"])
    assert deployment.code_configuration is None and not (out / "code").exists()
    assert deployment.environment.image == "myacr.azurecr.io/tuneline/serve:0.1.0"
    assert deployment.environment.conda_file is None
    config = deployment.environment.inference_config
    assert (config.liveness_route.port, config.liveness_route.path) == (8080, "/v2/health/live")
    assert (config.readiness_route.port, config.readiness_route.path) == (8080, "/v2/health/ready")
    assert config.scoring_route.path == "/v2/models/tuneline-llm-stream/generate"
    # The variables the KServe runtime's container gets (k8s/base/serving/servingruntime.yaml), so both run alike.
    runtime = yaml.safe_load((REPO / "k8s" / "base" / "serving" / "servingruntime.yaml").read_text())
    kserve_env = {e["name"]: e["value"] for e in runtime["spec"]["containers"][0]["env"]}
    assert deployment.environment_variables == kserve_env
    assert "--http-port=8080" in runtime["spec"]["containers"][0]["args"]


def test_the_served_name_names_the_scoring_route(tmp_path: Path, model_dir: Path):
    paths = azureml.write(tmp_path / "a", azureml.AzureMLOptions(image=SERVE_IMAGE), RolloutPolicy(),
                          repository_dir=model_dir,
                          model_name="tuneline-llm", model_version=4, model_uri=URI, served_name="tickets")
    route = yaml.safe_load(paths["deployment"].read_text())["environment"]["inference_config"]["scoring_route"]
    assert route["path"] == "/v2/models/tickets-stream/generate"


@pytest.mark.parametrize(("size", "kind"), [("Standard_NC4as_T4_v3", "gpu"), ("Standard_NC24ads_A100_v4", "gpu"),
                                            ("Standard_ND96asr_v4", "gpu"), ("standard_nv36ads_a10_v5", "gpu"),
                                            ("Standard_DS3_v2", "cpu"), ("Standard_F4s_v2", "cpu"),
                                            ("Standard_E4s_v3", "cpu")])
def test_the_instance_type_decides_the_repository_kind(size: str, kind: str):
    assert azureml.AzureMLOptions(image=SERVE_IMAGE, instance_type=size).instance_kind == kind


@pytest.mark.parametrize(("size", "gpu"), [("Standard_NC6s_v2", "P100"), ("Standard_NC6s_v3", "V100"),
                                           ("Standard_ND40rs_v2", "V100")])
def test_a_gpu_size_the_engine_cannot_run_on_is_refused_naming_the_sizes_it_can(size: str, gpu: str):
    """These are on the managed-endpoint list and look like any N-series size, but vLLM 0.32's CUDA build needs
    compute capability 7.5: the engine would fail on the instance, after the image pull and the model download."""
    with pytest.raises(ValidationError) as raised:
        azureml.AzureMLOptions(image=SERVE_IMAGE, instance_type=size)
    message = str(raised.value)
    assert "instance_type" in message and gpu in message and "7.5" in message
    assert "Standard_NC4as_T4_v3" in message and "Standard_NC24ads_A100_v4" in message


@pytest.mark.parametrize("size", ["Standard_NC4as_T4", "Standard_D4s_v5", "Standard_NV12s_v3", "t4"])
def test_a_size_managed_endpoints_do_not_offer_is_refused(size: str):
    """A typo, or a size the list does not hold (Standard_D4s_v5 runs training clusters, not managed endpoints),
    used to pass as a CPU size and fail minutes into `az ml online-deployment create`."""
    with pytest.raises(ValidationError, match="not a managed online endpoint VM size"):
        azureml.AzureMLOptions(image=SERVE_IMAGE, instance_type=size)


def test_the_deploy_components_default_size_runs_the_engine():
    default = load_component(Path("components/deploy")).spec.inputs["instance_type"].default
    assert azureml_sizes.table().kind(default) == "gpu"
    assert azureml.AzureMLOptions(image=SERVE_IMAGE).instance_type == default


def test_every_gpu_of_the_size_table_has_a_compute_capability(tmp_path: Path):
    table = azureml_sizes.table()
    assert set(table.gpu.values()) <= set(table.gpus)
    broken = tmp_path / "sizes.yaml"
    data = yaml.safe_load(azureml_sizes.TABLE.read_text())
    data["gpu"]["Standard_NC8ads_B200_v6"] = "B200"
    broken.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="B200"):
        azureml_sizes.table(broken)


def test_paths_in_the_yaml_are_relative(tmp_path: Path, model_dir: Path):
    paths = _write(tmp_path / "a", model_dir, azureml.AzureMLOptions(image=SERVE_IMAGE), RolloutPolicy())
    text = paths["deployment"].read_text()
    assert str(tmp_path) not in paths["apply"].read_text()
    assert str(tmp_path) not in text
    data = yaml.safe_load(text)
    assert data["model"]["path"] == "./repository"


AZ = Path(__file__).resolve().parents[2] / "support" / "fake_az.py"


class Workspace:
    """apply.sh / rollback.sh run with `az` on PATH answering from one endpoint state file."""

    def __init__(self, tmp_path: Path) -> None:
        import sys

        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        (self.bin / "az").write_text(f'#!/bin/sh\nexec {sys.executable} {AZ} "$@"\n')
        (self.bin / "az").chmod(0o755)
        self.state, self.log = tmp_path / "az-state.json", tmp_path / "az.log"

    def run(self, script: Path):
        import os
        import subprocess

        self.log.write_text("")
        env = dict(os.environ, PATH=f"{self.bin}:{os.environ['PATH']}", FAKE_AZ_STATE=str(self.state),
                   FAKE_AZ_LOG=str(self.log))
        proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def calls(self, verb: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if f" {verb} " in f" {line} "]

    def registered(self, name: str, *versions: str) -> None:
        """Model versions the workspace registry already holds (what the MLflow registry registered)."""
        import json

        state = json.loads(self.state.read_text()) if self.state.is_file() else {"endpoints": {}}
        state.setdefault("models", {})[name] = {v: f"azureml://mlflow/{name}/{v}" for v in versions}
        self.state.write_text(json.dumps(state))

    @property
    def endpoint(self) -> dict:
        import json

        return json.loads(self.state.read_text())["endpoints"]["tuneline-llm"]


def test_rollouts_alternate_slots_and_roll_back(tmp_path: Path, model_dir: Path):
    ws = Workspace(tmp_path)
    ws.registered("tuneline-llm", "4", "5", "6")  # the workspace registry is the MLflow registry
    options = azureml.AzureMLOptions(image=SERVE_IMAGE)
    first = _write(tmp_path / "v4", model_dir, options, RolloutPolicy(), version=4)
    ws.run(first["apply"])
    order = [line.split()[1] + " " + line.split()[2] for line in ws.calls("create") + ws.calls("update")]
    assert order == ["online-endpoint create", "online-deployment create", "online-endpoint update"]
    assert ws.endpoint["traffic"] == {"green": 100}

    second = _write(tmp_path / "v5", model_dir, options, RolloutPolicy(), version=5)
    ws.run(second["apply"])  # green is live: the new version goes into blue, beside it
    assert ws.endpoint["traffic"] == {"green": 0, "blue": 100}
    assert {k: (v["model_name"], v["model_version"], v["tags"]["tuneline.source_version"])
            for k, v in ws.endpoint["deployments"].items()} == {"green": ("tuneline-llm-triton", "1", "4"),
                                                                  "blue": ("tuneline-llm-triton", "2", "5")}
    assert ws.endpoint["tags"] == {"tuneline_live": "blue", "tuneline_previous": "green"}

    ws.run(second["rollback"])
    assert ws.endpoint["traffic"] == {"green": 100, "blue": 0}

    canary = _write(tmp_path / "v6", model_dir, options, RolloutPolicy(strategy="canary", canary_percent=10), 6)
    ws.run(canary["apply"])  # green is live again: blue, idle, is updated in place
    assert [line.split()[1] for line in ws.calls("update")][:1] == ["online-deployment"]
    assert ws.endpoint["traffic"] == {"green": 90, "blue": 10}
    assert ws.endpoint["deployments"]["blue"]["model_version"] == "3"
    assert ws.endpoint["deployments"]["blue"]["tags"]["tuneline.model_uri"] == "models:/tuneline-llm/6"


def test_the_previous_files_could_not_be_applied(tmp_path: Path, model_dir: Path):
    """What was written before: traffic on the endpoint's create, naming a deployment that does not exist yet."""
    ws = Workspace(tmp_path)
    paths = _write(tmp_path / "v4", model_dir, azureml.AzureMLOptions(image=SERVE_IMAGE), RolloutPolicy())
    body = yaml.safe_load(paths["endpoint"].read_text())
    body["traffic"] = {"green": 100}
    paths["endpoint"].write_text(yaml.safe_dump(body))
    import subprocess

    with pytest.raises(AssertionError, match="names deployments that do not exist"):
        ws.run(paths["apply"])
    assert not subprocess.run(["bash", "-n", str(paths["rollback"])]).returncode


def test_options_are_checked():
    with pytest.raises(ValidationError, match="auth_mode"):
        azureml.AzureMLOptions(image=SERVE_IMAGE, auth_mode="aml_token")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="endpoint_name"):
        azureml.AzureMLOptions(endpoint_name="1-bad_name")


def test_the_repository_is_its_own_asset_at_the_next_version(tmp_path: Path, model_dir: Path):
    """`tuneline-llm:4` is the registered version in the workspace's registry (the MLflow registry is the
    workspace's): a deployment that gave it another folder's path was refused ("Asset paths cannot be
    updated"). The repository is `tuneline-llm-triton` with no version, so the SDK registers the next one."""
    from azure.ai.ml import load_online_deployment

    paths = _write(tmp_path / "azureml", model_dir, azureml.AzureMLOptions(image=SERVE_IMAGE), RolloutPolicy())
    model = load_online_deployment(paths["deployment"]).model
    assert model.name == "tuneline-llm-triton"
    assert model.version is None and model._auto_increment_version
    assert model.tags == {"tuneline.model_uri": URI, "tuneline.source_version": "4"}
    assert str(model.path).endswith("/repository")


def test_retire_deletes_the_idle_previous_slot_and_never_one_taking_traffic(tmp_path: Path, model_dir: Path):
    """Each rollout left the previous deployment at 0 %, its GPU instances billed until someone deleted it."""
    ws = Workspace(tmp_path)
    options = azureml.AzureMLOptions(image=SERVE_IMAGE)
    first = _write(tmp_path / "v4", model_dir, options, RolloutPolicy(), version=4)
    ws.run(first["apply"])
    with pytest.raises(AssertionError, match="no previous deployment to delete"):
        ws.run(first["retire"])
    second = _write(tmp_path / "v5", model_dir, options, RolloutPolicy(), version=5)
    ws.run(second["apply"])
    assert set(ws.endpoint["deployments"]) == {"green", "blue"} and ws.endpoint["traffic"]["green"] == 0
    ws.run(second["retire"])
    assert set(ws.endpoint["deployments"]) == {"blue"} and ws.endpoint["traffic"] == {"blue": 100}
    with pytest.raises(AssertionError, match="no previous deployment to return to"):
        ws.run(second["rollback"])
    canary = _write(tmp_path / "v6", model_dir, options, RolloutPolicy(strategy="canary", canary_percent=10), 6)
    ws.run(canary["apply"])  # into the freed slot, beside the live one
    assert ws.endpoint["traffic"] == {"blue": 90, "green": 10}
    with pytest.raises(AssertionError, match="blue still takes 90 % of the traffic"):
        ws.run(canary["retire"])
    assert set(ws.endpoint["deployments"]) == {"green", "blue"}


def test_a_cpu_size_takes_few_requests_at_once_so_the_rest_get_an_early_429(tmp_path: Path, model_dir: Path):
    from azure.ai.ml import load_online_deployment

    cpu = azureml.AzureMLOptions(image=SERVE_IMAGE, instance_type="Standard_DS3_v2")
    paths = _write(tmp_path / "a", model_dir, cpu, RolloutPolicy())
    assert load_online_deployment(paths["deployment"]).request_settings.max_concurrent_requests_per_instance == 2
    options = azureml.AzureMLOptions(image=SERVE_IMAGE, instance_type="Standard_DS3_v2",
                                     max_concurrent_requests_per_instance=8)
    assert options.concurrency == 8

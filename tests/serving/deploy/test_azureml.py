"""Azure ML endpoint + deployment YAML: loadable by azure-ai-ml's own loaders, relative paths, auth mode and probes
as configured; apply.sh creates the endpoint, then the deployment in the idle slot, then the traffic, and
rollback.sh returns to the previous slot (run against tests/support/fake_az.py: no workspace is reachable here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tuneline.serving.deploy import azureml
from tuneline.serving.deploy.policy import RolloutPolicy

URI = "models:/tuneline-llm/4"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


def _write(out: Path, model_dir: Path, options: azureml.AzureMLOptions, policy: RolloutPolicy, version: int = 4):
    return azureml.write(
        out,
        options,
        policy,
        model_dir=model_dir,
        model_name="tuneline-llm",
        model_version=version,
        model_uri=f"models:/tuneline-llm/{version}",
    )


def test_canary_files_load_with_the_sdk(tmp_path: Path, model_dir: Path):
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    out = tmp_path / "azureml"
    options = azureml.AzureMLOptions(
        auth_mode="key", instance_type="Standard_NC24ads_A100_v4", instance_count=2
    )
    paths = _write(out, model_dir, options, RolloutPolicy(strategy="canary", canary_percent=10))
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
    assert deployment.code_configuration.scoring_script == "score.py"
    assert (out / "code" / "score.py").read_text() == azureml.SCORE_SCRIPT.read_text()
    assert (out / "model" / "config.json").is_file() and (out / "environment" / "conda.yaml").is_file()


def test_paths_in_the_yaml_are_relative(tmp_path: Path, model_dir: Path):
    paths = _write(tmp_path / "a", model_dir, azureml.AzureMLOptions(), RolloutPolicy())
    text = paths["deployment"].read_text()
    assert str(tmp_path) not in paths["apply"].read_text()
    assert str(tmp_path) not in text
    data = yaml.safe_load(text)
    assert data["model"]["path"] == "./model" and data["code_configuration"]["code"] == "./code"
    assert data["environment"]["conda_file"] == "./environment/conda.yaml"


def test_the_conda_file_pins_versions_a_public_index_serves(tmp_path: Path, model_dir: Path):
    from importlib import metadata

    _write(tmp_path / "a", model_dir, azureml.AzureMLOptions(), RolloutPolicy())
    pins = yaml.safe_load((tmp_path / "a" / "environment" / "conda.yaml").read_text())["dependencies"][-1]["pip"]
    assert not [p for p in pins if "+" in p], pins  # `torch==2.13.0+cpu` exists only on the PyTorch CPU index
    torch = metadata.version("torch")
    assert f"torch=={torch.split('+')[0]}" in pins


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
    options = azureml.AzureMLOptions()
    first = _write(tmp_path / "v4", model_dir, options, RolloutPolicy(), version=4)
    ws.run(first["apply"])
    order = [line.split()[1] + " " + line.split()[2] for line in ws.calls("create") + ws.calls("update")]
    assert order == ["online-endpoint create", "online-deployment create", "online-endpoint update"]
    assert ws.endpoint["traffic"] == {"green": 100}

    second = _write(tmp_path / "v5", model_dir, options, RolloutPolicy(), version=5)
    ws.run(second["apply"])  # green is live: the new version goes into blue, beside it
    assert ws.endpoint["traffic"] == {"green": 0, "blue": 100}
    assert {k: (v["model_name"], v["model_version"], v["tags"]["tuneline.source_version"])
            for k, v in ws.endpoint["deployments"].items()} == {"green": ("tuneline-llm-merged", "1", "4"),
                                                                  "blue": ("tuneline-llm-merged", "2", "5")}
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
    paths = _write(tmp_path / "v4", model_dir, azureml.AzureMLOptions(), RolloutPolicy())
    body = yaml.safe_load(paths["endpoint"].read_text())
    body["traffic"] = {"green": 100}
    paths["endpoint"].write_text(yaml.safe_dump(body))
    import subprocess

    with pytest.raises(AssertionError, match="names deployments that do not exist"):
        ws.run(paths["apply"])
    assert not subprocess.run(["bash", "-n", str(paths["rollback"])]).returncode


def test_options_are_checked():
    with pytest.raises(ValidationError, match="auth_mode"):
        azureml.AzureMLOptions(auth_mode="aml_token")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="endpoint_name"):
        azureml.AzureMLOptions(endpoint_name="1-bad_name")


def test_score_script_serves_a_merged_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The scoring script itself, run the way the Azure ML inference server runs it: init() then run()."""
    import importlib.util
    import json

    from tests.support.tinymodel import build_tiny_llama

    build_tiny_llama(tmp_path / "model")
    (tmp_path / "model" / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    )
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    spec = importlib.util.spec_from_file_location("score", azureml.SCORE_SCRIPT)
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    score.init()
    answer = score.run(json.dumps({"prompts": ["hello", "printer offline"], "max_new_tokens": 4}))
    assert len(answer["outputs"]) == 2 and all(isinstance(o, str) for o in answer["outputs"])
    assert "error" in score.run("not json") and "error" in score.run(json.dumps({"prompts": [1]}))
    # The OpenAI chat-completions body, as the local endpoint takes it, with the training system prompt.
    (tmp_path / "model" / "serving.json").write_text(json.dumps({"system_prompt": "Triage tickets."}))
    score.init()
    chat = score.run(json.dumps({"messages": [{"role": "user", "content": "printer offline"}], "max_tokens": 4}))
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    usage = chat["usage"]
    assert usage["completion_tokens"] <= 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    own_system = [{"role": "system", "content": "x"}, {"role": "user", "content": "printer offline"}]
    bare = score.run(json.dumps({"messages": own_system}))
    assert bare["usage"]["prompt_tokens"] < usage["prompt_tokens"]  # the training system prompt was added before
    assert "error" in score.run(json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}))


def test_score_script_renders_prompts_as_training_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Llama 3.x stamps a date into the system header: serving must render it as training did, not with today's."""
    import importlib.util
    import json

    from tests.llm.ml.families import FAMILIES, build
    from tuneline.llm.ml.chat import render
    from tuneline.serving.repository import SERVING_FILE, serving_settings

    folder = build(FAMILIES["llama3"], tmp_path / "model")
    (folder / SERVING_FILE).write_text(json.dumps(serving_settings(folder)))
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    spec = importlib.util.spec_from_file_location("score", azureml.SCORE_SCRIPT)
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    score.init()
    conversation = [{"role": "system", "content": "Triage."}, {"role": "user", "content": "printer offline"}]
    served = score.render(conversation)
    assert "Today Date: 26 Jul 2024" in served
    assert served == render(score._state["tokenizer"], conversation, generation_prompt=True)


def test_the_merged_model_is_its_own_asset_at_the_next_version(tmp_path: Path, model_dir: Path):
    """`tuneline-llm:4` is the registered version in the workspace's registry (the MLflow registry is the
    workspace's): a deployment that gave it the merged folder's path was refused ("Asset paths cannot be
    updated"). The merged folder is `tuneline-llm-merged` with no version, so the SDK registers the next one."""
    from azure.ai.ml import load_online_deployment

    paths = _write(tmp_path / "azureml", model_dir, azureml.AzureMLOptions(), RolloutPolicy())
    model = load_online_deployment(paths["deployment"]).model
    assert model.name == "tuneline-llm-merged"
    assert model.version is None and model._auto_increment_version
    assert model.tags == {"tuneline.model_uri": URI, "tuneline.source_version": "4"}
    assert str(model.path).endswith("/model")


@pytest.mark.parametrize("capability", [None, (7, 0), (7, 5), (8, 0), (8, 6), (8, 9), (9, 0)])
def test_the_score_script_loads_the_weights_in_the_dtype_the_gpu_has_tensor_cores_for(capability):
    """The default instance is a T4 (sm_75), which has no bf16 tensor cores: the script loaded bf16 on any GPU."""
    import importlib.util

    from tuneline.llm.ml.device import choose

    spec = importlib.util.spec_from_file_location("score", azureml.SCORE_SCRIPT)
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    expected = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}[choose(capability).mixed_precision]
    assert score.serving_dtype(capability) == expected
    assert azureml.AzureMLOptions().instance_type == "Standard_NC4as_T4_v3"
    assert score.serving_dtype((7, 5)) == "float16"


def test_retire_deletes_the_idle_previous_slot_and_never_one_taking_traffic(tmp_path: Path, model_dir: Path):
    """Each rollout left the previous deployment at 0 %, its GPU instances billed until someone deleted it."""
    ws = Workspace(tmp_path)
    options = azureml.AzureMLOptions()
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


def test_the_inference_server_is_pinned(tmp_path: Path, model_dir: Path):
    _write(tmp_path / "a", model_dir, azureml.AzureMLOptions(), RolloutPolicy())
    pins = yaml.safe_load((tmp_path / "a" / "environment" / "conda.yaml").read_text())["dependencies"][-1]["pip"]
    assert "azureml-inference-server-http==1.5.1" in pins

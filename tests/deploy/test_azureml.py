"""Azure ML endpoint + deployment YAML: loadable by azure-ai-ml's own loaders, relative paths, traffic split,
auth mode and probes as configured."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tuneline.deploy import azureml
from tuneline.deploy.policy import RolloutPolicy

URI = "models:/tuneline-llm/4"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


def _write(
    out: Path, model_dir: Path, options: azureml.AzureMLOptions, policy: RolloutPolicy, first: bool = False
):
    return azureml.write(
        out,
        options,
        policy,
        model_dir=model_dir,
        model_name="tuneline-llm",
        model_version=4,
        model_uri=URI,
        first=first,
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
    assert endpoint.auth_mode == "key" and endpoint.traffic == {"green": 10, "blue": 90}
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
    assert str(tmp_path) not in text
    data = yaml.safe_load(text)
    assert data["model"]["path"] == "./model" and data["code_configuration"]["code"] == "./code"
    assert data["environment"]["conda_file"] == "./environment/conda.yaml"


def test_blue_green_and_first_deployment_traffic(tmp_path: Path, model_dir: Path):
    from azure.ai.ml import load_online_endpoint

    options = azureml.AzureMLOptions(slot="blue", auth_mode="aad_token")
    paths = _write(tmp_path / "b", model_dir, options, RolloutPolicy())
    endpoint = load_online_endpoint(paths["endpoint"])
    assert endpoint.traffic == {"blue": 100, "green": 0} and endpoint.auth_mode == "aad_token"
    paths = _write(
        tmp_path / "c", model_dir, options, RolloutPolicy(strategy="canary", canary_percent=5), first=True
    )
    assert load_online_endpoint(paths["endpoint"]).traffic == {"blue": 100}


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

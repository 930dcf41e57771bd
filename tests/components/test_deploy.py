"""deploy for the cluster targets (no server needed), run as the runner runs it after a real registration:
the champion is resolved from the registry and the triton, kserve and azureml outputs validate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.components.tuned_fixtures import REPO, make_adapter, make_metrics, run_register, step_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _deploy(env: dict[str, str], out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    cmd = [
        sys.executable,
        "-m",
        "components.deploy",
        "--endpoint-out",
        str(out / "endpoint"),
        "--status-out",
        str(out / "status"),
        "--deployment-out",
        str(out / "deployment.json"),
        "--out",
        str(out / "files"),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    record = (
        json.loads((out / "deployment.json").read_text()) if (out / "deployment.json").is_file() else None
    )
    return proc, record


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    root = tmp_path_factory.mktemp("deploy")
    env = step_env(root / "home")
    adapter = make_adapter_in(env, root / "model")
    run_register(adapter, make_metrics(root / "m1.json", tuned=0.6), root / "o1", env)
    run_register(adapter, make_metrics(root / "m2.json", tuned=0.4), root / "o2", env)  # not promoted
    return env, root


def make_adapter_in(env: dict[str, str], out: Path) -> Path:
    """Build the adapter with the base cached under the store's TUNELINE_HOME, as train would."""
    import os

    previous = os.environ.get("TUNELINE_HOME")
    os.environ["TUNELINE_HOME"] = env["TUNELINE_HOME"]
    try:
        return make_adapter(out)
    finally:
        if previous is None:
            del os.environ["TUNELINE_HOME"]
        else:
            os.environ["TUNELINE_HOME"] = previous


def test_kserve_canary_deploys_the_champion(registry, tmp_path: Path):
    env, _ = registry
    proc, record = _deploy(
        env,
        tmp_path,
        "--model-uri",
        "models:/tuneline-llm/2",
        "--target",
        "kserve",
        "--strategy",
        "canary",
        "--canary-percent",
        "25",
        "--max-replicas",
        "4",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert record["status"] == "rendered" and record["model_uri"] == "models:/tuneline-llm/1"
    assert (tmp_path / "status").read_text() == "rendered"
    from tuneline.serving.deploy import kserve

    docs = [d for d in yaml.safe_load_all((tmp_path / "files" / "inferenceservice.yaml").read_text()) if d]
    assert kserve.validate(docs) == []
    predictor = docs[0]["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 25 and predictor["maxReplicas"] == 4
    assert docs[0]["metadata"]["annotations"]["tuneline.io/model-uri"] == "models:/tuneline-llm/1"
    # clients are sent to the engine's model, as on Azure ML, not the coupled plain-generate one behind /infer
    assert record["endpoint"] == ("http://tuneline-llm.tuneline.svc.cluster.local"
                                  "/v2/models/tuneline-llm-stream/generate")


def test_azureml_and_triton_targets(registry, tmp_path: Path):
    env, _ = registry
    # as every target sets it for this step (component.yaml `deploys_image`), from the pipeline's image plan
    env = {**env, "TUNELINE_DEPLOY_IMAGE": "acr.example.io/tuneline/serve:1.2.0"}
    proc, record = _deploy(
        env,
        tmp_path / "aml",
        "--model-uri",
        "models:/tuneline-llm/2",
        "--alias",
        "",
        "--target",
        "azureml",
        "--auth-mode",
        "key",
        "--slot",
        "blue",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert record["model_uri"] == "models:/tuneline-llm/2" and record["details"]["traffic"] == {"new": 100, "live": 0}
    assert record["details"]["apply"] == ["bash apply.sh"]
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    files = tmp_path / "aml" / "files"
    assert load_online_endpoint(files / "endpoint.yml").auth_mode == "key"
    deployment = load_online_deployment(files / "deployment.yml")
    assert deployment.environment.image == "acr.example.io/tuneline/serve:1.2.0"
    # Its own asset at the next version: tuneline-llm:2 is the registered (adapter) version in the workspace.
    assert deployment.model.name == "tuneline-llm-triton" and deployment.model.version is None
    assert deployment.model.tags["tuneline.source_version"] == "2"
    assert record["details"]["retire"][0].startswith("bash retire.sh")
    # The Triton repository the local server and KServe serve, for the default GPU size: the vLLM twin, and the
    # adapter on its unmerged base, as locally with shared adapters.
    repository = files / "repository"
    assert record["details"]["engine"] == "vllm"
    assert 'value: { string_value: "vllm" }' in (repository / "tuneline-llm-stream" / "config.pbtxt").read_text()
    assert "KIND_GPU" in (repository / "tuneline-llm" / "config.pbtxt").read_text()
    assert [p.name for p in (repository / "tuneline-llm" / "1" / "adapters").iterdir()] == ["tuneline-llm-2"]
    assert deployment.environment.inference_config.scoring_route.path == "/v2/models/tuneline-llm-stream/generate"
    assert record["endpoint"].endswith("/v2/models/tuneline-llm-stream/generate")

    schema = REPO / "data" / "sample" / "tickets.schema.json"
    proc, record = _deploy(
        env,
        tmp_path / "tri",
        "--model-uri",
        "models:/tuneline-llm/1",
        "--target",
        "triton",
        "--instance-kind",
        "cpu",
        "--response-schema",
        str(schema),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    repo = tmp_path / "tri" / "files" / "tuneline-llm"
    assert "kind: KIND_CPU" in (repo / "config.pbtxt").read_text()
    assert (repo / "1" / "hf_model" / "config.json").is_file() and (repo / "1" / "model.py").is_file()
    # The deployment's output contract travels with the repository, for the engine to constrain answers to.
    assert json.loads((repo / "1" / "serving.json").read_text())["guide"] == {"json": json.loads(schema.read_text())}

    bad = tmp_path / "bad.schema.json"
    bad.write_text('{"type": "objct"}')
    proc, _ = _deploy(env, tmp_path / "tri-bad", "--model-uri", "models:/tuneline-llm/1", "--target", "triton",
                      "--response-schema", str(bad))
    assert proc.returncode == 2
    assert f"--response-schema {bad}: response_schema is not a valid JSON schema" in proc.stderr


def test_unknown_alias_and_bad_input_exit_2(registry, tmp_path: Path):
    env, _ = registry
    proc, _ = _deploy(
        env,
        tmp_path / "a",
        "--model-uri",
        "models:/tuneline-llm/1",
        "--alias",
        "production",
        "--target",
        "kserve",
    )
    assert proc.returncode == 2 and "no version with alias 'production'" in proc.stderr
    proc, _ = _deploy(
        env,
        tmp_path / "b",
        "--model-uri",
        "models:/tuneline-llm/1",
        "--target",
        "kserve",
        "--strategy",
        "canary",
        "--canary-percent",
        "100",
    )
    assert proc.returncode == 2 and "canary_percent" in proc.stderr


def test_azureml_without_a_serve_image_stops_naming_both_ways_to_give_one(registry, tmp_path: Path):
    env, _ = registry
    env = {k: v for k, v in env.items() if k != "TUNELINE_DEPLOY_IMAGE"}
    proc, _ = _deploy(env, tmp_path / "aml", "--model-uri", "models:/tuneline-llm/2", "--alias", "",
                      "--target", "azureml")
    assert proc.returncode != 0
    assert "no serve image" in proc.stderr and "TUNELINE_DEPLOY_IMAGE" in proc.stderr
    assert not (tmp_path / "aml" / "files" / "deployment.yml").exists()

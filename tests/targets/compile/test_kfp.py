import json

import pytest
import yaml
from google.protobuf import json_format
from kfp import components
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2
from readback import TOY, TOY_MULTINODE, kfp_documents, variant

from tuneline.graph import build_graph
from tuneline.spec import SpecError, load_pipeline
from tuneline.targets.build import compile_graph
from tuneline.targets.kfp.options import KfpOptions
from tuneline.targets.options import CompileOptions


def _strict(spec: dict, platform: dict) -> None:
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    if platform:
        json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)
        for config in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
            json_format.ParseDict(config, kubernetes_executor_config_pb2.KubernetesExecutorConfig(),
                                  ignore_unknown_fields=False)


@pytest.mark.parametrize("stem", ["toy", "toy-multinode"])
def test_package_loads_with_kfp_and_strict_protobuf(compiled, stem):
    path = compiled[stem] / "kfp" / "pipeline.yaml"
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == stem
    assert set(loaded.component_spec.inputs) == {"dataset", "lr", "base"}
    _strict(*kfp_documents(path))


def _executor(spec: dict, platform: dict, step: str) -> tuple[dict, dict]:
    key = f"exec-{step.replace('_', '-')}"
    return (spec["deploymentSpec"]["executors"][key]["container"],
            platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get(key, {}))


def _step_command(container: dict) -> list:
    """The command behind the output-folder wrapper every compiled command starts with (test_kfp_backend.py)."""
    command = container["command"]
    assert command[:3] == ["python", "-m", "tuneline.step.outdirs"]
    return command[command.index("--") + 1:]


def test_gpu_train_step_has_tolerations_accelerator_shm_and_resume_volume(compiled):
    spec, platform = kfp_documents(compiled["toy"] / "kfp" / "pipeline.yaml")
    container, k8s = _executor(spec, platform, "fit")
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert container["resources"]["accelerator"]["resourceCount"] == "1"
    assert container["resources"]["resourceMemoryLimit"] == "8Gi"
    tolerations = {(t["key"], t.get("value"), t["effect"]) for t in k8s["tolerations"]}
    assert tolerations == {("sku", "gpu", "NoSchedule"),
                           ("kubernetes.azure.com/scalesetpriority", "spot", "NoSchedule")}
    assert k8s["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "4Gi",
                                      "volumeName": "dshm"}]
    assert {"key": "tuneline.dev/pool", "value": "gpuspot"} in [
        {"key": k, "value": v} for k, v in k8s["nodeSelector"]["labels"].items()]
    assert k8s["nodeSelector"]["labels"]["tuneline.dev/accelerator"] == "nvidia-a100"
    assert k8s["pvcMount"][0]["mountPath"] == "/mnt/checkpoints"
    assert k8s["pvcMount"][0]["constant"] == "tuneline-checkpoints"
    assert k8s["activeDeadlineSeconds"] == "7200" or k8s["activeDeadlineSeconds"] == 7200
    assert {e["name"] for e in container["env"]} >= {"TUNELINE_STEP", "TUNELINE_CHECKPOINT_ROOT"}
    # The tracking URI comes from the ConfigMap k8s/kubeflow/ creates, the basic-auth login from the Secret the
    # docs create there (--mlflow-secret, default tuneline-mlflow-login).
    assert k8s["configMapAsEnv"][0]["configMapName"] == "tuneline-mlflow"
    assert [e["envVar"] for e in k8s["configMapAsEnv"][0]["keyToEnv"]] == ["MLFLOW_TRACKING_URI"]
    assert k8s["secretAsEnv"][0]["secretName"] == "tuneline-mlflow-login"
    assert [e["envVar"] for e in k8s["secretAsEnv"][0]["keyToEnv"]] == ["MLFLOW_TRACKING_USERNAME",
                                                                        "MLFLOW_TRACKING_PASSWORD"]
    # A CPU step gets neither GPU toleration nor shared memory.
    cpu_container, cpu_k8s = _executor(spec, platform, "make_data")
    assert "tolerations" not in cpu_k8s and "emptyDirMounts" not in cpu_k8s
    assert cpu_container["resources"]["resourceCpuRequest"] == "2"


def test_command_is_the_local_command_with_placeholders(compiled):
    spec, platform = kfp_documents(compiled["toy"] / "kfp" / "pipeline.yaml")
    command = _step_command(_executor(spec, platform, "make_data")[0])
    assert command[:3] == ["python", "-m", "components.make_data"]
    assert "{{$.inputs.artifacts['raw'].path}}" in command
    # Text around a reference stays in the same argument, as plain text the backend's launcher substitutes into.
    assert command[command.index("--ratio") + 2] == "--seed={{$.inputs.parameters['seed']}}"
    # `$[[--extra ...]]` of an input the step never sets is dropped at compile time (no IfPresent: K10 in
    # tools.conformance.kfp).
    assert not any("extra" in str(token) for token in command)
    assert "extra" not in spec["components"]["comp-make-data"]["inputDefinitions"].get("artifacts", {})
    assert command[-1] == "{{$.outputs.parameters['rows'].output_file}}"


def test_boolean_value_output_feeds_the_gate_of_each_conditional_step(compiled):
    spec, platform = kfp_documents(compiled["toy"] / "kfp" / "pipeline.yaml")
    assert spec["components"]["comp-check"]["outputDefinitions"]["parameters"]["passed"]["parameterType"] == \
        "BOOLEAN"
    tasks = spec["root"]["dag"]["tasks"]
    assert not [t for t in tasks if t.startswith("condition")]  # no dsl.If: the step applies its gate
    for step in ("publish", "announce"):
        assert tasks[step]["inputs"]["parameters"]["tuneline_gate"]["taskOutputParameter"] == {
            "outputParameterKey": "passed", "producerTask": "check"}
    command = _step_command(_executor(spec, platform, "publish")[0])
    assert command[:5] == ["python", "-m", "tuneline.step.gate", "--gate",
                           "{{$.inputs.parameters['tuneline_gate']}}"]
    assert command[command.index("--") + 1:][:3] == ["python", "-m", "components.publish"]


def test_retry_and_caching_follow_the_spec(compiled):
    spec, _ = kfp_documents(compiled["toy"] / "kfp" / "pipeline.yaml")
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["fit"]["retryPolicy"] == {"backoffDuration": "30s", "backoffFactor": 2.0,
                                           # 3 attempts of the 2h timeout + 30 s + 60 s backoff + 1 h
                                           "backoffMaxDuration": "25290s", "maxRetryCount": 2}
    assert tasks["make-data"]["cachingOptions"] == {"enableCache": True}
    assert tasks["check"]["cachingOptions"] == {}  # the component says cache: false (proto3 omits false)


def test_no_cache_turns_every_cache_off(tmp_path):
    graph = build_graph(load_pipeline(TOY))
    out = compile_graph(graph, ("kfp",), tmp_path, CompileOptions(no_cache=True))
    spec, _ = kfp_documents(out.folder / "kfp" / "pipeline.yaml")
    tasks = spec["root"]["dag"]["tasks"]
    assert all(not t.get("cachingOptions", {}).get("enableCache") for t in tasks.values() if "cachingOptions" in t)
    assert json.loads((out.folder / "kfp" / "recurring_run.json").read_text())["enable_caching"] is False


def test_single_node_multi_gpu_runs_torchrun_in_the_pod(tmp_path):
    path = variant(tmp_path, "kubeflow: {gpus: 1,", "kubeflow: {gpus: 2, processes_per_node: 2,")
    out = compile_graph(build_graph(load_pipeline(path)), ("kfp",), tmp_path / "out", CompileOptions())
    spec, platform = kfp_documents(out.folder / "kfp" / "pipeline.yaml")
    command = _step_command(_executor(spec, platform, "fit")[0])
    assert command[:3] == ["python", "-m", "tuneline.step.resume"]  # resume: true outputs (test_resume_ir)
    step = command[command.index("--") + 1:]
    assert step[:6] == ["torchrun", "--nnodes=1", "--nproc-per-node=2", "--standalone", "-m", "components.fit"]


def test_multinode_step_becomes_a_trainjob_launcher(compiled):
    folder = compiled["toy-multinode"] / "kfp"
    spec, platform = kfp_documents(folder / "pipeline.yaml")
    container, k8s = _executor(spec, platform, "fit")
    assert _step_command(container)[:3] == ["python", "-m", "tuneline.targets.kfp.launch"]
    # The launcher needs the `kubernetes` client: it runs in the control image, the job in the step's own.
    assert container["image"] == "registry.example.com/toy/control:1.4.0"
    assert "accelerator" not in container.get("resources", {})  # the launcher pod only waits
    assert {e["name"]: e["fieldPath"] for e in k8s["fieldPathAsEnv"]} == {
        "TUNELINE_RUN_ID": "metadata.labels['pipeline/runid']", "TUNELINE_POD_NAME": "metadata.name",
        "TUNELINE_POD_UID": "metadata.uid"}
    manifest = json.loads(container["command"][container["command"].index("--manifest") + 1])
    assert manifest == yaml.safe_load((folder / "trainjob-fit.yaml").read_text())
    assert manifest["kind"] == "TrainJob" and manifest["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert manifest["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert manifest["spec"]["activeDeadlineSeconds"] == 7200  # the step's timeout: 2h
    trainer = manifest["spec"]["trainer"]
    assert trainer["image"] == "registry.example.com/toy/toy-gpu:1.4.0"
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    # Behind the wrapper that stops the job when its launcher is gone (tuneline.targets.kfp.watch).
    assert trainer["command"][:5] == ["python", "-m", "tuneline.targets.kfp.watch", "--heartbeat",
                                      "/mnt/checkpoints/$(TUNELINE_RUN_ID)/fit/launcher-heartbeat"]
    job_command = trainer["command"][trainer["command"].index("--") + 1:]
    assert job_command[:4] == ["torchrun", "--nnodes=2", "--nproc-per-node=4", "-m"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4
    pod = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert pod["name"] == "node"
    pod = pod["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert {t["key"] for t in pod["spec"]["tolerations"]} == {"sku", "kubernetes.azure.com/scalesetpriority"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}} in pod["spec"]["volumes"]
    assert k8s["pvcMount"][0]["mountPath"] == "/mnt/checkpoints"


def test_launcher_pytorchjob_keeps_the_v1_operator(tmp_path):
    path = variant(tmp_path, "nodes: 2, processes_per_node: 4, accelerator",
                   "nodes: 2, processes_per_node: 4, launcher: pytorchjob, accelerator", source=TOY_MULTINODE)
    out = compile_graph(build_graph(load_pipeline(path)), ("kfp",), tmp_path / "out", CompileOptions())
    manifest = yaml.safe_load((out.folder / "kfp" / "pytorchjob-fit.yaml").read_text())
    assert manifest["kind"] == "PyTorchJob" and manifest["apiVersion"] == "kubeflow.org/v1"
    assert manifest["spec"]["runPolicy"]["activeDeadlineSeconds"] == 7200
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    pod = replicas["Worker"]["template"]
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    command = pod["spec"]["containers"][0]["command"]
    assert command[command.index("--") + 1:][:4] == ["torchrun", "--nnodes=2", "--nproc-per-node=4", "-m"]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_a_step_name_with_underscores_gives_a_dns_1035_job_name(tmp_path):
    path = variant(tmp_path, "  fit:\n", "  train_llm:\n", source=TOY_MULTINODE)
    path.write_text(path.read_text().replace("steps.fit.", "steps.train_llm."))
    out = compile_graph(build_graph(load_pipeline(path)), ("kfp",), tmp_path / "out", CompileOptions())
    manifest = yaml.safe_load((out.folder / "kfp" / "trainjob-train_llm.yaml").read_text())
    assert manifest["metadata"]["name"] == "toy-multinode-train-llm"


def test_step_fed_by_a_conditional_step_must_share_its_condition(tmp_path):
    path = variant(tmp_path, "    when: ${{steps.check.outputs.passed}}\n    inputs: {model_uri",
                   "    inputs: {model_uri")
    with pytest.raises(SpecError, match="'publish' runs only when"):
        load_pipeline(path)


def test_resume_output_runs_behind_the_wrapper_with_the_pvc_and_its_root(compiled):
    """`resume: true` (fit's checkpoints): the PVC at the mount path, TUNELINE_CHECKPOINT_ROOT naming it, and the
    command behind tuneline.step.resume, which keys the store by every input (tests/step/test_resume.py)."""
    spec, platform = kfp_documents(compiled["toy"] / "kfp" / "pipeline.yaml")
    container, k8s = _executor(spec, platform, "fit")
    assert k8s["pvcMount"] == [{"constant": "tuneline-checkpoints", "mountPath": "/mnt/checkpoints",
                                "pvcNameParameter": {"runtimeValue": {"constant": "tuneline-checkpoints"}}}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TUNELINE_CHECKPOINT_ROOT"] == "/mnt/checkpoints"
    command = _step_command(container)
    split = command.index("--")
    wrapper, step = command[:split], command[split + 1:]
    assert wrapper[:5] == ["python", "-m", "tuneline.step.resume", "--component", "components/fit"]
    assert "--root" not in wrapper and "--in-output" not in wrapper  # the root is the mounted volume's env var
    pairs = [w for w in wrapper[5:] if "=" in w]
    assert "checkpoints={{$.outputs.artifacts['checkpoints'].path}}" in pairs
    assert "train={{$.inputs.artifacts['train'].path}}" in pairs
    assert {p.split("=")[0] for p in pairs} == {"checkpoints", "train", "rows", "base", "lr", "method"}
    assert step[:3] == ["python", "-m", "components.fit"]
    assert "{{$.outputs.artifacts['checkpoints'].path}}" in step
    # A step without a resume: true output: no volume, no root, no wrapper.
    cpu_container, cpu_k8s = _executor(spec, platform, "make_data")
    assert "pvcMount" not in cpu_k8s
    assert "TUNELINE_CHECKPOINT_ROOT" not in {e["name"] for e in cpu_container.get("env", [])}
    assert "tuneline.step.resume" not in cpu_container["command"]


def test_steps_that_load_a_model_share_a_hub_cache_and_get_the_hub_token(tmp_path):
    """train and evaluate (inputs of kind model_ref) download to one Hugging Face cache on the checkpoint volume,
    and with --hf-secret get HF_TOKEN for gated models; prepare loads none and gets neither."""
    from pathlib import Path

    from tuneline.targets.build import compile_file

    root = Path(__file__).resolve().parents[3] / "pipelines"
    options = CompileOptions(platform={"kfp": KfpOptions(hf_secret="hf-login")})
    out = compile_file(root / "finetune-gpu.yaml", ("kfp",), tmp_path, options)
    spec, platform = kfp_documents(tmp_path / "finetune-gpu" / "kfp" / "pipeline.yaml")
    for step in ("train", "evaluate"):
        container, k8s = _executor(spec, platform, step)
        assert {"name": "HF_HOME", "value": "/mnt/checkpoints/hf-cache"} in container["env"]
        assert k8s["pvcMount"][0]["mountPath"] == "/mnt/checkpoints"
        hub = [s for s in k8s["secretAsEnv"] if s["secretName"] == "hf-login"]
        assert [e["envVar"] for e in hub[0]["keyToEnv"]] == ["HF_TOKEN"]
    container, k8s = _executor(spec, platform, "prepare")
    assert "HF_HOME" not in {e["name"] for e in container.get("env", [])} and "pvcMount" not in k8s
    assert out is not None
    # The multi-node step's job pods get the same.
    compile_file(root / "finetune-multinode.yaml", ("kfp",), tmp_path, options)
    job = yaml.safe_load(next((tmp_path / "finetune-multinode" / "kfp").glob("*job-train.yaml")).read_text())
    env = job["spec"]["trainer"]["env"]
    assert {"name": "HF_HOME", "value": "/mnt/checkpoints/hf-cache"} in env
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-login", "key": "HF_TOKEN"}}} in env

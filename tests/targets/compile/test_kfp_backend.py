"""What the KFP backend does that kfp.local does not (K1-K7 in tools.conformance.kfp), checked on the compiled IR
of every pipeline in pipelines/, plus the data path: object-store importer URIs and the content fingerprint that
KFP's name-based cache needs."""

import json
from pathlib import Path

import pytest
import yaml
from readback import kfp_documents

from tools.conformance.kfp_backend import (
    BackendError,
    load_kubeflow_table,
    package_problems,
    platform_fields,
    platform_problems,
    resolve_argv,
    versions_markdown,
)
from tuneline.graph import build_graph
from tuneline.spec import OutputRef, SpecError, load_pipeline
from tuneline.step.command import render_command
from tuneline.step.fingerprint import FINGERPRINT_MODULE
from tuneline.step.gate import GATE_INPUT, GATE_MODULE
from tuneline.step.outdirs import OUTDIRS_MODULE
from tuneline.step.resume import RESUME_MODULE
from tuneline.targets.build import compile_graph
from tuneline.targets.kfp.compiler import FINGERPRINT_PREFIX, OBJECT_STORE_PREFIXES
from tuneline.targets.kfp.launch import LAUNCH_MODULE, parse_args
from tuneline.targets.kfp.options import DEFAULT_KFP_PIPELINE_ROOT, KfpOptions
from tuneline.targets.options import CompileOptions
from tuneline.targets.placement import CHECKPOINT_MOUNT

ROOT = Path(__file__).resolve().parents[3]
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))


def _compile(path: Path, out: Path, overrides: dict | None = None,
             options: CompileOptions | None = None) -> tuple[dict, dict]:
    graph = build_graph(load_pipeline(path, overrides)).for_target("kfp")
    folder = compile_graph(graph, ("kfp",), out, options or CompileOptions()).folder
    return kfp_documents(folder / "kfp" / "pipeline.yaml")


@pytest.fixture(scope="module", params=PIPELINES, ids=[p.stem for p in PIPELINES])
def ir(request, tmp_path_factory):
    return request.param, *_compile(request.param, tmp_path_factory.mktemp(request.param.stem))


def _tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def _component(spec: dict, task: dict) -> dict:
    return spec["components"][task["componentRef"]["name"]]


def _executor(spec: dict, task: dict) -> dict:
    return spec["deploymentSpec"]["executors"][_component(spec, task)["executorLabel"]]


def _is(task: dict, kind: str) -> bool:
    return task["componentRef"]["name"].startswith(f"comp-{kind}")


def test_k1_every_artifact_a_step_reads_is_a_declared_output_of_its_producer(ir):
    """The launcher registers declared output artifacts (uploadOutputArtifacts); nothing else reaches a consumer."""
    _, spec, _ = ir
    tasks = _tasks(spec)
    for name, task in tasks.items():
        for source in task.get("inputs", {}).get("artifacts", {}).values():
            ref = source["taskOutputArtifact"]
            producer = _component(spec, tasks[ref["producerTask"]])
            assert ref["outputArtifactKey"] in producer["outputDefinitions"]["artifacts"], (name, ref)


def test_k2_every_command_creates_its_output_folders_first(ir):
    """The launcher creates only each output's parent (prepareOutputFolders); a folder output must exist."""
    _, spec, _ = ir
    for name, task in _tasks(spec).items():
        if _is(task, "importer") or _is(task, "fingerprint"):
            continue
        command = _executor(spec, task)["container"]["command"]
        assert command[:3] == ["python", "-m", OUTDIRS_MODULE], name
        wrapper = command[3:command.index("--")]
        outputs = _component(spec, task).get("outputDefinitions", {})
        for artifact in outputs.get("artifacts", {}):
            assert f"{{{{$.outputs.artifacts['{artifact}'].path}}}}" in wrapper, (name, artifact)
        for parameter in outputs.get("parameters", {}):
            assert f"{{{{$.outputs.parameters['{parameter}'].output_file}}}}" in wrapper, (name, parameter)


def test_k3_importers_get_object_store_uris_and_a_fingerprint_keys_every_reader(ir):
    """The backend's importer fetches gs://, s3://, minio:// only; reimport=False hands back the artifact already
    registered under that URI, and the cache key holds artifact names, so content must enter as a parameter."""
    _, spec, _ = ir
    tasks = _tasks(spec)
    defaults = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    importers = {n: t for n, t in tasks.items() if _is(t, "importer")}
    assert importers, "the demo pipelines import their data"
    for name, task in importers.items():
        importer = _executor(spec, task)["importer"]
        assert importer.get("reimport", False) is False
        source = task["inputs"]["parameters"]["uri"]
        uri = defaults[source["componentInputParameter"]] if "componentInputParameter" in source else \
            source["runtimeValue"]["constant"]
        assert uri.startswith(OBJECT_STORE_PREFIXES), (name, uri)
        # the launcher has the store's credentials for the pipeline root's bucket only (fetchNonDefaultBuckets)
        assert uri.startswith(DEFAULT_KFP_PIPELINE_ROOT.split("/v2/")[0] + "/"), (name, uri)
        fingerprints = [(n, t) for n, t in tasks.items() if _is(t, "fingerprint") and
                        t["inputs"]["artifacts"]["data"]["taskOutputArtifact"]["producerTask"] == name]
        assert len(fingerprints) == 1, name
        fp_name, fp = fingerprints[0]
        assert fp.get("cachingOptions", {}).get("enableCache", False) is False  # it looks at the bytes every run
        assert _executor(spec, fp)["container"]["command"][:3] == ["python", "-m", FINGERPRINT_MODULE]
        readers = [t for t in tasks.values() if any(
            s.get("taskOutputArtifact", {}).get("producerTask") == name
            for s in t.get("inputs", {}).get("artifacts", {}).values()) and not _is(t, "fingerprint")]
        assert readers, name
        for reader in readers:
            keyed = [s["taskOutputParameter"] for k, s in reader["inputs"]["parameters"].items()
                     if k.startswith(FINGERPRINT_PREFIX)]
            assert {"producerTask": fp_name, "outputParameterKey": "sha256"} in keyed


def test_k4_resumable_steps_mount_the_checkpoint_pvc_and_get_the_run_id_from_the_pod(ir):
    """kfp.local ignores the platform spec; the backend mounts the PVC and fills field-path env per pod."""
    _, spec, platform = ir
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, task in _tasks(spec).items():
        if _is(task, "importer") or _is(task, "fingerprint"):
            continue
        k8s = executors[_component(spec, task)["executorLabel"]]
        assert {"name": "TUNELINE_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"} in \
            k8s["fieldPathAsEnv"], name
        assert k8s["configMapAsEnv"][0]["configMapName"] == "tuneline-mlflow", name
        env = {e["name"]: e["value"] for e in _executor(spec, task)["container"].get("env", [])}
        if "TUNELINE_CHECKPOINT_ROOT" in env:
            assert env["TUNELINE_CHECKPOINT_ROOT"] == CHECKPOINT_MOUNT
            assert [m["mountPath"] for m in k8s["pvcMount"]] == [CHECKPOINT_MOUNT], name


def test_k5_k7_gpu_train_step_asks_for_its_gpu_tolerates_spot_and_retries(ir):
    """kfp.local warns resources away and retries in-process; on the backend they place and restart the pod."""
    path, spec, platform = ir
    graph = build_graph(load_pipeline(path))
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    trainers = [n for n in graph.nodes.values() if n.component.spec.role == "train"]
    assert trainers, "every shipped pipeline trains"
    for node in trainers:
        task = _tasks(spec)[node.name.replace("_", "-")]
        container = _executor(spec, task)["container"]
        k8s = executors[_component(spec, task)["executorLabel"]]
        assert task["retryPolicy"]["maxRetryCount"] == node.retries, node.name
        if "accelerator" in container.get("resources", {}):
            assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert ("kubernetes.azure.com/scalesetpriority", "spot") in {(t["key"], t.get("value"))
                                                                         for t in k8s["tolerations"]}
        else:  # a multi-node step: the launcher pod waits; the job's pods carry the GPUs
            assert "tuneline.targets.kfp.launch" in container["command"]


def test_k6_caching_is_on_for_cacheable_steps_and_off_for_live_state(ir):
    path, spec, _ = ir
    pipeline = load_pipeline(path)
    graph = build_graph(pipeline)
    tasks = _tasks(spec)
    for step, node in graph.nodes.items():
        task = tasks[step.replace("_", "-")]
        assert task.get("cachingOptions", {}).get("enableCache", False) is node.cache_enabled, step


def test_steps_that_read_the_registry_as_it_is_now_are_never_cached(ir):
    """KFP's cache key holds inputs, command and image only: a cached register would hand back last run's
    champion decision after the alias was moved by hand or the version deleted."""
    _, spec, _ = ir
    tasks = _tasks(spec)
    for step in ("register", "deploy"):
        if step in tasks:
            assert tasks[step].get("cachingOptions", {}).get("enableCache", False) is False, step


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    (tmp_path / "components").symlink_to(ROOT / "components")
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "pipelines").mkdir()
    text = (ROOT / "pipelines" / "finetune.yaml").read_text()
    assert old in text
    path = tmp_path / "pipelines" / "finetune.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_a_relative_data_path_for_kfp_is_refused_with_file_line_and_field(tmp_path):
    text = (ROOT / "pipelines" / "finetune.yaml").read_text()
    kfp_default = yaml.safe_load(text)["params"]["dataset"]["target_defaults"]["kfp"]
    line = next(n for n, t in enumerate(text.splitlines(), 1) if f"kfp: {kfp_default}" in t)
    path = _variant(tmp_path, f"kfp: {kfp_default}", "kfp: data/sample/tickets.jsonl")
    with pytest.raises(SpecError) as err:
        _compile(path, tmp_path / "out")
    message = str(err.value)
    assert f"{path}:{line}:" in message
    assert "params.dataset.target_defaults.kfp: 'data/sample/tickets.jsonl' cannot be imported on KFP" in message


@pytest.mark.parametrize("uri", ["s3://", "https://example.com/tickets.jsonl", "minio://bucket-only"])
def test_a_set_value_that_kfp_cannot_import_is_refused(tmp_path, uri):
    with pytest.raises(SpecError, match=r"params.dataset \(from --set dataset=...\): .* cannot be imported"):
        _compile(ROOT / "pipelines" / "finetune.yaml", tmp_path, {"dataset": uri})


def test_an_import_outside_the_pipeline_roots_bucket_is_refused(tmp_path):
    """KFP 2.14-2.17's launcher opens a bucket other than the pipeline root's without the object store's
    credentials (launcher_v2.go fetchNonDefaultBuckets): `minio://tuneline-data/...` has no driver at all."""
    with pytest.raises(SpecError, match=r"params.dataset \(from --set dataset=...\): 'minio://tuneline-data/t.jsonl' "
                                        r"cannot be imported on KFP: it is not in the pipeline root's bucket "
                                        r"\(minio://mlpipeline/v2/artifacts\)"):
        _compile(ROOT / "pipelines" / "finetune.yaml", tmp_path / "a", {"dataset": "minio://tuneline-data/t.jsonl"})
    # a cluster whose kfp-launcher ConfigMap roots artifacts in that bucket imports from it
    root = CompileOptions(platform={"kfp": KfpOptions(pipeline_root="minio://tuneline-data/v2/artifacts")})
    with pytest.raises(SpecError, match=r"params.schema.target_defaults.kfp: .* put the data under "
                                        r"minio://tuneline-data/"):
        _compile(ROOT / "pipelines" / "finetune.yaml", tmp_path / "b", {"dataset": "minio://tuneline-data/t.jsonl"},
                 root)
    _compile(ROOT / "pipelines" / "finetune.yaml", tmp_path / "c", {"dataset": "minio://tuneline-data/t.jsonl",
                                                                     "schema": "minio://tuneline-data/s.json"}, root)


def test_local_runs_keep_the_local_data_default():
    assert load_pipeline(ROOT / "pipelines" / "finetune.yaml").params["dataset"] == "data/sample/tickets.jsonl"


# ------------------------------------------------------------------ K10-K12: what each supported backend version does
# The Go backend's own behaviour, restated in tools.conformance.kfp_backend from its source at the versions
# k8s/supported.yaml names; kfp.local resolves Concat and IfPresent and ignores the platform spec and retries.

TABLE = load_kubeflow_table()
WRAPPERS = {OUTDIRS_MODULE, GATE_MODULE, RESUME_MODULE}
SAMPLE = {"string": "text", "integer": 3, "number": 0.5, "boolean": True}


def _local_values(graph, node) -> dict:
    """What the step's inputs hold in one run: bound values, defaults, a sample for an upstream value, a path for
    an artifact; the same for the local render and the backend's."""
    values = {}
    for name, declared in node.component.spec.inputs.items():
        binding = node.bindings.get(name)
        if declared.type.is_artifact:
            if binding is not None:
                values[name] = f"/in/{name}"
        elif isinstance(binding, OutputRef):
            values[name] = SAMPLE[declared.type.value]
        elif binding is not None:
            values[name] = graph.resolve_literal(binding)
        elif declared.default is not None:
            values[name] = declared.default
    return values


def _backend_inputs(spec: dict, task: dict, values: dict) -> tuple[dict, dict, dict]:
    """(parameters the task passes, the component's defaults, artifact paths) as the driver/launcher get them."""
    root = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    passed = {}
    for name, source in task.get("inputs", {}).get("parameters", {}).items():
        if "runtimeValue" in source:
            passed[name] = source["runtimeValue"]["constant"]
        elif "componentInputParameter" in source:
            passed[name] = root[source["componentInputParameter"]]
        elif name == GATE_INPUT:
            passed[name] = True  # the command behind the gate is what this compares
        elif name.startswith(FINGERPRINT_PREFIX):
            passed[name] = "0" * 64
        else:
            passed[name] = values[name]
    component = _component(spec, task)
    defaults = {k: v["defaultValue"] for k, v in component.get("inputDefinitions", {}).get("parameters", {}).items()
                if "defaultValue" in v}
    artifacts = {name: f"/in/{name}" for name in task.get("inputs", {}).get("artifacts", {})}
    return passed, defaults, artifacts


def _step_argv(argv: list[str]) -> list[str]:
    while argv[:2] == ["python", "-m"] and argv[2] in WRAPPERS:
        argv = argv[argv.index("--") + 1:]
    return argv


def _same(backend: str, local: str) -> bool:
    """One argument: equal text, or the same number written the Go way and the Python way (2 and 2.0)."""
    if backend == local:
        return True
    try:
        return float(backend) == float(local)
    except ValueError:
        return False


def _steps(path: Path, spec: dict):
    graph = build_graph(load_pipeline(path)).for_target("kfp")
    tasks = _tasks(spec)
    for step, node in graph.nodes.items():
        yield graph, node, tasks[step.replace("_", "-")]


@pytest.mark.parametrize("version", [v.version for v in TABLE.supported_pipelines()])
def test_k10_every_command_resolves_on_each_supported_backend_to_the_local_command(ir, version):
    """No `{"Concat"}`/`{"IfPresent"}` (the backend passes them on as text), no placeholder the task does not fill
    (2.17's driver fails on it), and after substitution the step's argv is `tuneline run`'s, argument for
    argument."""
    path, spec, _ = ir
    mode = TABLE.pipelines_version(version).placeholders
    for graph, node, task in _steps(path, spec):
        container = _executor(spec, task)["container"]
        argv = container["command"] + container.get("args", [])
        values = _local_values(graph, node)
        passed, defaults, artifacts = _backend_inputs(spec, task, values)
        outputs = {n: f"/out/{n}" for n in _component(spec, task).get("outputDefinitions", {}).get("artifacts", {})}
        files = {n: f"/out/{n}" for n in _component(spec, task).get("outputDefinitions", {}).get("parameters", {})}
        try:
            resolved = resolve_argv(argv, mode, passed, defaults, artifacts, outputs, files)
        except BackendError as exc:
            pytest.fail(f"{path.name} step {node.name} on KFP {version}: {exc}")
        backend = _step_argv(resolved)
        local = render_command(node.component.spec.command, values, {**outputs, **files})
        if backend[:3] == ["python", "-m", LAUNCH_MODULE]:  # a multi-node step: its launcher renders the command
            launch = parse_args(backend[3:])
            backend = render_command(launch.template, {**launch.values, **launch.artifacts}, launch.outputs)
        if backend[0] == "torchrun":  # several processes on one node: only the launcher word changes
            backend = ["python"] + backend[next(i for i, a in enumerate(backend) if not a.startswith("-")
                                                and i > 0):]
        assert len(backend) == len(local) and all(map(_same, backend, local)), (node.name, backend, local)


def test_k10_the_check_fails_on_what_the_backend_passes_on_as_text():
    keys = ({}, {}, {}, {"rows": "/out/rows"})
    concat = ["python", '{"Concat": ["--seed=", "{{$.inputs.parameters[\'seed\']}}"]}']
    for mode in ("launcher", "driver-and-launcher"):
        with pytest.raises(BackendError, match="literal JSON"):
            resolve_argv(concat, mode, {"seed": 1}, *keys)
    with pytest.raises(BackendError, match="parameter 'seed' not found in executor input"):
        resolve_argv(["python", "--seed", "{{$.inputs.parameters['seed']}}"], "driver-and-launcher", {},
                     {"seed": 1}, {}, {}, {})
    with pytest.raises(BackendError, match="literal text"):
        resolve_argv(["python", "{{$.inputs.artifacts['schema'].path}}"], "launcher", {}, {}, {}, {}, {})
    # 2.17 resolves IfPresent of parameters only: a bound artifact's block disappears.
    clause = '{"IfPresent": {"InputName": "schema", "Then": ["--schema", "{{$.inputs.artifacts[\'schema\'].path}}"]}}'
    assert resolve_argv(["python", clause], "driver-and-launcher", {}, {}, {"schema": "/in/schema"}, {}, {}) == \
        ["python"]


def test_k11_the_platform_spec_is_what_the_oldest_supported_backend_applies(ir):
    _, spec, platform = ir
    oldest = TABLE.oldest_pipelines()
    fields = platform_fields(oldest)
    for label, config in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        assert platform_problems(config, oldest, fields) == [], (oldest.version, label)


def test_k11_the_check_fails_on_fields_older_backends_reject_or_ignore(ir):
    """2.4.0 parses strictly and knows no *NameParameter; 2.5.0 drops them and never applies node affinity."""
    path, _, platform = ir
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    strict = TABLE.pipelines_version("2.4.0")
    problems = [p for c in executors.values() for p in platform_problems(c, strict, platform_fields(strict))]
    assert any("configMapNameParameter: unknown to 2.4.0's driver, which rejects it" in p for p in problems)
    if any("nodeAffinity" in c for c in executors.values()):
        old = TABLE.pipelines_version("2.5.0")
        problems = [p for c in executors.values() for p in platform_problems(c, old, platform_fields(old))]
        assert ".nodeAffinity: 2.5.0's driver parses it but never applies it" in problems, path.name


def test_k11_the_platform_spec_carries_no_field_the_oldest_api_server_refuses(ir):
    """kfp-kubernetes writes `optional: false` on every configMapAsEnv/secretAsEnv; KFP 2.14's API server parses
    the platform config strictly when it compiles the Argo workflow and has no such field, so it would refuse the
    run at submission. The compiler drops it; put back, the check names it."""
    _, _, platform = ir
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    oldest = TABLE.oldest_pipelines()
    assert oldest.platform_parse == "strict"
    with_env = {label: c for label, c in executors.items() if c.get("configMapAsEnv")}
    assert with_env and not any("optional" in e for c in with_env.values() for e in c["configMapAsEnv"])
    label, config = next(iter(with_env.items()))
    config = {**config, "configMapAsEnv": [{**config["configMapAsEnv"][0], "optional": False}]}
    assert platform_problems(config, oldest, platform_fields(oldest)) == [
        f".configMapAsEnv[0].optional: unknown to {oldest.version}'s driver, which rejects it"], label


def test_k12_a_retried_task_stays_retryable_for_all_its_attempts(ir):
    """Argo stops retrying once backoff.maxDuration has passed since the first attempt started (the SDK's default
    is 3600s): every attempt at its full deadline must fit in it."""
    _, spec, platform = ir
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    checked = 0
    for name, task in _tasks(spec).items():
        policy = task.get("retryPolicy")
        if not policy:
            continue
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        deadline = int(executors.get(executor, {}).get("activeDeadlineSeconds", 0))
        window = int(policy["backoffMaxDuration"].rstrip("s"))
        assert window >= (policy["maxRetryCount"] + 1) * deadline, (name, window, deadline)
        assert window > 3600, name
        checked += deadline > 0
    assert checked, "some retried step has a timeout"


def test_k12_task_retries_only_where_every_supported_backend_has_them(ir):
    _, spec, _ = ir
    retried = [n for n, t in _tasks(spec).items() if t.get("retryPolicy")]
    assert retried, "the demo pipelines retry their GPU steps"
    assert all(v.retries for v in TABLE.supported_pipelines())
    assert not TABLE.pipelines_version("2.4.0").retries  # why 2.4.0 is not supported


def test_the_docs_table_is_the_supported_yaml_table():
    assert versions_markdown(TABLE) in (ROOT / "docs" / "kubeflow-versions.md").read_text()


def test_the_conformance_harness_refuses_a_package_the_backend_cannot_run(tmp_path):
    """kfp.local runs Concat; the harness checks the package first (K10 in tools.conformance.kfp)."""
    spec, platform = _compile(ROOT / "pipelines" / "finetune.yaml", tmp_path / "ok")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all([spec, platform]))
    assert package_problems(good) == []
    executor = spec["deploymentSpec"]["executors"]["exec-prepare"]["container"]
    index = next(i for i, a in enumerate(executor["command"]) if a.startswith("{{$.inputs.parameters"))
    executor["command"][index] = json.dumps({"Concat": ["", executor["command"][index]]})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([spec, platform]))
    problems = package_problems(bad)
    assert problems and all("task prepare" in p and "literal JSON" in p for p in problems)

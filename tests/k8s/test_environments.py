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


@pytest.mark.parametrize("name", NAMES)
def test_azureml_accepts_environment(name: str) -> None:
    from azure.ai.ml import load_environment

    env = load_environment(source=ENV_DIR / name / "environment.yaml")
    assert env.name == f"tuneline-{name}"
    assert (Path(env.base_path) / env.build.path).resolve() == REPO
    assert (REPO / env.build.dockerfile_path).is_file()

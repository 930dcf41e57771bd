"""The podman service that runs the project's containers: kfp.local's DockerRunner sees every exit status through
it, containers do not pile up, a bind mount survives a killed container.

Needs podman and an image built by `make images` (the local base image is enough); skipped otherwise.
"""

# No `from __future__ import annotations`: kfp reads the component's annotations as objects.
import os
import shutil
import signal
import subprocess
import time

import pytest

from tools.conformance.podman import CONTAINERS_CONF, PodmanService

IMAGE = "localhost/tuneline-base:bookworm"  # environments/base-image.sh; the first thing `make images` builds


def _image_present() -> bool:
    if shutil.which("podman") is None:
        return False
    return subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True).returncode == 0


pytestmark = [pytest.mark.slow, pytest.mark.heavy,
              pytest.mark.skipif(os.geteuid() != 0 or not _image_present(),
                                 reason=f"needs root, podman and {IMAGE} (make images)")]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with PodmanService.start(tmp_path_factory.mktemp("podman")) as service:
        yield service


def test_the_service_runs_with_our_containers_conf(engine):
    assert engine.conf.read_text() == CONTAINERS_CONF
    finished = engine.run(IMAGE, ["sh", "-c", "ulimit -n; echo to-stderr >&2; exit 3"])
    assert finished.exit_code == 3
    assert finished.logs.split() == ["4096", "to-stderr"]


def test_kfp_docker_runner_gets_the_exit_status_and_leaves_no_container(engine, tmp_path, monkeypatch):
    from kfp import dsl, local
    from kfp.dsl import Dataset, Output

    @dsl.container_component
    def fails():
        return dsl.ContainerSpec(image=IMAGE, command=["sh", "-c", "echo failing; exit 7"])

    @dsl.container_component
    def writes(out: Output[Dataset]):
        return dsl.ContainerSpec(image=IMAGE, command=["sh", "-c", 'mkdir -p "$(dirname "$0")" && echo 42 > "$0"',
                                                                 out.path])

    monkeypatch.setenv("DOCKER_HOST", engine.docker_host)
    local.init(runner=local.DockerRunner(), pipeline_root=str(tmp_path), raise_on_error=True)
    # Straight on podman's socket, kfp.local's auto_remove race reports this exit 7 as SUCCESS (NotFound on wait
    # is taken for 0); through the relay it is a failure.
    with pytest.raises(RuntimeError, match="FAILURE"):
        fails()
    writes()
    # kfp.local does not collect a container component's output artifacts (tools.conformance.kfp), so the file
    # is found where its executor input put it: <pipeline root>/<run>/<task>/<output>.
    assert [p.read_text() for p in tmp_path.glob("writes-*/writes/out")] == ["42\n"]
    assert engine.client().containers.list(all=True, filters={"ancestor": IMAGE}) == []


def test_a_killed_container_keeps_what_it_wrote_to_its_mount(engine, tmp_path):
    (tmp_path / "ckpt").mkdir()
    container = engine.start_container(IMAGE, ["sh", "-c", "echo step-3 > /ckpt/last; sleep 600"],
                                       mounts={tmp_path / "ckpt": "/ckpt"})
    try:
        for _ in range(100):
            if (tmp_path / "ckpt" / "last").exists():
                break
            container.handle.reload()
            assert container.handle.status in ("created", "running")
            time.sleep(0.1)
        container.kill(signal.SIGKILL)
        assert container.wait(timeout=60) == 137  # 128 + SIGKILL, as Kubernetes reports an OOM kill or eviction
    finally:
        container.remove()
    assert (tmp_path / "ckpt" / "last").read_text() == "step-3\n"

"""`tuneline run` gives a step that deploys an image (`deploys_image`) that image only from the pipeline's own
`images:` block: locally no compile warns about a Docker Hub default, so without one the step gets none."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneline.graph import build_graph
from tuneline.spec import load_pipeline
from tuneline.targets.local.runner import LocalRunner, RunOptions

COMPONENT = """\
name: show
version: 0.1.0
environment: control
deploys_image: serve
outputs:
  image: {type: uri_file}
command: python components/show/show.py ${{outputs.image}}
"""
PROGRAM = """\
import os, sys
from pathlib import Path
Path(sys.argv[1]).write_text(os.environ.get("TUNELINE_DEPLOY_IMAGE", "<none>"))
"""


def _run(tmp_path: Path, images: str) -> str:
    (tmp_path / "components" / "show").mkdir(parents=True)
    (tmp_path / "components" / "show" / "component.yaml").write_text(COMPONENT)
    (tmp_path / "components" / "show" / "show.py").write_text(PROGRAM)
    (tmp_path / "pipelines").mkdir()
    pipeline = tmp_path / "pipelines" / "p.yaml"
    pipeline.write_text(f"name: p\n{images}steps:\n  show: {{component: components/show}}\n")
    record = LocalRunner(build_graph(load_pipeline(pipeline)),
                         RunOptions(home=tmp_path / "home", no_cache=True)).run()
    assert record.status == "succeeded", record.steps["show"].reason
    return Path(record.steps["show"].outputs["image"]["path"]).read_text()


@pytest.mark.parametrize(("images", "expected"), [
    ("images: {registry: acr.example.io/tuneline, tag: 1.2.0}\n", "acr.example.io/tuneline/serve:1.2.0"),
    ("", "<none>"),
])
def test_the_deployed_image_comes_only_from_the_pipelines_images_block(tmp_path, monkeypatch, images, expected):
    monkeypatch.delenv("TUNELINE_DEPLOY_IMAGE", raising=False)
    assert _run(tmp_path, images) == expected

"""The committed JSON Schemas match the models, and every YAML in the repository is valid."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tuneline.spec import load_component, load_pipeline
from tuneline.spec.schema import TARGETS, main, render
from tuneline.spec.yamlsafe import load_yaml

REPO = Path(__file__).resolve().parents[2]
SKIP_PARTS = {".venv", ".tuneline", "build", "node_modules", ".git"}


def repo_files(pattern: str) -> list[Path]:
    return sorted(p for p in REPO.rglob(pattern) if not SKIP_PARTS.intersection(p.relative_to(REPO).parts))


def test_committed_schemas_are_fresh():
    assert main(["--check", "--root", str(REPO)]) == 0, "run `make schema`"


def test_schema_check_detects_a_stale_file(tmp_path):
    for relative, (model, title) in TARGETS.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(render(model, title).replace("steps", "stpes"))
    assert main(["--check", "--root", str(tmp_path)]) == 1


@pytest.mark.parametrize("path", repo_files("pipelines/*.yaml"), ids=lambda p: p.name)
def test_every_pipeline_validates_and_matches_the_editor_schema(path):
    load_pipeline(path)
    schema = json.loads((REPO / "pipelines/schema.json").read_text())
    jsonschema.validate(load_yaml(path).data, schema)


@pytest.mark.parametrize("path", repo_files("components/*/component.yaml"), ids=lambda p: p.parent.name)
def test_every_component_validates(path):
    load_component(path.parent)
    schema = json.loads((REPO / "components/schema.json").read_text())
    jsonschema.validate(load_yaml(path).data, schema)


@pytest.mark.parametrize("path", repo_files("*.y*ml"), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_file_parses(path):
    if path.suffix not in (".yaml", ".yml"):
        pytest.skip("not YAML")
    with path.open() as fh:
        documents = list(yaml.safe_load_all(fh))
    assert documents, f"{path} is empty"

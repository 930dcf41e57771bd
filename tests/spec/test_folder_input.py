"""A folder of dataset shards as the pipeline's `dataset`: typed uri_folder end to end (spec, runner, Azure ML and
KFP), and refused, before any step runs, where an input takes a single file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from azure.ai.ml import load_component, load_job

from tuneline.graph import build_graph
from tuneline.spec import SpecError, load_pipeline
from tuneline.spec.models import IOType
from tuneline.targets.build import compile_graph
from tuneline.targets.options import CompileOptions

REPO = Path(__file__).parents[2]
FINETUNE = REPO / "pipelines" / "finetune.yaml"


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    lines = (REPO / "data" / "sample" / "tickets.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "part-0.jsonl").write_text("".join(lines[:200]), encoding="utf-8")
    (folder / "part-1.jsonl").write_text("".join(lines[200:]), encoding="utf-8")
    return folder


def test_a_folder_dataset_types_the_parameter_and_the_prepare_input_as_a_folder(shards):
    pipeline = load_pipeline(FINETUNE, {"dataset": str(shards)})
    prepare = next(s for s, c in pipeline.components.items() if "raw" in c.spec.inputs)
    assert pipeline.spec.params["dataset"].type == IOType.uri_folder
    assert pipeline.components[prepare].spec.inputs["raw"].type == IOType.uri_folder
    default = load_pipeline(FINETUNE)  # a file keeps both as declared
    assert default.spec.params["dataset"].type == IOType.uri_file
    assert default.components[prepare].spec.inputs["raw"].type == IOType.uri_file


def test_a_folder_for_an_input_that_takes_one_file_is_refused_at_load(shards):
    with pytest.raises(SpecError) as caught:
        load_pipeline(FINETUNE, {"schema": str(shards)})
    message = str(caught.value)
    assert "schema: " in message
    assert "is a folder, but evaluate.schema and deploy.response_schema take a single file" in message


def test_both_compilers_carry_the_folder_type(shards, tmp_path):
    graph = build_graph(load_pipeline(FINETUNE, {"dataset": str(shards)}))
    out = compile_graph(graph, ("azureml",), tmp_path / "out", CompileOptions())
    folder = out.folder / "azureml"
    job = yaml.safe_load((folder / "pipeline_job.yml").read_text())
    assert job["inputs"]["dataset"]["type"] == "uri_folder"
    assert yaml.safe_load((folder / "components" / "prepare.yml").read_text())["inputs"]["raw"]["type"] == "uri_folder"
    assert load_component(str(folder / "components" / "prepare.yml"))._validate().passed
    result = load_job(str(folder / "pipeline_job.yml"))._validate()
    assert result.passed, result.error_messages
    # KFP's importer takes object-store URIs only (a local folder is refused at compile time); a Dataset artifact
    # is a file or a folder alike there, so the shards' prefix is what the importer brings in.
    uri = "minio://mlpipeline/tuneline-data/shards"
    kfp_graph = build_graph(load_pipeline(FINETUNE, {"dataset": uri})).for_target("kfp")
    kfp = compile_graph(kfp_graph, ("kfp",), tmp_path / "kfp", CompileOptions())
    assert uri in (kfp.folder / "kfp" / "pipeline.yaml").read_text()
    shutil.rmtree(out.folder)


@pytest.mark.slow
def test_tuneline_run_prepares_a_folder_of_shards(shards, tmp_path):
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "tuneline", "run", str(FINETUNE), "--set", f"dataset={shards}", "--only", "prepare",
         "--home", str(tmp_path / "home")],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    card = json.loads(next((tmp_path / "home").rglob("data_card.json")).read_text())
    counts = card["counts"]
    assert counts["kept"] + counts["quarantined"] + counts["deduplicated"] == counts["input_records"] == 507
    assert [f["file"] for f in card["input"]["files"]] == ["part-0.jsonl", "part-1.jsonl"]

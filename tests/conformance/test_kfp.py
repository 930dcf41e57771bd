"""The compiled toy pipeline, executed by kfp.local in containers of the project's images, matches `tuneline run`.

The container runs need root, podman and images built from this working tree (`make images`), so they are in the
heavy tier, which builds the images first (`make test-heavy`); without them they are skipped.
"""

from pathlib import Path

import pytest

from tools.conformance.__main__ import REPO, main
from tools.conformance.kfp import (
    KfpLocalRun,
    artifact_params,
    cpu_stand_ins,
    stage_data,
)
from tuneline.graph import build_graph
from tuneline.spec import load_pipeline

TOY = Path(__file__).resolve().parents[1] / "fixtures" / "toy" / "pipelines" / "toy.yaml"
FINETUNE = REPO / "pipelines" / "finetune.yaml"


def test_images_this_machine_cannot_build_run_as_the_cpu_image_with_their_components():
    assert cpu_stand_ins(REPO) == {"train-gpu": "train-cpu", "serve": "control"}


def test_data_is_staged_into_the_store_under_the_pipeline_root(tmp_path):
    graph = build_graph(load_pipeline(FINETUNE))
    assert artifact_params(graph) == ["dataset", "schema"]
    staged = stage_data(graph, tmp_path)
    assert staged == {"dataset": str(tmp_path / "store" / "dataset" / "tickets.jsonl"),
                      "schema": str(tmp_path / "store" / "schema" / "tickets.schema.json")}
    assert Path(staged["dataset"]).read_bytes() == (REPO / "data" / "sample" / "tickets.jsonl").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize(("count", "publish"), [(5, "succeeded"), (2, "skipped")])
@pytest.mark.heavy
def test_toy_pipeline_matches_local_with_the_gate_open_and_closed(image_engine, tmp_path, capsys, monkeypatch,
                                                                  count, publish):
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    assert main(["kfp", str(TOY), "--set", f"count={count}", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kfp conformance: 3/3 steps match local" in out
    assert f"publish      {publish}" in out
    assert "passed: True" in out if publish == "succeeded" else "passed: False" in out


READS = Path(__file__).resolve().parent / "fixtures" / "reads" / "pipelines" / "reads.yaml"


@pytest.mark.slow
@pytest.mark.heavy
def test_data_updated_in_place_is_not_served_from_kfp_cache(image_engine, tmp_path):
    """With kfp.local's own cache on, an unchanged file is a cache hit and the same file rewritten is a miss: the
    fingerprint task's digest is an argument of the reading step (tuneline.step.fingerprint). Without it both
    runs would have the same key, since the importer hands over the same URI (K6)."""
    from tools.conformance.kfp import image_mounts
    from tools.conformance.podman import PodmanService

    graph = build_graph(load_pipeline(READS)).for_target("kfp")
    root, cache = tmp_path / "root", tmp_path / "cache"
    data = root / "store" / "data.txt"
    data.parent.mkdir(parents=True)
    data.write_text("a\nb\nc\n")
    with PodmanService.start(tmp_path / "podman") as engine:
        runner = KfpLocalRun(graph, tmp_path, engine, mounts=image_mounts(graph, REPO))
        package = runner.compile(REPO)
        first = runner.run(package, {"data": str(data)}, root, cache_root=cache)["count"]
        again = runner.run(package, {"data": str(data)}, root, cache_root=cache)["count"]
        data.write_text("a\nb\nc\nd\ne\n")  # updated in place: same URI, same importer artifact
        updated = runner.run(package, {"data": str(data)}, root, cache_root=cache)["count"]
    assert first.outputs["lines"] == 3
    assert again.outputs["report"].uri == first.outputs["report"].uri  # a cache hit: the first run's output
    assert updated.outputs["lines"] == 5
    assert updated.outputs["report"].uri != first.outputs["report"].uri

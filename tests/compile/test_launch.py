import json

import yaml
from kubernetes_validate import validate
from readback import TOY_MULTINODE

from tuneline.compile.launch import collect_outputs, job_body, job_state, launcher_spec, parse_args, stage_inputs


def _args(compiled, tmp_path, monkeypatch):
    manifest = yaml.safe_load((compiled["toy-multinode"] / "kfp" / "pytorchjob-fit.yaml").read_text())
    train = tmp_path / "kfp" / "train"
    train.mkdir(parents=True)
    (train / "data.jsonl").write_text("{}\n")
    monkeypatch.setenv("TUNELINE_RUN_ID", "Run-1234ABCD-extra")
    template = ("python -m components.fit --train ${{inputs.train}} --rows ${{inputs.rows}} --lr ${{inputs.lr}} "
                "--model-out ${{outputs.model}} --checkpoints ${{outputs.checkpoints}}")
    return parse_args(["--step", "fit", "--nodes", "2", "--procs", "4", "--template", template,
                       "--manifest", json.dumps(manifest), "--artifact", f"train={train}", "--value", "rows=120",
                       "--value", "lr=0.002", "--output", f"model={tmp_path / 'kfp' / 'model'}",
                       "--output", f"checkpoints={tmp_path / 'kfp' / 'ckpt'}", "--shared", str(tmp_path / "shared")])


def test_launcher_stages_inputs_and_renders_the_job(compiled, tmp_path, monkeypatch):
    args = _args(compiled, tmp_path, monkeypatch)
    spec = launcher_spec(args)
    stage_inputs(args)
    stage = tmp_path / "shared" / "Run-1234ABCD-extra" / "fit"
    assert (stage / "inputs" / "train" / "data.jsonl").read_text() == "{}\n"
    body = job_body(args, spec)
    assert body["metadata"]["name"] == "toy-multinode-fit-run-1234abcd"
    container = body["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "torchrun", "--nnodes=2", "--nproc-per-node=4", "-m", "components.fit", "--train",
        f"{stage}/inputs/train", "--rows", "120", "--lr", "0.002", "--model-out", f"{stage}/outputs/model",
        "--checkpoints", f"{stage}/outputs/checkpoints"]
    assert {"name": "TUNELINE_RUN_ID", "value": "Run-1234ABCD-extra"} in container["env"]
    # The pod template is a valid core/v1 pod template (strict: unknown fields fail).
    template = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "fit"}, "template": template},
             "1.31", strict=True)
    # What the job writes on the shared volume comes back to KFP's output paths.
    (stage / "outputs" / "model").mkdir(parents=True)
    (stage / "outputs" / "model" / "weights.bin").write_bytes(b"w")
    (stage / "outputs" / "checkpoints").mkdir()
    collect_outputs(args, spec)
    assert (tmp_path / "kfp" / "model" / "weights.bin").read_bytes() == b"w"


def test_job_state_reads_the_last_finished_condition():
    assert job_state(None) is None
    assert job_state({"conditions": [{"type": "Created", "status": "True"},
                                     {"type": "Running", "status": "True"}]}) is None
    assert job_state({"conditions": [{"type": "Running", "status": "False"},
                                     {"type": "Succeeded", "status": "True"}]}) == "Succeeded"
    assert job_state({"conditions": [{"type": "Failed", "status": "True"}]}) == "Failed"


def test_fixture_is_multinode():
    assert "nodes: 2" in TOY_MULTINODE.read_text()

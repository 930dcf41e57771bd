import argparse
import json

import pytest
from readback import TOY

from tuneline.cli.compile import add_commands


def run(argv):
    parser = argparse.ArgumentParser(prog="tuneline")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_compile_all_targets(tmp_path, capsys):
    assert run(["compile", str(TOY), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "toy" / "kfp" / "pipeline.yaml").is_file()
    assert (tmp_path / "toy" / "azureml" / "pipeline_job.yml").is_file()
    assert "files in" in capsys.readouterr().out


def test_production_with_latest_fails_clearly(tmp_path, capsys):
    assert run(["compile", str(TOY), "--target", "kfp", "--out", str(tmp_path), "--production",
                "--image-tag", "latest"]) == 2
    assert "mutable image tag 'latest'" in capsys.readouterr().err


def test_the_kfp_pipeline_root_decides_which_bucket_data_may_come_from(tmp_path, capsys):
    """The toy imports from minio://mlpipeline/...: KFP's default root's bucket, not that of a cluster whose
    kfp-launcher ConfigMap roots artifacts in s3://artifacts."""
    assert run(["compile", str(TOY), "--target", "kfp", "--out", str(tmp_path)]) == 0
    assert run(["compile", str(TOY), "--target", "kfp", "--out", str(tmp_path),
                "--kfp-pipeline-root", "s3://artifacts/v2"]) == 2
    assert "it is not in the pipeline root's bucket (s3://artifacts/v2)" in capsys.readouterr().err


def test_kfp_submit_dry_run_builds_typed_client_calls(tmp_path, capsys):
    assert run(["submit", str(TOY), "--target", "kfp", "--host", "http://kfp.local", "--out", str(tmp_path),
                "--param", "lr=0.01", "--schedule", "--no-cache", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    run_call, _, recurring = plan["calls"]
    assert run_call["method"] == "Client.create_run_from_pipeline_package"
    assert run_call["kwargs"]["arguments"] == {"lr": 0.01} and run_call["kwargs"]["enable_caching"] is False
    assert run_call["kwargs"]["pipeline_file"] == str(tmp_path / "toy" / "kfp" / "pipeline.yaml")
    assert recurring["kwargs"]["cron_expression"] == "0 30 2 * * 1"
    assert recurring["kwargs"]["enable_caching"] is False


def test_azureml_submit_dry_run_and_missing_flags(tmp_path, capsys, monkeypatch):
    for name in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE", "AZUREML_ARM_SUBSCRIPTION",
                 "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert run(["submit", str(TOY), "--target", "azureml", "--out", str(tmp_path), "--dry-run"]) == 2
    assert ("needs --subscription or $AZURE_SUBSCRIPTION_ID, --resource-group or $AZURE_RESOURCE_GROUP, "
            "--workspace or $AZUREML_WORKSPACE") in capsys.readouterr().err
    assert run(["submit", str(TOY), "--target", "azureml", "--subscription", "s", "--resource-group", "rg",
                "--workspace", "ws", "--out", str(tmp_path), "--schedule", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [c["method"] for c in plan["calls"]] == ["MLClient.compute.ensure", "MLClient.jobs.create_or_update",
                                                    "MLClient.schedules.begin_create_or_update"]
    assert plan["calls"][0]["kwargs"]["compute"].endswith("/azureml/compute/gpu-spot.yml")  # low priority, first
    assert plan["workspace_name"] == "ws"


def test_a_target_setting_falls_back_on_its_environment_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", "http://from-env.example")
    assert run(["submit", str(TOY), "--target", "kfp", "--out", str(tmp_path), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["host"] == "http://from-env.example"
    assert run(["submit", str(TOY), "--target", "kfp", "--kfp-host", "http://flag.example", "--out", str(tmp_path),
                "--dry-run"]) == 0  # the flag wins; --kfp-host is the trigger check's spelling of --host
    assert json.loads(capsys.readouterr().out)["host"] == "http://flag.example"


def test_an_azureml_run_argument_is_compiled_into_the_job_file(tmp_path, capsys):
    """The job file carries its inputs (the target's split_values), so --param is a compiled value there."""
    assert run(["submit", str(TOY), "--target", "azureml", "--subscription", "s", "--resource-group", "rg",
                "--workspace", "ws", "--out", str(tmp_path), "--param", "lr=0.5", "--dry-run"]) == 0
    capsys.readouterr()
    import yaml

    job = yaml.safe_load((tmp_path / "toy" / "azureml" / "pipeline_job.yml").read_text())
    assert job["inputs"]["lr"] == 0.5
    assert run(["submit", str(TOY), "--target", "azureml", "--subscription", "s", "--resource-group", "rg",
                "--workspace", "ws", "--out", str(tmp_path), "--param", "lr=abc", "--dry-run"]) == 2


def test_azureml_client_objects_construct_offline():
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    client = MLClient(DefaultAzureCredential(), subscription_id="s", resource_group_name="rg", workspace_name="ws")
    assert client.workspace_name == "ws"


@pytest.mark.parametrize("bad", ["lr=abc", "nope=1"])
def test_bad_param_is_reported(tmp_path, capsys, bad):
    assert run(["submit", str(TOY), "--target", "kfp", "--host", "h", "--out", str(tmp_path), "--param", bad,
                "--dry-run"]) == 2
    assert "--set" in capsys.readouterr().err


def test_submit_refuses_a_local_only_run_argument(tmp_path, capsys):
    finetune = TOY.parents[6] / "pipelines" / "finetune.yaml"
    assert run(["submit", str(finetune), "--target", "kfp", "--host", "http://kfp.local", "--out", str(tmp_path),
                "--param", "deploy_target=local", "--dry-run"]) == 2
    assert "deploy.target (parameter deploy_target = 'local') for target kfp: 'local' runs only locally" \
        in capsys.readouterr().err


def test_azureml_submit_can_watch_and_resubmit_a_preempted_job(tmp_path, capsys):
    """Azure ML does not restart a job whose low-priority node was preempted: submit watches it and submits the
    job file again, at most N times, when a node on a low-priority cluster failed."""
    from tuneline.targets.azureml.submit import resubmission

    assert run(["submit", str(TOY), "--target", "azureml", "--subscription", "s", "--resource-group", "rg",
                "--workspace", "ws", "--out", str(tmp_path), "--resubmit-preempted", "2", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    watch = plan["calls"][-1]
    assert watch["method"] == "MLClient.jobs.watch" and watch["kwargs"]["resubmit"] == 2
    assert watch["kwargs"]["low_priority_nodes"] == ["fit"]  # toy's fit runs on the spot profile's cluster
    assert watch["kwargs"]["job"] == plan["calls"][-2]["kwargs"]["job"]
    low = {"fit"}
    assert resubmission("Running", set(), low, 0, 2) == "wait"
    assert resubmission("Completed", set(), low, 0, 2) == "done"
    assert resubmission("Failed", {"fit"}, low, 0, 2) == "resubmit"
    assert resubmission("Failed", {"fit"}, low, 2, 2) == "give up"  # the limit
    assert resubmission("Failed", {"make_data"}, low, 0, 2) == "give up"  # not on low priority: a real failure
    assert resubmission("Canceled", set(), low, 0, 2) == "done"

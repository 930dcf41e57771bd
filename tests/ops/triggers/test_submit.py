"""`tuneline trigger check --submit kfp`: when a trigger fires, the pipeline is compiled and kfp.Client sends the
create-run request for it; when none fires, nothing is sent. The KFP API server is the one part that cannot run
here: a local HTTP server stands in at the network boundary and records the requests kfp.Client's generated API
client makes, so everything up to the wire (compile, kfp.Client, kfp_server_api) is the real code."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.support.tickets import ticket_records

from .conftest import write_records

DATA_URI = "minio://mlpipeline/tuneline-data/tickets/2026-12-01.jsonl"


class _KfpApi(BaseHTTPRequestHandler):
    """Answers the v2beta1 endpoints kfp.Client calls, with the fields its models read, and records each call."""

    requests: list[tuple[str, str, dict]] = []
    states: dict[str, str] = {}  # run id -> the state GET /runs/<id> answers

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.requests.append(("GET", self.path, {}))
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._answer({"multi_user": False})
        elif self.path.startswith("/apis/v2beta1/experiments"):
            self._answer({"experiments": [], "total_size": 0})
        elif self.path.split("?")[0].rsplit("/", 1)[-1] in self.states:
            run_id = self.path.split("?")[0].rsplit("/", 1)[-1]
            self._answer({"run_id": run_id, "display_name": "grow", "state": self.states[run_id]})
        else:
            self.send_error(404)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            self._answer({"experiment_id": "exp-1", "display_name": body["display_name"]})
        elif self.path == "/apis/v2beta1/runs":
            self._answer({"run_id": "run-42", "display_name": body["display_name"], "experiment_id": "exp-1",
                          "state": "PENDING"})
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def kfp_api():
    _KfpApi.requests = []
    _KfpApi.states = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _KfpApi.requests
    server.shutdown()
    server.server_close()


def test_a_firing_trigger_sends_the_create_run_request_for_the_compiled_pipeline(project, ops_cli, kfp_api,
                                                                                 monkeypatch, tmp_path):
    host, requests = kfp_api
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # kfp.Client keeps its context file under ~/.config
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token"))
    code, out, err = ops_cli("trigger", "check", "pipelines/grow.yaml", "--no-record", "--submit", "kfp",
                             "--kfp-host", host, "--submit-param", f"dataset={DATA_URI}", "--json")
    assert code == 10, err
    decision = json.loads(out)
    assert decision["retrain"] is True and decision["fired"] == ["new_data"]
    assert decision["pipeline_run"] == {"run_id": "run-42", "status": "submitted", "exit_code": 0, "target": "kfp"}

    posts = [(path, body) for method, path, body in requests if method == "POST"]
    assert [path for path, _ in posts] == ["/apis/v2beta1/experiments", "/apis/v2beta1/runs"]
    assert posts[0][1]["display_name"] == "grow"
    run = posts[1][1]
    assert run["experiment_id"] == "exp-1"
    package = project / ".tuneline" / "submit" / "grow" / "kfp" / "pipeline.yaml"
    compiled, platform = yaml.safe_load_all(package.read_text())
    sent = run["pipeline_spec"]
    # the package tuneline compiled, sent inline: the pipeline spec and its Kubernetes platform spec
    assert sent.get("pipeline_spec", sent) == compiled, sorted(sent)
    assert sent.get("platform_spec") == platform
    assert compiled["pipelineInfo"]["name"] == "grow"
    # the run reads its data from the store, not from the file the image (or the compiled default) names
    assert run["runtime_config"]["parameters"] == {"dataset": DATA_URI}
    assert compiled["root"]["inputDefinitions"]["parameters"]["dataset"]["defaultValue"] == "minio://mlpipeline/tuneline-data/tickets.jsonl"


def test_the_submitted_run_is_the_next_checks_baseline(project, ops_cli, kfp_api, monkeypatch, tmp_path):
    """In the cluster the check keeps no local run records (its state folder is an emptyDir): the tracking
    server's record of the submitted run is what the next check compares the data with."""
    host, requests = kfp_api
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", host)
    check = ("trigger", "check", "pipelines/grow.yaml", "--submit", "kfp", "--submit-param", f"dataset={DATA_URI}")
    home = tmp_path / "state-1"
    code, _, err = ops_cli(*check, "--home", str(home))
    assert code == 10, err
    runs = [r for r in requests if r[1] == "/apis/v2beta1/runs"]
    assert len(runs) == 1
    code, out, err = ops_cli(*check, "--home", str(tmp_path / "state-2"))  # a fresh emptyDir
    assert code == 0, err
    assert "tickets.jsonl unchanged since submitted run run-42 (40 records)" in out
    assert len([r for r in requests if r[1] == "/apis/v2beta1/runs"]) == 1
    write_records(project / "data" / "tickets.jsonl", ticket_records(8, seed=3), mode="a")  # 20% new
    code, out, err = ops_cli(*check, "--home", str(tmp_path / "state-3"))
    assert code == 10, err
    assert "40 -> 48 records since submitted run run-42" in out
    assert len([r for r in requests if r[1] == "/apis/v2beta1/runs"]) == 2


def test_no_trigger_no_request(project, ops_cli, kfp_api, monkeypatch, tmp_path):
    host, requests = kfp_api
    spec = yaml.safe_load((project / "pipelines" / "grow.yaml").read_text())
    spec["triggers"] = {"max_age_days": 30}  # no champion registered: nothing can fire
    (project / "pipelines" / "quiet.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    code, out, err = ops_cli("trigger", "check", "pipelines/quiet.yaml", "--no-record", "--submit", "kfp",
                             "--kfp-host", host, "--submit-param", f"dataset={DATA_URI}")
    assert code == 0, err
    assert "retrain: no" in out
    assert requests == []
    assert not (project / ".tuneline" / "submit").exists()


def test_submit_without_an_endpoint_is_a_reported_failure(project, ops_cli, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    code, out, err = ops_cli("trigger", "check", "pipelines/grow.yaml", "--no-record", "--submit", "kfp")
    assert code == 11
    assert "--submit kfp needs --host / --kfp-host or $KF_PIPELINES_ENDPOINT" in err
    assert Path("pipelines/grow.yaml").is_file()


def test_the_checks_local_dataset_is_not_compiled_into_the_submitted_run(project, ops_cli, kfp_api, monkeypatch,
                                                                         tmp_path):
    """The retraining CronJob reads the data where the store is mounted (`--set dataset=<mounted path>`) and
    gives the run the store's URI (`--submit-param dataset=...`): the mounted path must not become a compile
    value, which KFP's importer refuses."""
    host, requests = kfp_api
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    mounted = tmp_path / "mnt" / "data"
    mounted.mkdir(parents=True)
    (mounted / "tickets.jsonl").write_text((project / "data" / "tickets.jsonl").read_text())
    code, out, err = ops_cli("trigger", "check", "pipelines/grow.yaml", "--no-record", "--submit", "kfp",
                             "--kfp-host", host, "--set", f"dataset={mounted / 'tickets.jsonl'}",
                             "--submit-param", f"dataset={DATA_URI}", "--mlflow-secret", "mlflow-login", "--json")
    assert code == 10, err
    assert "cannot be imported on KFP" not in err
    run = [body for method, path, body in requests if path == "/apis/v2beta1/runs"][0]
    assert run["runtime_config"]["parameters"] == {"dataset": DATA_URI}
    package = project / ".tuneline" / "submit" / "grow" / "kfp" / "pipeline.yaml"
    _, platform = yaml.safe_load_all(package.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert any(s["secretName"] == "mlflow-login" for e in executors.values() for s in e.get("secretAsEnv", []))


@pytest.mark.parametrize(("uri", "why"), [
    ("minio://tuneline-data/tickets.jsonl", "it is not in the pipeline root's bucket (minio://mlpipeline/v2/artifacts)"),
    ("/mnt/data/tickets.jsonl", "KFP's importer takes object-store URIs only"),
])
def test_kfp_submission_refuses_a_run_argument_its_importer_cannot_read(project, ops_cli, kfp_api, uri, why):
    """A run argument is not compiled in, so the compiler's import check never sees it: the submission checks it,
    before anything reaches the API."""
    host, requests = kfp_api
    code, out, err = ops_cli("trigger", "check", "pipelines/grow.yaml", "--no-record", "--submit", "kfp",
                             "--kfp-host", host, "--submit-param", f"dataset={uri}")
    assert code == 11, err
    assert f"parameter 'dataset' = {uri}: KFP cannot import it: {why}" in err
    assert not [path for _, path, _ in requests if path == "/apis/v2beta1/runs"]


def test_azureml_submission_refuses_a_dataset_it_cannot_read(project, ops_cli, monkeypatch):
    code, out, err = ops_cli("trigger", "check", "pipelines/grow.yaml", "--no-record", "--submit", "azureml",
                             "--subscription", "s", "--resource-group", "g", "--workspace", "w",
                             "--submit-param", f"dataset={DATA_URI}")
    assert code == 11
    assert "Azure ML cannot read a minio:// URI" in err


def test_a_failed_submitted_run_is_no_baseline(project, ops_cli, kfp_api, monkeypatch, tmp_path):
    """The run submitted last week failed (or was canceled): it trained on nothing, so this week's check must not
    say "unchanged since submitted run" and stay quiet for ever; it asks KFP for the run's state."""
    host, requests = kfp_api
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", host)
    check = ("trigger", "check", "pipelines/grow.yaml", "--submit", "kfp", "--submit-param", f"dataset={DATA_URI}")
    code, _, err = ops_cli(*check, "--home", str(tmp_path / "state-1"))
    assert code == 10, err
    _KfpApi.states["run-42"] = "SUCCEEDED"
    code, out, err = ops_cli(*check, "--home", str(tmp_path / "state-2"))
    assert code == 0, err
    assert "unchanged since submitted run run-42" in out
    _KfpApi.states["run-42"] = "FAILED"
    code, out, err = ops_cli(*check, "--home", str(tmp_path / "state-3"))
    assert code == 10, err
    assert "no successful run of 'grow' yet" in out
    assert len([r for r in requests if r[0] == "POST" and r[1] == "/apis/v2beta1/runs"]) == 2
    assert ("GET", "/apis/v2beta1/runs/run-42", {}) in requests


def test_a_triggered_azureml_job_reruns_every_step(project, tmp_path):
    """The trigger fired on new data at the same azureml:// path: the job's inputs are unchanged, so without
    force_rerun Azure ML reuses last run's prepare (reuse compares inputs, not the data behind them)."""
    from azure.ai.ml import load_job

    from tuneline.targets.submit import compile_submission

    uri = "azureml://datastores/workspaceblobstore/paths/tuneline/tickets.jsonl"
    output, _ = compile_submission(project / "pipelines" / "grow.yaml", "azureml", tmp_path / "out", {},
                                   {"dataset": uri})
    job = load_job(str(output.folder / "azureml" / "pipeline_job.yml"))
    assert job._validate().passed
    assert job.settings.force_rerun is True
    assert job.inputs["dataset"].path == uri

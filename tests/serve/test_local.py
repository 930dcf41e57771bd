"""End to end on a real tritonserver: deploy, auth, blue/green, failed candidates, stop."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tuneline.serve import process
from tuneline.serve.auth import load_token
from tuneline.serve.local import ServeState, status, stop_all
from tuneline.serve.repository import RepositorySpec
from tuneline.serve.rollout import RolloutResult, rollout
from tuneline.serve.smoke import infer_texts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deployed(
    serve_venv, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, RolloutResult]]:
    state_dir = tmp_path_factory.mktemp("serve-state")
    with pytest.MonkeyPatch.context() as patch:
        # The proxy process inherits this: the opt-in request log of the feedback loop.
        patch.setenv("TUNELINE_REQUEST_LOG", str(state_dir / "feedback" / "requests.jsonl"))
        result = rollout(tiny_model, state_dir=state_dir, spec=RepositorySpec(max_new_tokens_default=6))
    assert result.ok, result.error
    yield state_dir, result
    stop_all(state_dir)


def _client(url: str):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url.split("://", 1)[1], network_timeout=120)


def _post(url: str, payload: dict, token: str | None) -> tuple[int, dict]:
    req = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_first_rollout_serves_blue_behind_the_proxy(deployed) -> None:
    state_dir, result = deployed
    assert result.slot == "blue" and result.previous_slot is None
    assert result.smoke is not None and result.smoke.ok and len(result.smoke.outputs) == 2
    assert 0 < result.startup_s < 120
    info = status(state_dir)
    assert info["active"] == "blue" and info["proxy"]["alive"] and info["servers"]["blue"]["alive"]


def test_infer_through_proxy_with_token(deployed) -> None:
    state_dir, result = deployed
    token = load_token(Path(result.token_file))
    client = _client(result.proxy_url)
    headers = {"Authorization": f"Bearer {token}"}
    texts = infer_texts(client, "tuneline-llm", ["Hello there", "", "The printer"], max_new_tokens=5, headers=headers)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    # Greedy decoding: batching and padding must not change what a prompt produces.
    alone = infer_texts(client, "tuneline-llm", ["The printer"], max_new_tokens=5, headers=headers)
    assert alone[0] == texts[2]
    # Concurrent requests through async_infer (the client is not thread-safe) reach the batcher.
    import tritonclient.http as httpclient

    pool = httpclient.InferenceServerClient(result.proxy_url.split("://", 1)[1], concurrency=8)
    reqs = []
    for i in range(8):
        inp = httpclient.InferInput("text_input", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[f"ticket {i}".encode()]], dtype=np.object_))
        reqs.append(pool.async_infer("tuneline-llm", [inp], headers=headers))
    outs = [r.get_result().as_numpy("text_output") for r in reqs]
    assert all(o.shape == (1, 1) for o in outs)
    pool.close()
    client.close()


def test_infer_without_token_is_rejected(deployed) -> None:
    from tritonclient.utils import InferenceServerException

    _, result = deployed
    client = _client(result.proxy_url)
    assert client.is_server_ready()  # health stays open for probes
    with pytest.raises(InferenceServerException, match="bearer token"):
        infer_texts(client, "tuneline-llm", ["hi"])
    with pytest.raises(InferenceServerException):
        infer_texts(client, "tuneline-llm", ["hi"], headers={"Authorization": "Bearer nope"})
    client.close()
    status_code, body = _post(f"{result.proxy_url}/v1/generate", {"prompt": "hi"}, token=None)
    assert status_code == 401 and "bearer token" in body["error"]


def test_generated_answers_are_logged_redacted_and_can_be_rated(deployed) -> None:
    state_dir, result = deployed
    token = load_token(Path(result.token_file))
    code, body = _post(f"{result.proxy_url}/v1/generate", {"prompt": "write to ann.lee@example.com"}, token)
    assert code == 200 and body["request_id"]
    logged = (state_dir / "feedback" / "requests.jsonl").read_text()
    assert body["request_id"] in logged and "<EMAIL>" in logged and "ann.lee@example.com" not in logged
    code, _ = _post(f"{result.proxy_url}/v1/feedback", {"request_id": body["request_id"], "rating": 5}, token)
    assert code == 200
    assert body["request_id"] in (state_dir / "feedback" / "ratings.jsonl").read_text()


def test_generate_routes(deployed) -> None:
    _, result = deployed
    token = load_token(Path(result.token_file))
    code, body = _post(f"{result.proxy_url}/v1/generate", {"prompt": "Hello", "max_new_tokens": 3}, token)
    assert code == 200 and body["model"] == "tuneline-llm" and isinstance(body["text"], str)
    code, body = _post(f"{result.proxy_url}/v1/generate", {"prompt": ["a", "b"]}, token)
    assert code == 200 and len(body["text"]) == 2
    code, body = _post(
        f"{result.proxy_url}/v2/models/tuneline-llm/generate",
        {"text_input": "Hello", "max_new_tokens": 3},
        token,
    )
    assert code == 200 and isinstance(body["text_output"], str)
    code, body = _post(f"{result.proxy_url}/v1/generate", {"prompt": "x", "max_new_tokens": 100000}, token)
    assert code == 400 and "max_new_tokens" in body["error"]


def _serving_slot(state_dir: Path) -> str:
    return json.loads((state_dir / "upstream.json").read_text())["slot"]


def test_broken_candidate_leaves_old_serving(deployed, tiny_model: Path, tmp_path: Path) -> None:
    state_dir, first = deployed
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    before = status(state_dir)
    result = rollout(broken, state_dir=state_dir)
    assert not result.ok and "failed to start" in (result.error or "")
    assert "SafetensorError" in result.error  # the cause from the Triton log, not just "exited"
    after = status(state_dir)
    assert after["active"] == before["active"] and set(after["servers"]) == {before["active"]}
    assert after["servers"][before["active"]]["alive"]
    token = load_token(Path(first.token_file))
    code, _ = _post(f"{first.proxy_url}/v1/generate", {"prompt": "still up?"}, token)
    assert code == 200


def test_failed_smoke_check_stops_candidate(deployed, tiny_model: Path) -> None:
    state_dir, first = deployed
    active = status(state_dir)["active"]
    result = rollout(tiny_model, state_dir=state_dir, smoke_check=lambda outs: "rejected by test")
    assert not result.ok and "rejected by test" in (result.error or "")
    assert result.server is not None
    assert not process.is_alive(result.server.ref)
    assert process.port_is_free(result.server.http_port)
    assert status(state_dir)["active"] == active == _serving_slot(state_dir)
    token = load_token(Path(first.token_file))
    assert _post(f"{first.proxy_url}/v1/generate", {"prompt": "hi"}, token)[0] == 200


def test_blue_green_switch_to_merged_adapter(deployed, tiny_model: Path, tiny_adapter: Path) -> None:
    state_dir, first = deployed
    token = load_token(Path(first.token_file))
    old = ServeState.load(state_dir).servers[status(state_dir)["active"]]
    before = _post(f"{first.proxy_url}/v1/generate", {"prompt": "The printer", "max_new_tokens": 6}, token)[1]
    result = rollout(
        tiny_adapter,
        base_model_dir=tiny_model,
        state_dir=state_dir,
        spec=RepositorySpec(max_new_tokens_default=6),
    )
    assert result.ok, result.error
    assert result.previous_slot == old.slot and result.slot != old.slot
    assert result.proxy_url == first.proxy_url  # clients keep the same address
    assert _serving_slot(state_dir) == result.slot
    assert not process.is_alive(old.ref) and process.port_is_free(old.http_port)
    after = _post(f"{first.proxy_url}/v1/generate", {"prompt": "The printer", "max_new_tokens": 6}, token)[1]
    assert after["text"] != before["text"]  # the merged LoRA delta changes greedy output


def test_stop_command_frees_ports(serve_venv, tiny_model: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    result = rollout(tiny_model, state_dir=state_dir)
    assert result.ok, result.error
    ports = [result.server.http_port, int(result.proxy_url.rsplit(":", 1)[1])]
    assert not any(process.port_is_free(p) for p in ports)
    proc = subprocess.run(
        [sys.executable, "-m", "tuneline.serve", "--state-dir", str(state_dir), "stop"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ports freed" in proc.stdout
    assert all(process.port_is_free(p) for p in ports)
    assert status(state_dir) == {"active": None, "proxy": None, "servers": {}}

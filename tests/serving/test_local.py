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

from tuneline.serving import process
from tuneline.serving.auth import load_token
from tuneline.serving.local import ServeState, status, stop_all
from tuneline.serving.repository import RepositorySpec
from tuneline.serving.rollout import RolloutResult, rollout
from tuneline.serving.smoke import infer_texts

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
    from tuneline.serving.routing import read_upstream

    return read_upstream(state_dir).slot


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
    assert not Path(result.server.socket).exists()
    assert status(state_dir)["active"] == active == _serving_slot(state_dir)
    token = load_token(Path(first.token_file))
    assert _post(f"{first.proxy_url}/v1/generate", {"prompt": "hi"}, token)[0] == 200


def test_blue_green_switch_to_an_adapter(deployed, tiny_model: Path, tiny_adapter: Path) -> None:
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
    # On CPU each version is merged into a model of its own (RepositorySpec.adapters "auto"): a server of its own.
    assert result.shared_base.startswith("a server of its own: adapters=auto on cpu")
    assert result.adapter == ""
    assert result.previous_slot == old.slot and result.slot != old.slot
    assert result.proxy_url == first.proxy_url  # clients keep the same address
    assert _serving_slot(state_dir) == result.slot
    assert not process.is_alive(old.ref) and not Path(old.socket).exists()
    after = _post(f"{first.proxy_url}/v1/generate", {"prompt": "The printer", "max_new_tokens": 6}, token)[1]
    assert after["text"] != before["text"]  # the merged LoRA delta changes greedy output


def test_stop_command_frees_ports(serve_venv, tiny_model: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    result = rollout(tiny_model, state_dir=state_dir)
    assert result.ok, result.error
    ports = [int(result.proxy_url.rsplit(":", 1)[1])]  # the proxy's: Triton listens on a unix socket
    assert not any(process.port_is_free(p) for p in ports) and Path(result.server.socket).is_socket()
    proc = subprocess.run(
        [sys.executable, "-m", "tuneline.serving", "--state-dir", str(state_dir), "stop"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ports freed" in proc.stdout
    assert all(process.port_is_free(p) for p in ports) and not Path(result.server.socket).exists()
    assert status(state_dir) == {"active": None, "proxy": None, "servers": {}}


def test_openai_client_lists_chats_streams_and_completes(deployed) -> None:
    import openai

    _, result = deployed
    token = load_token(Path(result.token_file))
    client = openai.OpenAI(base_url=f"{result.proxy_url}/v1", api_key=token, max_retries=0)
    # The deployment's name, then each adapter it serves (one, if an adapter's rollout ran before this test).
    assert [m.id for m in client.models.list().data][0] == "tuneline-llm"
    messages = [{"role": "user", "content": "The printer is offline"}]
    chat = client.chat.completions.create(model="tuneline-llm", messages=messages, max_tokens=5)
    answer = chat.choices[0].message.content
    assert isinstance(answer, str) and chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.prompt_tokens > 0 and 0 <= chat.usage.completion_tokens <= 5
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    stream = client.chat.completions.create(
        model="tuneline-llm", messages=messages, max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer  # greedy: same text
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    done = client.completions.create(model="tuneline-llm", prompt=["The printer", "My invoice"], max_tokens=3)
    assert len(done.choices) == 2 and done.usage.completion_tokens <= 6
    sampled = client.chat.completions.create(
        model="tuneline-llm", messages=messages, max_tokens=4, temperature=0.8, top_p=0.9, stop=["}"]
    )
    assert "}" not in sampled.choices[0].message.content
    with pytest.raises(openai.NotFoundError, match="not served"):
        client.chat.completions.create(model="other", messages=messages)
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        client.chat.completions.create(model="tuneline-llm", messages=messages, n=2)
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.chat.completions.create(model="tuneline-llm", messages=messages, max_tokens=100000)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{result.proxy_url}/v1", api_key="wrong", max_retries=0).models.list()


def test_openai_stream_arrives_piece_by_piece(deployed) -> None:
    """Token streaming end to end: the decoupled twin's responses, relayed by the proxy as they come."""
    import time

    import openai

    _, result = deployed
    token = load_token(Path(result.token_file))
    client = openai.OpenAI(base_url=f"{result.proxy_url}/v1", api_key=token, max_retries=0)
    messages = [{"role": "user", "content": "The printer is offline"}]
    whole = client.chat.completions.create(model="tuneline-llm", messages=messages, max_tokens=200)
    started = time.perf_counter()
    arrivals, pieces = [], []
    for chunk in client.chat.completions.create(model="tuneline-llm", messages=messages, max_tokens=200,
                                                stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)
            pieces.append(chunk.choices[0].delta.content)
    total = time.perf_counter() - started
    assert "".join(pieces) == whole.choices[0].message.content  # greedy: the same text, in pieces
    # 200 tokens of a random model: many pieces, the first well before the answer ends.
    assert len(pieces) >= 10 and arrivals[0] < total / 2, (len(pieces), arrivals[0], total)
    texts = {}
    for chunk in client.completions.create(model="tuneline-llm", prompt=["The printer", "My invoice"], max_tokens=8,
                                           stream=True):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    plain = client.completions.create(model="tuneline-llm", prompt=["The printer", "My invoice"], max_tokens=8)
    assert [texts[0], texts[1]] == [c.text for c in plain.choices]


def test_a_client_that_disconnects_frees_its_slot(deployed, monkeypatch) -> None:
    """Real proxy, real Triton: a client that leaves mid-request (waiting or mid-stream) gives its one slot back."""
    import http.client
    import socket
    import time

    from tests.serving.conftest import running_proxy
    from tuneline.serving.proxy import ProxyLimits

    state_dir, result = deployed
    token = load_token(Path(result.token_file))
    log = state_dir / "feedback" / "disconnect.jsonl"
    monkeypatch.setenv("TUNELINE_REQUEST_LOG", str(log))  # answered requests are logged; abandoned ones are not

    def call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request(method, path, body=json.dumps(body) if body else None,
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        conn.close()
        return resp.status, data

    def inflight(port: int) -> int:
        return call(port, "GET", "/v1/stats")[1]["admission"]["inflight"]

    def wait_for(port: int, count: int, within: float) -> float:
        started = time.monotonic()
        while inflight(port) != count:
            assert time.monotonic() - started < within, f"in-flight count did not reach {count} in {within}s"
            time.sleep(0.02)
        return time.monotonic() - started

    def leave_after(port: int, path: str, body: dict, read_first: bool) -> None:
        raw = json.dumps(body).encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {token}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw)
        wait_for(port, 1, 30)
        # The one slot is taken: with no queue, another request is refused at once.
        assert call(port, "POST", "/v1/generate", {"prompt": "hi", "max_new_tokens": 1})[0] == 429
        if read_first:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the stream is under way
        sock.close()

    with running_proxy(state_dir, token, ProxyLimits(max_inflight=1, max_queue=0)) as port:
        # 32 prompts x 256 tokens: seconds of work, so the client leaves long before its answer exists.
        waiting = {"prompt": [f"left while waiting {i}" for i in range(32)], "max_new_tokens": 256}
        leave_after(port, "/v1/generate", waiting, read_first=False)
        wait_for(port, 0, 5)
        streaming = {"model": "tuneline-llm", "messages": [{"role": "user", "content": "left mid-stream"}],
                     "max_tokens": 256, "stream": True}  # the served model's limit
        leave_after(port, "/v1/chat/completions", streaming, read_first=True)
        wait_for(port, 0, 5)
        # The next request is admitted and answered.
        status_code, body = call(port, "POST", "/v1/generate", {"prompt": "next one", "max_new_tokens": 2})
        assert status_code == 200 and isinstance(body["text"], str)
        # Departures are counted where an operator looks, not written line by line anywhere.
        assert call(port, "GET", "/v1/stats")[1]["client_gone"] == {"before_answer": 1, "mid_stream": 1}
    logged = log.read_text()
    assert "next one" in logged and "left while waiting" not in logged and "left mid-stream" not in logged


def test_served_requests_feed_the_drift_trigger(deployed, monkeypatch) -> None:
    """The endpoint's own request log against the training prompts: on-task traffic passes, off-task fires."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.serving.conftest import running_proxy
    from tests.support.tickets import ticket_records
    from tuneline.ops.triggers.drift import check_drift
    from tuneline.spec.models import Triggers

    state_dir, result = deployed
    token = load_token(Path(result.token_file))
    reference = state_dir / "drift" / "train.jsonl"  # what the model was trained on
    reference.parent.mkdir(parents=True, exist_ok=True)
    reference.write_text("".join(json.dumps(r) + "\n" for r in ticket_records(300, seed=1)))
    on_task = [r["messages"][1]["content"] for r in ticket_records(80, seed=7)]
    off_task = [f"Write a {n}-line poem about the colour of the sea at dawn, then translate it into French "
                f"and Italian, and explain each metaphor in detail for a {n + 7}-year-old reader."
                for n in range(60)]

    def send(port: int, prompts: list[str]) -> list[int]:
        def one(prompt: str) -> int:
            body = {"model": "tuneline-llm", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
            return _post(f"http://127.0.0.1:{port}/v1/chat/completions", body, token)[0]

        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(one, prompts))

    results = {}
    for name, prompts in (("on_task", on_task), ("off_task", off_task)):
        log = state_dir / "drift" / f"{name}.jsonl"
        monkeypatch.setenv("TUNELINE_REQUEST_LOG", str(log))
        with running_proxy(state_dir, token) as port:
            assert send(port, prompts) == [200] * len(prompts)
        triggers = Triggers(drift_psi=0.2, requests_log=str(log))
        results[name] = check_drift(triggers, state_dir, reference, min_requests=50)
    assert results["on_task"].status == "ok", results["on_task"].reason
    assert results["off_task"].status == "fired" and "PSI" in results["off_task"].reason, results["off_task"].reason
    assert results["off_task"].metrics["psi.max"] >= 0.2 > results["on_task"].metrics["psi.max"]


def test_overload_is_answered_429_with_retry_after_never_a_reset(deployed) -> None:
    """A proxy with one slot and one queue place, in front of the same Triton, under 12 concurrent clients."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    from tests.serving.conftest import running_proxy
    from tuneline.serving.proxy import ProxyLimits

    state_dir, result = deployed
    token = load_token(Path(result.token_file))
    body = json.dumps({"prompt": ["The printer"] * 8, "max_new_tokens": 24})

    def send(port: int, headers: dict | None = None) -> tuple[int, str | None]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v1/generate", body=body, headers={"Authorization": f"Bearer {token}", **(headers or {})})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp.status, resp.getheader("Retry-After")

    with running_proxy(state_dir, token, ProxyLimits(max_inflight=1, max_queue=1)) as port:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: send(port), range(12)))
        statuses = [s for s, _ in answers]
        assert set(statuses) <= {200, 429} and statuses.count(200) >= 2 and 429 in statuses, statuses
        assert all(int(retry) >= 1 for s, retry in answers if s == 429)
        # A deadline too short to be met is answered, not left hanging.
        status, _ = send(port, {"X-Request-Timeout": "0.001"})
        assert status in (503, 504)


@pytest.mark.heavy
def test_failing_canary_is_rolled_back_and_a_healthy_one_promoted(serve_venv, tiny_model: Path, tmp_path: Path) -> None:
    import time

    from tuneline.serving.routing import CanaryPolicy, read_canary, read_routes

    state_dir = tmp_path / "state"
    log = tmp_path / "logs" / "requests.jsonl"
    first = rollout(tiny_model, state_dir=state_dir, label="models:/m/1", request_log=str(log))
    assert first.ok, first.error
    token = load_token(Path(first.token_file))
    policy = CanaryPolicy(promote_after=12, min_requests=4)
    try:
        failing = rollout(tiny_model, state_dir=state_dir, canary_percent=50, canary=policy, label="models:/m/2")
        assert failing.ok and failing.canary_percent == 50, failing.error
        assert {b.slot: b.weight for b in read_routes(state_dir).backends} == {first.slot: 50, failing.server.slot: 50}
        process.stop(failing.server.ref)  # the candidate dies after passing its smoke tests
        codes = [_post(f"{first.proxy_url}/v1/generate", {"prompt": f"ticket {i}"}, token)[0] for i in range(24)]
        assert codes == [200] * 24  # every request answered: the previous version took the failed ones
        assert len(log.read_text().splitlines()) >= 24  # the deploy's request log, kept across rollouts
        decision = read_canary(state_dir)
        assert decision["decision"] == "rolled_back" and "error rate" in decision["reason"]
        routes = read_routes(state_dir)
        assert [(b.slot, b.label, b.weight) for b in routes.backends] == [(first.slot, "models:/m/1", 100)]
        deadline = time.monotonic() + 30
        while set(status(state_dir)["servers"]) != {first.slot} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert set(status(state_dir)["servers"]) == {first.slot} and status(state_dir)["active"] == first.slot

        healthy = rollout(tiny_model, state_dir=state_dir, canary_percent=50, canary=policy, label="models:/m/3")
        assert healthy.ok and healthy.canary_percent == 50, healthy.error
        for i in range(60):
            assert _post(f"{first.proxy_url}/v1/generate", {"prompt": f"ticket {i}"}, token)[0] == 200
            if (read_canary(state_dir) or {}).get("decision") == "promoted":
                break
        assert read_canary(state_dir)["serving"]["label"] == "models:/m/3", read_canary(state_dir)
        assert [b.slot for b in read_routes(state_dir).backends] == [healthy.server.slot]
        deadline = time.monotonic() + 30
        while set(status(state_dir)["servers"]) != {healthy.server.slot} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status(state_dir)["active"] == healthy.server.slot
        assert not process.is_alive(ServeState.load(state_dir).servers.get(first.slot, first.server).ref)
    finally:
        stop_all(state_dir)


def test_an_llm_judge_asks_twice_per_example_with_the_positions_swapped(deployed) -> None:
    """The win-rate judge against a real OpenAI-compatible endpoint: this one, whose request log shows what the
    judge sent (a tiny random model's verdicts are noise; the order of the answers in each request is not)."""
    import time

    from tuneline.llm.ml.judge import Contest, JudgeError, LLMJudge

    state_dir, result = deployed
    token = load_token(Path(result.token_file))
    log = state_dir / "feedback" / "requests.jsonl"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    judge = LLMJudge(f"{result.proxy_url}/v1", "tuneline-llm", token=token)
    contest = Contest("Is the printer offline?", "CANDIDATE says yes", "CHAMPION says no", reference="yes")
    assert judge.outcome(contest) in (0.0, 0.5, 1.0)
    deadline = time.monotonic() + 10
    while len(log.read_text().splitlines()) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    sent = [json.loads(line)["messages"] for line in log.read_text().splitlines()[before:]]
    assert len(sent) == 2 and all(m[0]["role"] == "system" for m in sent)
    first, second = (m[-1]["content"] for m in sent)
    assert first.index("CANDIDATE") < first.index("CHAMPION") and "Reference answer:\nyes" in first
    assert second.index("CHAMPION") < second.index("CANDIDATE")
    with pytest.raises(JudgeError, match=r"HTTP 401; set \$TUNELINE_JUDGE_TOKEN"):
        LLMJudge(f"{result.proxy_url}/v1", "tuneline-llm", token="").outcome(contest)


def test_an_openai_answer_is_rated_by_its_id(deployed) -> None:
    """The feedback loop through the OpenAI API: the answer's `id` is the request id /v1/feedback takes."""
    import openai

    state_dir, result = deployed
    token = load_token(Path(result.token_file))
    client = openai.OpenAI(base_url=f"{result.proxy_url}/v1", api_key=token, max_retries=0)
    chat = client.chat.completions.create(model="tuneline-llm", max_tokens=4,
                                          messages=[{"role": "user", "content": "My invoice is wrong"}])
    assert _post(f"{result.proxy_url}/v1/feedback", {"request_id": chat.id, "rating": 2, "correction": "{}"},
                 token) == (200, {"rated": chat.id, "rating": 2, "corrected": True})
    done = client.completions.create(model="tuneline-llm", prompt=["The printer", "My invoice"], max_tokens=2)
    assert _post(f"{result.proxy_url}/v1/feedback", {"request_id": f"{done.id}-1", "rating": 4}, token)[0] == 200
    stream = client.chat.completions.create(model="tuneline-llm", max_tokens=3, stream=True,
                                            messages=[{"role": "user", "content": "Reset my password"}])
    streamed_id = next(iter(stream)).id
    for _ in stream:
        pass
    assert _post(f"{result.proxy_url}/v1/feedback", {"request_id": streamed_id, "rating": 5}, token)[0] == 200
    logged = {json.loads(line)["id"] for line in (state_dir / "feedback" / "requests.jsonl").read_text().splitlines()}
    assert {chat.id, f"{done.id}-0", f"{done.id}-1", streamed_id} <= logged


def test_response_format_on_the_plain_generate_fallback_is_refused_not_ignored(deployed) -> None:
    """The tiny model's heads are too narrow for vLLM's CPU kernels, so this deployment runs plain generate, which
    cannot constrain decoding: an unconstrained answer to a request that asked for a schema would be a silent lie."""
    _, result = deployed
    token = load_token(Path(result.token_file))
    for stream in (False, True):
        code, body = _post(f"{result.proxy_url}/v1/chat/completions",
                           {"model": "tuneline-llm", "messages": [{"role": "user", "content": "hi"}], "stream": stream,
                            "response_format": {"type": "json_object"}}, token)
        assert code == 400, (code, body)
        assert "response_format needs an engine that constrains decoding" in json.dumps(body)

"""The proxy's own behaviour (auth, routing, validation); forwarding to Triton is in test_local.py."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.conftest import running_proxy
from tuneline.serving.auth import ensure_token
from tuneline.serving.proxy import Upstream, clear_upstream, read_upstream, write_upstream


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[int, str, Path]]:
    token = ensure_token(tmp_path, announce=False)
    with running_proxy(tmp_path, token) as port:
        yield port, token, tmp_path


def _request(port: int, method: str, path: str, body: bytes | None = None, token: str | None = None,
             headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json", **(headers or {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.headers, data  # case-insensitive, as HTTP headers are


def test_inference_without_token_is_401(proxy) -> None:
    port, token, _ = proxy
    status, headers, body = _request(port, "POST", "/v2/models/m/infer", b"{}")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert "bearer token" in json.loads(body)["error"]
    assert _request(port, "POST", "/v1/generate", b"{}", token="wrong")[0] == 401
    assert _request(port, "GET", "/v2/models/m", token=token[:-1])[0] == 401
    # The OpenAI routes answer in OpenAI's error shape, which its clients turn into AuthenticationError.
    status, _, body = _request(port, "POST", "/v1/chat/completions", b"{}")
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"


def test_health_needs_no_token_and_reports_missing_upstream(proxy) -> None:
    port, _, _ = proxy
    status, _, body = _request(port, "GET", "/v2/health/ready")
    assert status == 503
    assert "no model is deployed" in json.loads(body)["error"]


def test_control_routes_are_not_forwarded(proxy) -> None:
    port, token, state_dir = proxy
    write_upstream(state_dir, Upstream(url="http://127.0.0.1:9", model="m"))
    for path in ("/v2/repository/index", "/v2/models/m/unload", "/v2/logging", "/admin"):
        status, _, body = _request(port, "POST", path, b"{}", token=token)
        assert status == 404, path
        assert "no route" in json.loads(body)["error"]


def test_unreachable_upstream_is_503_to_retry_and_does_not_say_where_it_listens(proxy) -> None:
    port, token, state_dir = proxy
    write_upstream(state_dir, Upstream(url="http://127.0.0.1:9", model="m"))  # port 9 (discard): closed
    for path, auth in (("/v2/models/m", token), ("/v2/health/ready", None)):
        status, headers, body = _request(port, "GET", path, token=auth)
        message = json.loads(body)["error"]
        assert status == 503 and int(headers["Retry-After"]) >= 1, (path, status)
        assert "unavailable" in message and "127.0.0.1" not in message and ":9" not in message, message


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b'{"prompt": 3}', "'prompt'"),
        (b'{"prompt": []}', "'prompt'"),
        (b'{"prompt": "hi", "max_new_tokens": 0}', "'max_new_tokens'"),
        (b'{"prompt": "hi", "max_new_tokens": true}', "'max_new_tokens'"),
        (json.dumps({"prompt": ["p"] * 33}).encode(), "33 prompts in one request"),
    ],
)
def test_generate_validates_its_body(proxy, payload: bytes, message: str) -> None:
    port, token, state_dir = proxy
    write_upstream(state_dir, Upstream(url="http://127.0.0.1:9", model="m"))
    status, _, body = _request(port, "POST", "/v1/generate", payload, token=token)
    assert status == 400
    assert message in json.loads(body)["error"]


def test_upstream_file_round_trip(tmp_path: Path) -> None:
    assert read_upstream(tmp_path) is None
    write_upstream(tmp_path, Upstream(url="http://127.0.0.1:1234", model="m", slot="green"))
    assert read_upstream(tmp_path) == Upstream(url="http://127.0.0.1:1234", model="m", slot="green")
    clear_upstream(tmp_path)
    assert read_upstream(tmp_path) is None


def test_only_a_served_request_is_rated_once_by_its_token(tmp_path: Path, monkeypatch) -> None:
    from tuneline.serving.requestlog import MAX_COMMENT_CHARS, RatingStore, RequestLogger, token_digest

    log = tmp_path / "feedback" / "requests.jsonl"
    monkeypatch.setenv("TUNELINE_REQUEST_LOG", str(log))
    token = ensure_token(tmp_path, announce=False)
    # What an earlier proxy process served and logged: the index is rebuilt from the log.
    mine = RequestLogger(log).log("my printer", "restart it", by=token_digest(token))
    other = RequestLogger(log).log("their printer", "restart it", by=token_digest("an older token"))
    third = RequestLogger(log).log("a third", "answer", by=token_digest(token))

    def rate(body: dict, auth: str | None = token) -> tuple[int, str]:
        status, _, data = _request(port, "POST", "/v1/feedback", json.dumps(body).encode(), token=auth)
        return status, json.loads(data)["error"] if status != 200 else ""

    with running_proxy(tmp_path, token) as port:
        assert rate({"request_id": mine, "rating": 5}, auth=None)[0] == 401
        assert rate({"request_id": mine, "rating": 5, "comment": "right on, mail ann@example.com"}) == (200, "")
        status, message = rate({"request_id": mine, "rating": 1})
        assert status == 409 and "already rated" in message  # a replay, or a change of mind: once only
        assert rate({"request_id": other, "rating": 5})[0] == 403
        status, message = rate({"request_id": "0" * 32, "rating": 5})
        assert status == 404 and "no request" in message
        status, message = rate({"request_id": third, "rating": 4, "comment": "x" * (MAX_COMMENT_CHARS + 1)})
        assert status == 400 and "comment" in message
        status, message = rate({"request_id": third, "rating": 9})
        assert status == 400 and "rating must be an integer from 1 to 5" in message
    ratings_file = tmp_path / "feedback" / "ratings.jsonl"
    assert RatingStore(ratings_file).ratings() == {mine: 5}
    text = ratings_file.read_text()
    assert "ann@example.com" not in text and "<EMAIL>" in text
    assert oct(ratings_file.stat().st_mode & 0o777) == "0o600"
    assert oct(ratings_file.parent.stat().st_mode & 0o777) == "0o700"


def test_a_rating_through_the_endpoint_carries_a_correction_that_exports_as_a_pair(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    from tuneline.ops.feedback import export
    from tuneline.serving.requestlog import MAX_CORRECTION_CHARS, RequestLogger, token_digest

    log = tmp_path / "feedback" / "requests.jsonl"
    monkeypatch.setenv("TUNELINE_REQUEST_LOG", str(log))
    token = ensure_token(tmp_path, announce=False)
    served = RequestLogger(log).log("my card was charged twice", '{"category": "hardware"}', by=token_digest(token))
    theirs = RequestLogger(log).log("their ticket", "answer", by=token_digest("an older token"))

    def rate(body: dict) -> tuple[int, dict]:
        status, _, data = _request(port, "POST", "/v1/feedback", json.dumps(body).encode(), token=token)
        return status, json.loads(data)

    with running_proxy(tmp_path, token) as port:
        for bad, message in ((3, "field 'correction' must be a string"), (None, "field 'correction' must be a string"),
                             ("x" * (MAX_CORRECTION_CHARS + 1), f"at most {MAX_CORRECTION_CHARS} characters"),
                             (" ", "correction is blank")):
            status, body = rate({"request_id": served, "rating": 1, "correction": bad})
            assert status == 400 and message in body["error"], (bad, body)
        # Another token's request stays closed, correction or not.
        assert rate({"request_id": theirs, "rating": 1, "correction": "my own text"})[0] == 403
        status, body = rate({"request_id": served, "rating": 2,
                             "correction": '{"category": "billing"} call 555 123 4567'})
        assert (status, body) == (200, {"rated": served, "rating": 2, "corrected": True})
        assert rate({"request_id": served, "rating": 5, "correction": "changed my mind"})[0] == 409
    ratings_file = tmp_path / "feedback" / "ratings.jsonl"
    assert "555 123 4567" not in ratings_file.read_text()
    result = export(log, ratings_file, tmp_path / "pairs.jsonl", kind="pairs")
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ('{"category": "billing"} call <PHONE>', '{"category": "hardware"}')]
    assert result.dropped == {"not rated": 1}


def test_feedback_route_is_off_without_request_logging(proxy) -> None:
    port, token, _ = proxy
    status, _, body = _request(port, "POST", "/v1/feedback", b'{"request_id": "x", "rating": 4}', token=token)
    assert status == 404 and "TUNELINE_REQUEST_LOG" in json.loads(body)["error"]


def test_a_forwarded_call_to_an_adapter_version_carries_its_adapter() -> None:
    """The canary draws a version per request; a KServe v2 call drawn for an adapter must name it, whatever the
    body's form, or the default adapter would answer a request counted for the candidate."""
    from tuneline.serving.openai_api import ApiError
    from tuneline.serving.proxy import _with_adapter

    infer = json.dumps({"inputs": [{"name": "text_input", "shape": [2, 1], "datatype": "BYTES",
                                    "data": ["a", "b"]}]}).encode()
    body, _ = _with_adapter("/v2/models/m/infer", infer, {"Content-Length": str(len(infer))}, "m-2")
    added = json.loads(body)["inputs"][-1]
    assert added == {"name": "adapter", "shape": [2, 1], "datatype": "BYTES", "data": ["m-2", "m-2"]}
    # Binary tensors: the JSON header grows, its length header follows, the tensor bytes are kept as they were.
    head = json.dumps({"inputs": [{"name": "text_input", "shape": [1, 1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 5}}]}).encode()
    tail = b"\x01\x00\x00\x00x"
    body, headers = _with_adapter("/v2/models/m/infer", head + tail,
                                  {"Inference-Header-Content-Length": str(len(head))}, "m-2")
    length = int(headers["Inference-Header-Content-Length"])
    assert body[length:] == tail and json.loads(body[:length])["inputs"][-1]["data"] == ["m-2"]
    # The client's own choice stands; the generate extension takes a top-level key.
    own = json.dumps({"inputs": [{"name": "adapter", "shape": [1, 1], "datatype": "BYTES", "data": ["m-1"]}]})
    assert _with_adapter("/v2/models/m/infer", own.encode(), {}, "m-2")[0] == own.encode()
    generate = _with_adapter("/v2/models/m-stream/generate", b'{"text_input": "hi"}', {}, "m-2")[0]
    assert json.loads(generate)["adapter"] == "m-2"
    # Odd bodies go to Triton as they are (it answers 400); a compressed one is refused, not misrouted.
    odd = json.dumps({"inputs": [{"name": "text_input", "shape": []}]}).encode()
    assert json.loads(_with_adapter("/v2/models/m/infer", odd, {}, "m-2")[0])["inputs"][-1]["shape"] == [1, 1]
    assert _with_adapter("/v2/models/m/infer", b"{", {"Inference-Header-Content-Length": "x"}, "m-2")[0] == b"{"
    with pytest.raises(ApiError, match="compressed body"):
        _with_adapter("/v2/models/m/infer", b"\x1f\x8b", {"Content-Encoding": "gzip"}, "m-2")
    assert _with_adapter("/v2/models/m/infer", infer, {}, "")[0] == infer  # a version without adapters


def test_a_bare_slot_that_serves_two_adapters_is_refused_naming_them(proxy) -> None:
    """`X-Tuneline-Slot: blue` while blue serves two adapters (a canary inside one server) names no version: a
    generation is refused with both names rather than answered by a guess; `blue/<adapter>` pins one. The
    upstream is closed, so a request that was routed answers 503."""
    from tuneline.serving.routing import CANDIDATE, Routes, write_routes

    port, token, state_dir = proxy
    blue = Upstream(url="http://127.0.0.1:9", model="m", slot="blue", weight=50, adapter="m-1")
    write_routes(state_dir, Routes(backends=(blue, Upstream(url=blue.url, model="m", slot="blue", weight=50,
                                                            role=CANDIDATE, adapter="m-2"))))
    generate = b'{"prompt": "hi"}'
    status, _, body = _request(port, "POST", "/v1/generate", generate, token, {"X-Tuneline-Slot": "blue"})
    assert status == 400, body
    assert json.loads(body)["error"] == ("X-Tuneline-Slot 'blue' is ambiguous: slot blue serves 'blue/m-1', "
                                         "'blue/m-2'; name one of them")
    chat = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    status, _, body = _request(port, "POST", "/v1/chat/completions", chat, token, {"X-Tuneline-Slot": "blue"})
    assert status == 400 and "'blue/m-2'" in json.loads(body)["error"]["message"]
    for pin in ("blue/m-1", "blue/m-2"):
        assert _request(port, "POST", "/v1/generate", generate, token, {"X-Tuneline-Slot": pin})[0] == 503, pin
    # Model metadata and readiness are the server's, the same whichever adapter: a bare slot reaches it.
    assert _request(port, "GET", "/v2/models/m", None, token, {"X-Tuneline-Slot": "blue"})[0] == 503
    assert _request(port, "POST", "/v1/generate", generate, token, {"X-Tuneline-Slot": "green"})[0] == 404
    # Once the canary is over the slot serves one version again, and the bare slot pins it.
    write_upstream(state_dir, blue)
    assert _request(port, "POST", "/v1/generate", generate, token, {"X-Tuneline-Slot": "blue"})[0] == 503

"""Several LoRA adapters on one base in one real tritonserver: a later version joins the running server, the canary
splits traffic between the adapters, a request's `model` picks one, and the second adapter costs next to no memory.

The tiny models' 8-wide heads have no vLLM CPU kernel, so the engine here is the named fallback (PEFT's mixed-adapter
batches); tests/serving/test_vllm_engine.py runs the same layout through vLLM's LoRA.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tuneline.serving.auth import load_token
from tuneline.serving.local import status, stop_all
from tuneline.serving.repository import RepositorySpec
from tuneline.serving.rollout import rollout
from tuneline.serving.routing import CanaryPolicy, read_canary, read_routes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _chat(base: str, token: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}",
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _get(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _rss_mb(pid: int) -> float:
    """Resident memory of tritonserver and its backend stubs (where the weights live), in MiB."""
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def _ask(n: int, model: str | None = None) -> dict:
    return {"messages": [{"role": "user", "content": f"ticket {n}: the printer is offline"}], "max_tokens": 8,
            **({"model": model} if model else {})}


def test_two_adapters_share_one_base_and_the_canary_splits_between_them(
        serve_venv, tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    from tests.support.tinymodel import build_tiny_lora_adapter

    second = build_tiny_lora_adapter(tiny_model, tmp_path / "second", seed=2)
    state_dir = tmp_path / "state"
    log = tmp_path / "requests.jsonl"
    spec = RepositorySpec(adapters="shared")  # on CPU adapters are merged unless asked (RepositorySpec.adapters)
    first = rollout(tiny_adapter, base_model_dir=tiny_model, state_dir=state_dir, label="models:/m/1",
                    request_log=str(log), spec=spec)
    assert first.ok and first.adapter == "m-1" and first.shared_base is None, first.error
    token = load_token(Path(first.token_file))
    try:
        for i in range(4):  # the first adapter warm, as it serves
            assert _chat(first.proxy_url, token, _ask(i))[0] == 200
        one = _rss_mb(first.server.pid)

        policy = CanaryPolicy(promote_after=40, min_requests=4)
        canary = rollout(second, base_model_dir=tiny_model, state_dir=state_dir, canary_percent=50, canary=policy,
                         label="models:/m/2", spec=spec)
        assert canary.ok and canary.canary_percent == 50, canary.error
        assert canary.shared_base == "joined the running server" and canary.adapter == "m-2"
        assert set(status(state_dir)["servers"]) == {first.slot}  # no second server
        routes = read_routes(state_dir)
        assert [(b.slot, b.adapter, b.weight) for b in routes.backends] == [(first.slot, "m-1", 50),
                                                                            (first.slot, "m-2", 50)]
        models = [m["id"] for m in _get(f"{first.proxy_url}/v1/models", token)["data"]]
        assert models == ["tuneline-llm", "m-1", "m-2"]

        # The request's `model` picks the adapter; the two answer differently, each always alike (greedy).
        pinned = {name: [_chat(first.proxy_url, token, _ask(99, name)) for _ in range(2)] for name in ("m-1", "m-2")}
        for name, answers in pinned.items():
            assert [code for code, _ in answers] == [200, 200] and {a["model"] for _, a in answers} == {name}
            assert answers[0][1]["choices"][0]["message"]["content"] == answers[1][1]["choices"][0]["message"][
                "content"]
        texts = {name: a[0][1]["choices"][0]["message"]["content"] for name, a in pinned.items()}
        logged = [json.loads(line) for line in log.read_text().splitlines()]
        assert {r["model"] for r in logged} >= {"m-1", "m-2"}  # the log says which version answered
        assert texts["m-1"] != texts["m-2"], texts
        code, body = _chat(first.proxy_url, token, _ask(1, "m-9"))
        assert code == 404 and body["error"]["param"] == "model" and "'m-2'" in body["error"]["message"]

        # Unpinned traffic: the canary splits it between the adapters inside the one server.
        for i in range(16):
            assert _chat(first.proxy_url, token, _ask(i))[0] == 200
        versions = _get(f"{first.proxy_url}/v1/stats", token)["versions"]
        counts = {key.rsplit("#", 1)[1]: v["requests"] for key, v in versions.items()}
        assert counts["m-1"] > 2 and counts["m-2"] > 2, counts  # 2 pinned each, then a share of the 16
        two = _rss_mb(first.server.pid)
        assert two <= one * 1.10, (one, two)  # the second version costs its LoRA matrices, not a model

        for i in range(80):  # healthy: promoted to all traffic, still one server
            assert _chat(first.proxy_url, token, _ask(i))[0] == 200
            if (read_canary(state_dir) or {}).get("decision") == "promoted":
                break
        assert read_canary(state_dir)["serving"]["adapter"] == "m-2"
        assert [(b.adapter, b.weight) for b in read_routes(state_dir).backends] == [("m-2", 100)]
        assert set(status(state_dir)["servers"]) == {first.slot}
    finally:
        stop_all(state_dir)

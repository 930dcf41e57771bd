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


def test_settled_rollouts_remove_the_adapters_no_route_names_from_the_running_server(
        serve_venv, tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    """Blue/green rollouts that join one server: each keeps the version it replaced (the rollback target) and the
    server's default; the one before goes, and the server refuses it by name while the others answer."""
    from tests.support.tinymodel import build_tiny_lora_adapter
    from tuneline.serving import engine_http
    from tuneline.serving.repository import served_adapters, stream_model_name

    state_dir = tmp_path / "state"
    spec = RepositorySpec(adapters="shared")
    results = [rollout(tiny_adapter, base_model_dir=tiny_model, state_dir=state_dir, label="models:/m/1", spec=spec)]
    assert results[0].ok, results[0].error
    token = load_token(Path(results[0].token_file))
    root = Path(results[0].server.repo_dir) / spec.model_name
    try:
        for n in (2, 3, 4):
            version = build_tiny_lora_adapter(tiny_model, tmp_path / f"v{n}", seed=n)
            results.append(rollout(version, base_model_dir=tiny_model, state_dir=state_dir, label=f"models:/m/{n}",
                                   spec=spec))
            assert results[-1].ok and results[-1].shared_base == "joined the running server", results[-1].error
        assert [r.removed_adapters for r in results] == [[], [], [], [f"{results[0].slot}/m-2"]]
        assert served_adapters(root) == ["m-1", "m-3", "m-4"]  # default, rollback target, current
        routes = read_routes(state_dir)
        assert (routes.current.adapter, routes.previous.adapter) == ("m-4", "m-3")
        assert _chat(results[0].proxy_url, token, _ask(1, "m-4"))[0] == 200
        # The engine that had loaded m-2 (its smoke tests and traffic) lets go of its matrices at its next batch.
        assert "adapter 'm-2' unloaded: its folder was removed" in Path(results[0].server.log_path).read_text()
        assert _chat(results[0].proxy_url, token, _ask(1, "m-2"))[0] == 404  # no route names it
        # Asked for by a KServe v2 body, past the routes: the engine refuses it, naming what it serves.
        twin = stream_model_name(spec.model_name)
        status, raw = engine_http.request(results[0].server.url, "POST", f"/v2/models/{twin}/generate_stream",
                                          json.dumps({"text_input": "hi", "adapter": "m-2"}).encode(),
                                          {"Content-Type": "application/json"}, timeout=60)
        assert b"adapter 'm-2' is not served here (adapters: m-1, m-3, m-4)" in raw, raw[:300]
        assert _chat(results[0].proxy_url, token, _ask(2))[0] == 200  # and serves on
    finally:
        stop_all(state_dir)

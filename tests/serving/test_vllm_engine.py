"""The streaming twin's engine behind real Triton: vLLM's AsyncLLM (the serve venv holds vLLM's CPU build), and
plain generate, named as the fallback, where vLLM cannot run the model or is not importable."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

from bench.engine_worker import descendants
from tuneline.serving import engine_http
from tuneline.serving.env import triton_install
from tuneline.serving.local import start_triton, stop_triton
from tuneline.serving.repository import RepositorySpec, stream_model_name, write_repository

VLLM_MODEL = Path(__file__).resolve().parents[2] / "tuneline" / "serving" / "vllm_model.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _stream(url: str, model: str, body: dict) -> list[dict]:
    status, raw = engine_http.request(url, "POST", f"/v2/models/{model}/generate_stream",
                                      json.dumps(body).encode(), {"Content-Type": "application/json"}, timeout=300)
    assert status == 200, raw[:500]
    events = [json.loads(line[5:]) for line in raw.decode().splitlines() if line.startswith("data:")]
    assert events and not any("error" in e for e in events), events[:3]
    return events


TICKET_SCHEMA = Path(__file__).resolve().parents[2] / "data" / "sample" / "tickets.schema.json"


def _serve(venv: Path, model_dir: Path, tmp_path: Path, base_model_dir: Path | None = None, **spec):
    repo = tmp_path / "repo"
    write_repository(model_dir, repo, RepositorySpec(engine="vllm", max_new_tokens_limit=64, **spec),
                     base_model_dir=base_model_dir, adapter="m-1")
    info = start_triton(repo, "tuneline-llm", state_dir=tmp_path / "state", slot="blue",
                        install=triton_install(venv), timeout=400)
    engine = json.loads((repo / stream_model_name("tuneline-llm") / "1" / "engine.json").read_text())
    return info, engine


def test_without_vllm_the_twin_names_its_fallback_and_still_streams(serve_venv, tiny_model: Path,
                                                                       tmp_path: Path) -> None:
    if _has_vllm(serve_venv.python):
        pytest.skip("this serve venv holds vLLM: this fallback is not taken")
    info, engine = _serve(serve_venv.venv_dir, tiny_model, tmp_path)
    try:
        assert engine["engine"] == "transformers" and "vllm is not importable" in engine["fallback"]
        assert "engine: transformers (fallback: vllm is not importable" in Path(info.log_path).read_text()
        events = _stream(info.url, stream_model_name("tuneline-llm"),
                         {"text_input": "The printer is offline", "max_new_tokens": 16, "stream": True})
        assert len(events) >= 2 and events[-1]["finish_reason"] in ("stop", "length")
    finally:
        stop_triton(info, tmp_path / "state")


def _has_vllm(python: Path) -> bool:
    return subprocess.run([str(python), "-c", "import vllm"], capture_output=True).returncode == 0


def test_the_head_sizes_asked_before_import_are_the_installed_vllms(serve_venv) -> None:
    if not _has_vllm(serve_venv.python):
        pytest.skip("this serve venv holds no vLLM")
    installed = subprocess.run(
        [str(serve_venv.python), "-c", "from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend as B; "
         "print(B.get_supported_head_sizes())"], capture_output=True, text=True, check=True).stdout.strip()
    # vllm_model.py imports Triton's backend module, which exists only inside the server: read its constant.
    tree = ast.parse(VLLM_MODEL.read_text())
    ours = next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CPU_HEAD_SIZES")
    assert json.loads(installed) == list(ours)


def test_a_model_vllm_cannot_run_on_cpu_is_served_plainly_and_named(serve_venv, tiny_model: Path,
                                                                     tmp_path: Path) -> None:
    """The tiny random model has 8-wide heads, for which vLLM's CPU attention has no kernel."""
    info, engine = _serve(serve_venv.venv_dir, tiny_model, tmp_path, response_schema=TICKET_SCHEMA.read_text())
    try:
        assert engine["engine"] == "transformers", engine
        assert "no kernel for head size 8" in engine["fallback"], engine
        # The deployment's schema cannot be applied by plain generate: said, not pretended.
        assert engine["response_schema"] == "not applied: plain generate cannot constrain decoding"
        assert "engine: transformers (fallback: vLLM's CPU attention has no kernel for head size 8" in \
            Path(info.log_path).read_text()
        events = _stream(info.url, stream_model_name("tuneline-llm"),
                         {"text_input": "The printer is offline", "max_new_tokens": 16, "stream": True})
        assert len(events) >= 2 and events[-1]["finish_reason"] in ("stop", "length")
        # Plain generate cannot constrain decoding: a guided request is refused, not answered unconstrained.
        status, raw = engine_http.request(
            info.url, "POST", f"/v2/models/{stream_model_name('tuneline-llm')}/generate_stream",
            json.dumps({"text_input": "The printer is offline", "guide": json.dumps({"json_object": True})}).encode(),
            {"Content-Type": "application/json"}, timeout=60)
        assert b"response_format needs an engine that constrains decoding" in raw, (status, raw[:300])
    finally:
        stop_triton(info, tmp_path / "state")


@pytest.mark.heavy
def test_vllm_engine_streams_token_by_token_and_batches_continuously(serve_venv, tmp_path: Path) -> None:
    """The demo's base model (head size 64): about 100 s here, most of it the engine's start."""
    from tuneline.llm.ml.models import resolve_model

    venv = serve_venv.venv_dir
    schema = json.loads(TICKET_SCHEMA.read_text())
    info, engine = _serve(venv, resolve_model("smollm2-135m-instruct"), tmp_path,
                          response_schema=json.dumps(schema))
    twin = stream_model_name("tuneline-llm")
    try:
        assert engine["engine"] == "vllm" and engine["fallback"] is None, engine
        assert engine["response_schema"].startswith("every answer without its own response_format")
        assert "engine: vllm" in Path(info.log_path).read_text()
        events = _stream(info.url, twin, {"text_input": "The printer is offline", "max_new_tokens": 24,
                                          "stream": True})
        pieces = [e["text_output"] for e in events]
        assert len([p for p in pieces if p]) >= 5, pieces  # token by token, not one piece at the end
        assert events[-1]["finish_reason"] in ("stop", "length")
        whole = _stream(info.url, twin, {"text_input": "The printer is offline", "max_new_tokens": 24})
        assert "".join(pieces) == whole[-1]["text_output"]  # greedy: the same text, whole or in pieces
        assert 0 < whole[-1]["completion_tokens"] <= 24
        # Several requests at once: every one answered, each with its own text.
        import concurrent.futures as cf

        prompts = [f"Ticket {i}: my invoice is wrong" for i in range(8)]
        with cf.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda p: _stream(info.url, twin, {"text_input": p, "max_new_tokens": 16})[-1],
                                    prompts))
        assert all(a["finish_reason"] in ("stop", "length") for a in answers)
        # The deployment's schema constrains every answer: the base model, which free-runs into prose when
        # unconstrained, answers a valid ticket.
        import jsonschema

        messages = [{"role": "user", "content": "My router drops the connection every hour since the update."}]
        ticket = _stream(info.url, twin, {"text_input": json.dumps(messages), "prompt_format": "messages",
                                          "max_new_tokens": 64})[-1]
        jsonschema.validate(json.loads(ticket["text_output"]), schema)
        assert ticket["finish_reason"] == "stop"
        # A request's own format wins over the deployment's.
        yes_no = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
                  "additionalProperties": False}
        guided = _stream(info.url, twin, {"text_input": json.dumps(messages), "prompt_format": "messages",
                                          "max_new_tokens": 32, "guide": json.dumps({"json": yes_no})})[-1]
        jsonschema.validate(json.loads(guided["text_output"]), yes_no)
    finally:
        stop_triton(info, tmp_path / "state")


@pytest.mark.heavy
def test_vllm_serves_several_lora_adapters_on_one_base(serve_venv, tmp_path: Path) -> None:
    """Two LoRA adapters over the demo's base model: the second added while the engine runs, each request
    answered by the adapter it names (vLLM's LoRARequest), the default adapter where it names none."""
    from tests.support.tinymodel import build_tiny_lora_adapter
    from tuneline.llm.ml.models import resolve_model
    from tuneline.serving.repository import add_adapter

    base = resolve_model("smollm2-135m-instruct")
    first = build_tiny_lora_adapter(base, tmp_path / "a1", seed=1)
    second = build_tiny_lora_adapter(base, tmp_path / "a2", seed=2)
    info, engine = _serve(serve_venv.venv_dir, first, tmp_path, base_model_dir=base, adapters="shared")
    twin = stream_model_name("tuneline-llm")
    try:
        assert engine["engine"] == "vllm" and engine["fallback"] is None, engine
        assert engine["adapters"] == "served on one base"
        assert add_adapter(tmp_path / "repo" / "tuneline-llm", second, "m-2", RepositorySpec(adapters="shared"),
                           base_model_dir=base) is None

        def answer(adapter: str | None) -> str:
            body = {"text_input": "The printer is offline", "max_new_tokens": 12,
                    **({"adapter": adapter} if adapter else {})}
            return _stream(info.url, twin, body)[-1]["text_output"]

        answers = {name: answer(name) for name in ("m-1", "m-2", None)}
        assert answers[None] == answers["m-1"]  # the default adapter answers a request that names none
        assert answers["m-1"] != answers["m-2"], answers  # each its own weights
        assert answer("m-2") == answers["m-2"]
        status, raw = engine_http.request(info.url, "POST", f"/v2/models/{twin}/generate_stream",
                                          json.dumps({"text_input": "hi", "adapter": "m-9"}).encode(),
                                          {"Content-Type": "application/json"}, timeout=60)
        assert b"adapter 'm-9' is not served here (adapters: m-1, m-2)" in raw, raw[:300]
        # An adapter whose weights the engine cannot load fails its own request, named, and only that one: it is
        # loaded apart (add_lora), not inside a model step, where the failure would stop the engine.
        import shutil

        broken = tmp_path / "repo" / "tuneline-llm" / "1" / "adapters" / "m-3"
        shutil.copytree(second, broken)
        (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
        status, raw = engine_http.request(info.url, "POST", f"/v2/models/{twin}/generate_stream",
                                          json.dumps({"text_input": "hi", "adapter": "m-3"}).encode(),
                                          {"Content-Type": "application/json"}, timeout=120)
        assert b"adapter 'm-3' cannot be loaded by the engine" in raw, raw[:500]
        assert answer("m-2") == answers["m-2"] and answer("m-1") == answers["m-1"]  # the engine serves on
        # Housekeeping takes m-2 out while the engine holds it: its rows are refused by name before they reach the
        # engine (which reads an evicted adapter's folder again inside a model step, fatally), and it serves on.
        from tuneline.serving.repository import remove_adapters

        assert remove_adapters(tmp_path / "repo" / "tuneline-llm", ["m-1", "m-2"]) == ["m-2"]  # never the default
        status, raw = engine_http.request(info.url, "POST", f"/v2/models/{twin}/generate_stream",
                                          json.dumps({"text_input": "hi", "adapter": "m-2"}).encode(),
                                          {"Content-Type": "application/json"}, timeout=60)
        assert b"adapter 'm-2' is not served here (adapters: m-1, m-3)" in raw, raw[:300]
        assert answer("m-1") == answers["m-1"] and answer(None) == answers["m-1"]
    finally:
        stop_triton(info, tmp_path / "state")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@pytest.mark.heavy
def test_a_dead_engine_core_stops_the_server_instead_of_leaving_it_ready(serve_venv, tmp_path: Path) -> None:
    """Triton reports ready whatever its Python backend's engine does; killing vLLM's engine core (as the kernel's
    OOM killer would) must take the server down, so that its supervisor restarts it."""
    import signal
    import time

    from tuneline.llm.ml.models import resolve_model

    info, engine = _serve(serve_venv.venv_dir, resolve_model("smollm2-135m-instruct"), tmp_path)
    try:
        assert engine["engine"] == "vllm", engine
        _stream(info.url, stream_model_name("tuneline-llm"), {"text_input": "The printer", "max_new_tokens": 4})
        names = {p: Path(f"/proc/{p}/cmdline").read_text(errors="replace") for p in descendants(info.pid)}
        cores = [p for p, name in names.items() if "EngineCor" in name]  # its title; comm keeps 15 characters
        assert cores, f"no vLLM engine core process under the server: {names}"
        os.kill(cores[0], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not _gone(info.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        log = Path(info.log_path).read_text(errors="replace")
        assert _gone(info.pid), f"the server still runs with a dead engine:\n{log[-2000:]}"
        assert "engine core died" in log and "stopping tritonserver" in log
    finally:
        stop_triton(info, tmp_path / "state")

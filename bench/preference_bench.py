"""DPO after SFT on the ticket demo: does the preference step rank the right answer above a near miss more often
than the SFT model it starts from, on prompts it never saw?

Run as: python bench/preference_bench.py                  (CPU: SmolLM2-135M-Instruct, the pipeline's defaults)
Override example: python bench/preference_bench.py --model tiny-random-llama --sft-steps 2 --dpo-steps 2

The steps run as the pipeline runs them (pipelines/preference.yaml), each through its component's command line:
prepare the SFT tickets, train the SFT LoRA adapter, prepare the preference pairs
(data/sample/tickets-preference.jsonl), then DPO with LoRA on top of the SFT model, which is also its reference.
Reported on the held-out validation and test pairs (prompts in neither the SFT data nor the DPO training split):

- reward accuracy and margin: the share of pairs where the DPO implicit reward ``beta * (log pi - log ref)`` of
  the chosen answer beats the rejected one's, and the mean difference (TRL's ``rewards/accuracies``/``margins``).
  The SFT model's own implicit reward against itself is 0 for every answer, so this figure has no SFT
  counterpart; hence also:
- preference accuracy: the share of pairs whose chosen answer gets the higher log-probability, under the DPO
  model and under the SFT model (the reference): the like-for-like comparison.

Results go to bench/results/preference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuneline.llm.ml.models import SUMMARY_FILE  # noqa: E402
from tuneline.settings import TELEMETRY_OFF  # noqa: E402


def _run(module: str, *args: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{module} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _prepare(raw: Path, out: Path, env: dict[str, str]) -> float:
    return _run("components.prepare", "--raw", str(raw), *(a for n in ("train", "validation", "test", "report")
                                                           for a in (f"--{n}-out", str(out / n))), env=env)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--sft-steps", type=int, default=24)
    p.add_argument("--dpo-steps", type=int, default=24)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "preference.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="preference-bench-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), **TELEMETRY_OFF,
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "OMP_WAIT_POLICY": "PASSIVE"}
    seconds = {"prepare_sft": _prepare(ROOT / "data/sample/tickets.jsonl", work / "sft-data", env)}
    seconds["train_sft"] = _run(
        "components.train", "--train", str(work / "sft-data/train"), "--validation", str(work / "sft-data/validation"),
        "--base-model", args.model, "--max-steps", str(args.sft_steps), "--model-out", str(work / "sft"),
        "--checkpoints", str(work / "sft-ckpt"), "--mlflow-run-id-out", str(work / "sft-run"), env=env)
    seconds["prepare_pairs"] = _prepare(ROOT / "data/sample/tickets-preference.jsonl", work / "pairs", env)
    seconds["dpo"] = _run(
        "components.preference", "--train", str(work / "pairs/train"), "--validation", str(work / "pairs/validation"),
        "--test", str(work / "pairs/test"), "--base-model", args.model, "--sft-model", str(work / "sft"),
        "--loss", "dpo", "--beta", str(args.beta), "--max-steps", str(args.dpo_steps), "--max-eval-examples", "0",
        "--model-out", str(work / "dpo"), "--checkpoints", str(work / "dpo-ckpt"),
        "--mlflow-run-id-out", str(work / "dpo-run"), env=env)
    summary = json.loads((work / "dpo" / SUMMARY_FILE).read_text())
    card = json.loads((work / "pairs" / "report" / "data_card.json").read_text())
    held = {}
    for split, m in summary["held_out"].items():
        held[split] = {
            "pairs": int(m["examples"]),
            "dpo_reward_accuracy": round(m["rewards/accuracies"], 4),
            "dpo_reward_margin": round(m["rewards/margins"], 4),
            "dpo_rewards_chosen": round(m["rewards/chosen"], 4),
            "dpo_rewards_rejected": round(m["rewards/rejected"], 4),
            "dpo_preference_accuracy": round(m["policy_preference_accuracy"], 4),
            "sft_preference_accuracy": round(m["reference_preference_accuracy"], 4),
            "dpo_loss": round(m["loss"], 4),
        }
    result = {
        "model": args.model,
        "device": "cuda" if summary["mixed_precision"] != "no" else "cpu",
        "sft": {"steps": args.sft_steps, "method": "lora", "data": "data/sample/tickets.jsonl"},
        "dpo": {"steps": summary["steps"], "beta": args.beta, "method": "lora on the merged SFT model",
                "reference": "the SFT model (the DPO adapter disabled)", "per_device_batch":
                summary["hyperparameters"]["per_device_batch"], "learning_rate":
                summary["hyperparameters"]["learning_rate"], "first_train_loss": round(summary["first_train_loss"], 4),
                "final_train_loss": round(summary["final_train_loss"], 4)},
        "data": {"file": "data/sample/tickets-preference.jsonl", "splits": card["splits"],
                 "formats": card["formats"]},
        "held_out": held,
        "claims": {split: {"reward_accuracy_above_0.5": h["dpo_reward_accuracy"] > 0.5,
                           "dpo_prefers_chosen_more_often_than_sft": h["dpo_preference_accuracy"]
                           > h["sft_preference_accuracy"]} for split, h in held.items()},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

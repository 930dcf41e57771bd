"""Training throughput: our loop (LoRA / full, padded / packed) against TRL's SFTTrainer with default settings.

Run as: python bench/train_bench.py                      (CPU: SmolLM2-135M-Instruct, a few steps each)
        python bench/train_bench.py --steps 20           (GPU is used automatically when CUDA is present:
                                                         bf16, a ~1B Llama built from a config, MFU reported)
Override example: python bench/train_bench.py --model tiny-random-llama --steps 3 --batch 4

Every run happens in this process on the same data: the sample tickets (prepared with the same split rule
as the pipeline) or, when absent, the synthetic fixture. Reported per run: training tokens/s (real,
non-padding tokens), the share of real tokens among those processed, peak memory (GPU: max allocated;
CPU: peak resident-set growth during the run, sampled), and on GPU the model FLOPs utilisation against that
GPU's own dense bf16/fp16 tensor-core peak (``GPU_PEAKS``; none is reported for a GPU not in the table).
Step times come from the train loop, which synchronises the device around each timed step. Results go to
bench/results/train.json. No Hub access is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see components/train/__init__.py
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuneline.llm.ml.models import SUMMARY_FILE  # noqa: E402
from tuneline.settings import disable_mlflow_telemetry  # noqa: E402

disable_mlflow_telemetry()

# Dense (no structured sparsity) tensor-core peaks in TFLOP/s for the 16-bit type the run uses (bf16 from sm_80,
# fp16 below, see tuneline/llm/ml/device.py), from NVIDIA's data sheets. Data sheets quote the sparse figure with
# an asterisk; the dense one is half of it. First match wins, so specific names precede their prefixes.
# Not listed (MFU not reported): chips without an NVIDIA data sheet figure, such as AWS's A10G.
GPU_PEAKS: list[tuple[str, float, str]] = [
    ("H200 NVL", 835, "H200 NVL data sheet: BF16 Tensor Core 1,671 TFLOPS with sparsity"),
    ("H200", 989, "H200 SXM data sheet: BF16 Tensor Core 1,979 TFLOPS with sparsity"),
    ("H100 NVL", 835, "H100 NVL data sheet: BF16 Tensor Core 1,671 TFLOPS with sparsity"),
    ("H100 PCIe", 756, "H100 PCIe data sheet: BF16 Tensor Core 1,513 TFLOPS with sparsity"),
    ("H100", 989, "H100 SXM data sheet: BF16 Tensor Core 1,979 TFLOPS with sparsity"),
    ("A100", 312, "A100 data sheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity)"),
    ("L40S", 362, "L40S data sheet: BF16 Tensor Core 362.05 TFLOPS (733 with sparsity)"),
    ("L4", 121, "L4 data sheet: BF16 Tensor Core 242 TFLOPS with sparsity"),
    ("A10", 125, "A10 data sheet: BF16 Tensor Core 125 TFLOPS (250 with sparsity)"),
    ("T4", 65, "T4 data sheet: mixed-precision (FP16/FP32) 65 TFLOPS"),
    ("V100S", 130, "V100S PCIe data sheet: Tensor Performance 130 TFLOPS"),
    ("V100-PCIE", 112, "V100 data sheet: PCIe Tensor Performance 112 TFLOPS"),
    ("V100", 125, "V100 data sheet: SXM2 Tensor Performance 125 TFLOPS"),
]


def peak_flops(device_name: str) -> tuple[float, str] | None:
    """(dense 16-bit tensor-core peak FLOP/s, its source) of the GPU named ``device_name`` as
    ``torch.cuda.get_device_name()`` gives it ("NVIDIA A100-SXM4-80GB", "Tesla T4"), or None when unknown."""
    import re

    for key, tflops, source in GPU_PEAKS:
        # Whole tokens only: "A10" must not match "A10G" (a different chip) nor "L4" match "L40S".
        if re.search(rf"(?<![A-Z0-9]){re.escape(key.upper())}(?![A-Z0-9])", device_name.upper()):
            return tflops * 1e12, source
    return None


class RssPeak:
    """Peak resident-set growth of this process while the block runs (CPU memory of one run)."""

    def __enter__(self):
        import psutil

        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.mb = (self.peak - self.start) / 2**20


def gpu_model_folder(cache: Path) -> Path:
    """A ~1B-parameter Llama (random weights) built from a config, with the SmolLM2 tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneline.llm.ml.models import load_tokenizer, resolve_model

    folder = cache / "llama-1b-random"
    if (folder / "config.json").is_file():
        return folder
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def n_params(folder: Path) -> tuple[int, int]:
    """(all parameters, parameters outside the embedding) from the config, for the FLOP count."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(folder)
    head = c.hidden_size // c.num_attention_heads
    per_layer = (c.hidden_size * head * (c.num_attention_heads + 2 * c.num_key_value_heads)
                 + c.num_attention_heads * head * c.hidden_size + 3 * c.hidden_size * c.intermediate_size)
    body = per_layer * c.num_hidden_layers
    lm_head = c.vocab_size * c.hidden_size
    return body + lm_head * (1 if c.tie_word_embeddings else 2), body + lm_head


def flops_per_token(folder: Path, method: str, mean_len: float, target_share: float) -> float:
    """Model FLOPs of one training step per real (non-padding) token.

    Weights: 6 per weight for a full step (forward 2, input gradient 2, weight gradient 2), 4 for LoRA/QLoRA,
    whose frozen weights get no weight gradient (the adapter's own FLOPs, under 1%, are left out). The vocabulary
    projection counts only at the share of tokens that are targets: the loop computes logits at answer positions
    alone (``logits_to_keep``); a full-sequence loss has target_share 1. Attention: scores and the weighted sum
    are 2 x 2 x hidden FLOPs per attended position per layer forward; causally a token of a sequence of length s
    attends s/2 positions on average, and training triples the forward: 6 x layers x hidden x s per token, with
    s the mean example length (packed examples attend only within themselves).
    """
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(folder)
    _, with_head = n_params(folder)
    head = c.vocab_size * c.hidden_size
    k = 6 if method == "full" else 4
    return k * (with_head - head) + k * head * target_share + 6 * c.num_hidden_layers * c.hidden_size * mean_len


def ours(name: str, method: str, packing: bool, args, data: dict, model: str, work: Path) -> dict:
    from components.train.__main__ import main

    out = work / name
    argv = ["--train", str(data["train"]), "--base-model", model, "--method", method, "--packing", str(packing).lower(),
            "--max-steps", str(args.steps), "--per-device-batch", str(args.batch), "--max-seq-len", str(args.seq_len),
            "--learning-rate", "1e-4", "--save-steps", "0", "--keep-checkpoints", "1", "--warmup-ratio", "0",
            "--model-out", str(out / "model"), "--checkpoints", str(out / "ckpt"),
            "--mlflow-run-id-out", str(out / "run_id.json")]
    reset_gpu_peak()
    with RssPeak() as rss:
        assert main(argv) == 0
    summary = json.loads((out / "model" / SUMMARY_FILE).read_text())
    return {"run": name, "method": method, "packing": packing, "tokens_per_s": summary["tokens_per_s"],
            "real_token_share": summary["real_token_share"], "real_tokens": summary["real_tokens"],
            "target_share": summary["target_tokens"] / max(summary["real_tokens"], 1),
            "mean_len": summary["real_tokens"] / max(summary["steps"] * args.batch, 1),
            "train_time_s": summary["train_time_s"], "peak_memory_mb": gpu_peak() or rss.mb,
            "loss_first": summary["first_train_loss"], "loss_last": summary["final_train_loss"]}


def trl_default(name: str, method: str, args, data: dict, model: str) -> dict:
    """TRL's SFTTrainer with its defaults (padding to the longest in a batch, full-sequence loss)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tuneline.llm.ml.data import read_split
    from tuneline.llm.ml.models import load_causal_lm, load_tokenizer, resolve_model

    path = resolve_model(model)
    records = read_split(data["train"]).records
    dataset = Dataset.from_list([{"messages": r.messages} for r in records])
    cuda = torch.cuda.is_available()
    config = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=args.steps, per_device_train_batch_size=args.batch,
                       report_to=[], save_strategy="no", logging_steps=1, bf16=cuda, use_cpu=not cuda,
                       max_length=args.seq_len, dataloader_num_workers=0, disable_tqdm=True)
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM") \
        if method == "lora" else None
    reset_gpu_peak()
    with RssPeak() as rss:
        trainer = SFTTrainer(model=load_causal_lm(path, dtype=torch.float32), args=config, train_dataset=dataset,
                             processing_class=load_tokenizer(path), peft_config=peft_config)
        counts = {"real": 0, "padded": 0}
        collate = trainer.data_collator

        def counting(features):
            batch = collate(features)
            counts["real"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch[
                "input_ids"].numel()
            counts["padded"] += batch["input_ids"].numel()
            return batch

        trainer.data_collator = counting
        trainer.train_dataset  # noqa: B018 - built already; the dataloader is created inside train()
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"run": name, "method": method, "packing": False, "tokens_per_s": counts["real"] / seconds,
            "real_token_share": counts["real"] / max(counts["padded"], 1), "real_tokens": counts["real"],
            "train_time_s": seconds, "peak_memory_mb": gpu_peak() or rss.mb,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def reset_gpu_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def bench_data(work: Path) -> dict:
    sample = ROOT / "data" / "sample" / "tickets.jsonl"
    if sample.is_file():
        import subprocess

        out = work / "prepared"
        cmd = [sys.executable, "-m", "components.prepare", "--raw", str(sample)]
        for split in ("train", "validation", "test", "report"):
            (out / split).mkdir(parents=True, exist_ok=True)
            cmd += [f"--{split}-out", str(out / split)]
        if subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0:
            return {"train": out / "train", "source": "data/sample/tickets.jsonl"}
    from tests.support.tickets import write_splits

    return {"train": write_splits(work / "fixture", n_train=256)["train"], "source": "synthetic fixture"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None,
                        help="base model (default: smollm2-135m-instruct on CPU, a random ~1B Llama on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: CPU 4, GPU 30)")
    parser.add_argument("--batch", type=int, default=None, help="per-device batch (default: CPU 8, GPU 16)")
    parser.add_argument("--seq-len", type=int, default=512, help="maximum tokens per example (default: 512)")
    parser.add_argument("--skip-trl", action="store_true", help="only our loop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train.json",
                        help="results JSON (default: bench/results/train.json)")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    args.steps = args.steps or (30 if cuda else 4)
    args.batch = args.batch or (16 if cuda else 8)
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    os.environ.setdefault("TUNELINE_HOME", str(ROOT / ".tuneline"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    data = bench_data(work)
    model = args.model or (str(gpu_model_folder(work)) if cuda else "smollm2-135m-instruct")

    runs = []
    for method in ("lora", "full"):
        for packing in (False, True):
            runs.append(ours(f"tuneline-{method}-{'packed' if packing else 'padded'}", method, packing, args, data,
                             model, work))
            print(json.dumps(runs[-1]), flush=True)
        if not args.skip_trl:
            runs.append(trl_default(f"trl-sft-default-{method}", method, args, data, model))
            print(json.dumps(runs[-1]), flush=True)
    peak = None
    if cuda:
        from tuneline.llm.ml.models import resolve_model

        device = torch.cuda.get_device_name()
        peak = peak_flops(device)
        folder = resolve_model(model)
        for run in runs:
            # TRL's default loss covers every token, so its logits are computed at every position.
            per_token = flops_per_token(folder, run["method"], run.get("mean_len", args.seq_len),
                                        run.get("target_share", 1.0))
            run["model_tflops_per_s"] = run["tokens_per_s"] * per_token / 1e12
            run["mfu"] = run["tokens_per_s"] * per_token / peak[0] if peak else None
        if peak is None:
            print(f"no peak FLOP/s known for {device!r}: MFU not reported (add it to GPU_PEAKS)")
    else:
        device = f"cpu ({os.cpu_count()} cores)"
    result = {"device": device, "peak_flops": peak[0] if peak else None, "peak_source": peak[1] if peak else None,
              "model": model if not cuda else "llama-~1B-random (bf16)", "data": data["source"],
              "steps": args.steps, "per_device_batch": args.batch, "max_seq_len": args.seq_len, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'run':32} {'tokens/s':>10} {'real share':>10} {'peak MB':>9}" + ("  MFU" if cuda else ""))
    for run in runs:
        line = (f"{run['run']:32} {run['tokens_per_s']:10.0f} {run['real_token_share']:10.2f} "
                f"{run['peak_memory_mb']:9.0f}")
        print(line + (f" {run['mfu']:5.1%}" if cuda and run.get("mfu") is not None else ""))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

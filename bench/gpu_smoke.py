"""One prepared GPU check of the training path, in one go of at most 8 minutes on one GPU.

Run as: python bench/gpu_smoke.py                 (a GPU machine: a ~1B Llama built from its config)
        python bench/gpu_smoke.py --dry-run       (any machine, CPU included: a tiny model, the same stages)
Override example: python bench/gpu_smoke.py --lora-steps 30 --out /tmp/gpu-smoke.json

Every stage runs the real train component (``python -m components.train``, or ``accelerate launch`` for FSDP)
as its own process, on a model with random weights built here from a Llama config (no Hub, no network):
  1. lora      bf16 LoRA steps (fp16 below sm_80: the component's own precision choice)
  2. full      full fine-tuning steps
  3. mfu       model FLOPs utilisation of 1 and 2 against this GPU's own peak (bench/train_bench.py GPU_PEAKS)
  4. fsdp      LoRA under FSDP2 on the one GPU (accelerate launch, components/train/accelerate/fsdp.yaml)
  5. resume    LoRA killed by SIGTERM after its first checkpoint, started again: it must end where 1 ended
It prints one table and writes bench/results/gpu-smoke.json (--out). Exit status 0 only when every stage passed.
Needs torch, transformers, peft and accelerate; MLflow and bitsandbytes are not needed (without MLflow the
runs are not tracked, and the train component says so).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see components/train/__init__.py
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuneline.llm.ml.models import SUMMARY_FILE  # noqa: E402
from tuneline.settings import TELEMETRY_OFF  # noqa: E402

# TinyLlama-1.1B's shape (hidden 2048, 22 layers, GQA 32/4 heads, MLP 5632) with a 32k vocabulary: ~1.1B
# parameters, 2.2 GB in bf16. The byte-level tokenizer uses the first 259 ids; the rest of the embedding is there
# so the vocabulary projection costs what a real model's does.
LLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096)
TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048)
RESUME_TOLERANCE = {"cpu": 1e-5, "cuda": 2e-2}  # bf16 kernels are not bitwise deterministic across processes


# Imported by the train component and this script; a bare GPU machine with the ML stack preinstalled may lack the
# last two (their wheels are small: carry them).
REQUIRED = ["torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "yaml", "pydantic"]


def missing_packages() -> list[str]:
    import importlib.util

    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def build_model(folder: Path, shape: dict, on_gpu: bool) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneline.llm.ml.models import make_tiny_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tokenizer = make_tiny_tokenizer()
    config = LlamaConfig(**shape, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if on_gpu else torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return folder


def train_args(data: dict, model: Path, out: Path, method: str, steps: int, batch: int, seq_len: int) -> list[str]:
    return ["-m", "components.train", "--train", str(data["train"]), "--base-model", str(model), "--method", method,
            "--max-steps", str(steps), "--per-device-batch", str(batch), "--max-seq-len", str(seq_len),
            "--learning-rate", "1e-4" if method == "full" else "1e-3", "--warmup-ratio", "0", "--lora-dropout", "0",
            # Full fine-tuning checkpoints hold fp32 weights and Adam state (~13 GB at 1.1B): only the final one.
            "--save-steps", "0" if method == "full" else "2", "--keep-checkpoints", "1",
            "--model-out", str(out / "model"), "--checkpoints", str(out / "ckpt"),
            "--mlflow-run-id-out", str(out / "run_id.txt")]


def launch(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()


def tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def summary_of(out: Path) -> dict:
    return json.loads((out / "model" / SUMMARY_FILE).read_text())


def losses_of(out: Path) -> list[float]:
    from tuneline.llm.ml.checkpoint import latest

    return json.loads((latest(out / "ckpt") / "state.json").read_text())["losses"]


class Stages:
    def __init__(self, deadline: float) -> None:
        self.rows: list[dict] = []
        self.deadline = deadline

    def left(self) -> float:
        return max(self.deadline - time.time(), 1.0)

    def run(self, name: str, fn) -> dict:
        started = time.time()
        row = {"stage": name, "status": "ok"}
        try:
            row.update(fn() or {})
        except Exception as err:  # noqa: BLE001 - a failed stage is reported in the table, the others still run
            row.update(status="FAIL", note=" ".join(f"{type(err).__name__}: {err}".split())[:300])
        row["seconds"] = round(time.time() - started, 1)
        self.rows.append(row)
        print(f"[{name}] {row['status']} in {row['seconds']} s {row.get('note', '')}", flush=True)
        return row


def train_stage(data, model, out, method, steps, batch, seq_len, env, stages) -> dict:
    log = out.with_suffix(".log")
    code = finish(launch([sys.executable, *train_args(data, model, out, method, steps, batch, seq_len)], env, log),
                  stages.left())
    if code != 0:
        raise RuntimeError(f"train exited {code}: {tail(log)}")
    s = summary_of(out)
    return {"steps": s["steps"], "tokens_per_s": round(s["tokens_per_s"], 1), "loss_first": s["first_train_loss"],
            "loss_last": s["final_train_loss"], "peak_memory_gb": round(s["peak_memory_mb"] / 1024, 2),
            "precision": s["precision"]["mixed_precision"], "attention": s["precision"]["attn_implementation"],
            "target_share": s["target_tokens"] / max(s["real_tokens"], 1),
            "mean_len": s["real_tokens"] / max(s["steps"] * batch, 1)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model, CPU or GPU, seconds per stage")
    parser.add_argument("--lora-steps", type=int, default=None, help="LoRA steps (default: GPU 20, dry run 12)")
    parser.add_argument("--full-steps", type=int, default=None, help="full fine-tuning steps (GPU 8, dry run 2)")
    parser.add_argument("--batch", type=int, default=None, help="per-device batch (GPU 8, dry run 2)")
    parser.add_argument("--seq-len", type=int, default=512, help="maximum tokens per example (default 512)")
    parser.add_argument("--budget-s", type=float, default=480, help="wall-clock budget for all stages (480)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder (models, logs)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default bench/results/gpu-smoke.json; dry run: gpu-smoke-dry-run.json)")
    return parser


def mfu_stage(model, device: str, cuda: bool, rows: tuple[dict, dict]) -> dict:
    """Model FLOPs utilisation of the lora and full rows, written into them."""
    from bench.train_bench import flops_per_token, peak_flops

    if not cuda:
        return {"note": "no GPU: MFU not measured (dry run)"}
    peak = peak_flops(device)
    if peak is None:
        return {"note": f"no peak known for {device!r} (bench/train_bench.py GPU_PEAKS)"}
    notes = []
    for row, method in zip(rows, ("lora", "full"), strict=True):
        if row.get("tokens_per_s"):
            per_token = flops_per_token(model, method, row["mean_len"], row["target_share"])
            row["mfu"] = round(row["tokens_per_s"] * per_token / peak[0], 4)
            notes.append(f"{row['stage']} {row['mfu']:.1%}")
    return {"note": f"{', '.join(notes)} of {peak[0] / 1e12:g} TFLOP/s ({peak[1]})"}


def fsdp_stage(data, model, out: Path, steps: int, batch: int, seq_len: int, env, stages) -> dict:
    """A short LoRA run under FSDP2 through accelerate launch, one process."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "components" / "train" / "accelerate" / "fsdp.yaml"), "--num_processes", "1",
               "--main_process_port", "0",
               *train_args(data, model, out, "lora", steps, batch, seq_len)]
    log = out.with_suffix(".log")
    code = finish(launch(command, env, log), stages.left())
    text = log.read_text(errors="replace") if log.is_file() else ""
    if code != 0:
        raise RuntimeError(f"accelerate launch exited {code}: {tail(log)}")
    if "distribution FSDP" not in text:
        raise RuntimeError("the run did not train under FSDP: " + tail(log))
    s = summary_of(out)
    return {"steps": s["steps"], "tokens_per_s": round(s["tokens_per_s"], 1),
            "loss_last": s["final_train_loss"], "peak_memory_gb": round(s["peak_memory_mb"] / 1024, 2),
            "note": "FSDP2, 1 process"}


def resume_stage(data, model, out: Path, steps: int, batch: int, seq_len: int, env, stages, lora: dict,
                 lora_out: Path, cuda: bool) -> dict:
    """Kill a LoRA run once it has checkpointed, resume it and compare its losses with the lora stage's."""
    if lora.get("status") != "ok":
        raise RuntimeError("needs the lora stage's result to compare with")
    command = [sys.executable, *train_args(data, model, out, "lora", steps, batch, seq_len)]
    log = out.with_suffix(".log")
    process = launch(command, env, log)
    while not list((out / "ckpt").glob("checkpoint-*")) and process.poll() is None and stages.left() > 1:
        time.sleep(0.01)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # what a spot eviction or node drain sends
    code = finish(process, stages.left())
    if code != 143:
        raise RuntimeError(f"the killed run exited {code}, not 143 (checkpointed and stopped): {tail(log)}")
    from tuneline.llm.ml.checkpoint import latest

    stopped_at = json.loads((latest(out / "ckpt") / "state.json").read_text())["global_step"]
    code = finish(launch(command, env, log.with_name("resume-2.log")), stages.left())
    if code != 0:
        raise RuntimeError(f"the resumed run exited {code}: {tail(log.with_name('resume-2.log'))}")
    resumed, reference = losses_of(out), losses_of(lora_out)
    diff = max(abs(a - b) for a, b in zip(resumed, reference, strict=True))
    tolerance = RESUME_TOLERANCE["cuda" if cuda else "cpu"]
    if diff > tolerance:
        raise RuntimeError(f"resumed losses differ from the uninterrupted run's by {diff:.2e} "
                           f"(> {tolerance:g})")
    return {"steps": len(resumed), "loss_last": resumed[-1],
            "note": f"killed at step {stopped_at}, resumed; max loss difference {diff:.1e}"}


def _print_table(device: str, torch_version: str, wall_s: float, rows: list[dict]) -> None:
    print(f"\n{device}, torch {torch_version}, {wall_s} s in all")
    print(f"{'stage':8} {'status':6} {'s':>6} {'steps':>5} {'tokens/s':>9} {'MFU':>6} {'peak GB':>8}  note")
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else ""
        print(f"{row['stage']:8} {row['status']:6} {row['seconds']:6.1f} {row.get('steps', ''):>5} "
              f"{row.get('tokens_per_s', ''):>9} {mfu:>6} {row.get('peak_memory_gb', ''):>8}  {row.get('note', '')}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = missing_packages()
    if missing:
        print(f"error: missing Python packages: {', '.join(missing)} (install them, e.g. from wheels: pip install "
              f"--no-index --find-links WHEELS {' '.join('pyyaml' if m == 'yaml' else m for m in missing)})",
              file=sys.stderr)
        return 2

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("error: no CUDA GPU here; use --dry-run for the same stages on a tiny model", file=sys.stderr)
        return 2
    dry = args.dry_run
    lora_steps = args.lora_steps or (12 if dry else 20)
    full_steps = args.full_steps or (2 if dry else 8)
    batch = args.batch or (2 if dry else 8)
    out_path = args.out or ROOT / "bench" / "results" / ("gpu-smoke-dry-run.json" if dry else "gpu-smoke.json")
    started = time.time()
    stages = Stages(started + args.budget_s)
    work = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(":"),
           "TUNELINE_HOME": str(work / "home"), **TELEMETRY_OFF, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # tracked into the scratch home when MLflow is installed, else untracked

    from bench.train_bench import n_params
    from tests.support.tickets import write_splits

    data = write_splits(work / "data", n_train=64)
    device = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)"
    capability = torch.cuda.get_device_capability() if cuda else None
    model_box: dict = {}

    def build():
        model_box["path"] = build_model(work / "model", TINY if dry else LLAMA_1B, cuda)
        total, _ = n_params(model_box["path"])
        return {"note": f"{total / 1e6:,.1f}M parameters, random weights, {'bf16' if cuda else 'fp32'} on disk"}

    stages.run("build", build)
    model = model_box.get("path")
    lora_out, full_out = work / "lora", work / "full"
    if model is not None:
        lora = stages.run("lora", lambda: train_stage(data, model, lora_out, "lora", lora_steps, batch, args.seq_len,
                                                      env, stages))
        full = stages.run("full", lambda: train_stage(data, model, full_out, "full", full_steps, batch, args.seq_len,
                                                      env, stages))

        stages.run("mfu", lambda: mfu_stage(model, device, cuda, (lora, full)))
        stages.run("fsdp", lambda: fsdp_stage(data, model, work / "fsdp", min(lora_steps, 6), batch,
                                              args.seq_len, env, stages))
        stages.run("resume", lambda: resume_stage(data, model, work / "resume", lora_steps, batch, args.seq_len,
                                                  env, stages, lora, lora_out, cuda))

    result = {"device": device, "capability": list(capability) if capability else None, "dry_run": dry,
              "torch": torch.__version__, "model": "tiny random Llama" if dry else "Llama ~1.1B (random, bf16)",
              "batch": batch, "max_seq_len": args.seq_len, "wall_s": round(time.time() - started, 1),
              "stages": stages.rows}
    for package in ("transformers", "peft", "accelerate"):
        result[package] = __import__(package).__version__
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    _print_table(device, torch.__version__, result["wall_s"], stages.rows)
    print(f"results: {out_path}")
    if args.keep_work:
        print(f"scratch folder (models, checkpoints, logs): {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(row["status"] == "ok" for row in stages.rows) else 1


if __name__ == "__main__":
    sys.exit(main())

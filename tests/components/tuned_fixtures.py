"""Builders for what train and evaluate hand to register: a LoRA folder over ``tiny-random-llama`` and a
metrics JSON. Shared by the register and deploy tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE = "tiny-random-llama"


def make_adapter(out: Path, seed: int = 1, base: str = BASE) -> Path:
    """A train-step output folder: LoRA adapter (random B, so it changes outputs), tokenizer, summary."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneline.llm.ml.models import load_causal_lm, load_tokenizer, resolve_model

    base_dir = resolve_model(base)
    model = get_peft_model(
        load_causal_lm(base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    for cfg in model.peft_config.values():
        cfg.base_model_name_or_path = base
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, save_embedding_layers=False)
    load_tokenizer(base_dir).save_pretrained(out)
    summary = {
        "base_model": base,
        "method": "lora",
        "hyperparameters": {"learning_rate": 1e-3, "lora_r": 4, "epochs": 1, "seed": seed},
        "data": {"train_sha256": f"{seed:064x}", "n_train": 32, "validation_sha256": None, "n_validation": 0},
        "mlflow_run_id": "",
    }
    (out / "training_summary.json").write_text(json.dumps(summary))
    return out


def make_metrics(path: Path, tuned: float, base: float = 0.1, extra: dict | None = None) -> Path:
    doc = {
        "models": {
            "base": {"exact_match": base, "perplexity": 50.0},
            "tuned": {"exact_match": tuned, "perplexity": 10.0 - tuned},
        },
        "gates": {"expression": "tuned.exact_match >= base.exact_match", "passed": True, "clauses": []},
        "test_sha256": "ab" * 32,
        "n_examples": 8,
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def register_cmd(model: Path, metrics: Path, outs: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "components.register",
        "--model",
        str(model),
        "--metrics",
        str(metrics),
        "--model-uri-out",
        str(outs / "model_uri"),
        "--version-out",
        str(outs / "version"),
        "--promoted-out",
        str(outs / "promoted"),
        "--card-out",
        str(outs / "card.md"),
        "--files-out",
        str(outs / "files"),
        *extra,
    ]


def run_register(model: Path, metrics: Path, outs: Path, env: dict[str, str], *extra: str) -> dict:
    """Run the component as the runner does (a subprocess); returns its three outputs."""
    proc = subprocess.run(
        register_cmd(model, metrics, outs, *extra),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_outputs(outs)


def read_outputs(outs: Path) -> dict:
    return {"model_uri": (outs / "model_uri").read_text(),  # a STRING output: bare text
            **{k: json.loads((outs / k).read_text()) for k in ("version", "promoted")}}


def step_env(home: Path) -> dict[str, str]:
    """The environment the local runner gives a step, pointed at a throwaway TUNELINE_HOME."""
    env = dict(os.environ)
    env.update(
        {
            "TUNELINE_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "TUNELINE_RUN_ID": "test-run",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        }
    )
    return env

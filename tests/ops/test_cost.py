"""`tuneline cost`: the workload read from the pipeline, the per-SKU table, and the price-table checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.tickets import ticket_records
from tuneline.ops.cost import CostError, estimate, load_prices
from tuneline.spec import load_pipeline

from .triggers.conftest import PROJECT, write_records

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tune(tmp_path, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(PROJECT, root)
    (root / "config").mkdir()
    shutil.copy(REPO / "config" / "prices.yaml", root / "config" / "prices.yaml")
    write_records(root / "data" / "tickets.jsonl", ticket_records(100))
    monkeypatch.chdir(root)
    monkeypatch.delenv("TUNELINE_HOME", raising=False)
    return root


def test_repo_price_table_loads_with_the_seed_prices():
    prices = load_prices(REPO / "config" / "prices.yaml")
    assert prices.skus["Standard_NC24ads_A100_v4"].price_per_hour == 3.67
    assert prices.skus["Standard_NC40ads_H100_v5"].gpu == "H100 NVL"
    assert prices.skus["Standard_ND96asr_v4"].gpus == 8
    assert prices.skus["local-cpu"].price_per_hour == 0
    assert prices.spot_price(prices.skus["Standard_ND96asr_v4"]) == pytest.approx(27.20 * 0.3)
    assert str(prices.priced) == "2026-12-01"


def test_gpu_estimate_follows_the_flop_formula(tune):
    pipeline = load_pipeline(tune / "pipelines" / "tune.yaml")
    prices = load_prices(tune / "config" / "prices.yaml")
    report = estimate(pipeline, prices, target="azureml", home=tune / ".tuneline", tokenizer="estimate")
    work = report.workload
    assert work.max_steps == 4 and work.examples_per_step == 8 and work.method == "full"
    assert work.params == 164_352 and work.records == 100
    a100 = report.row("Standard_NC24ads_A100_v4")
    assert a100.tokens_per_s == pytest.approx(312e12 * 0.3 / (6 * work.params))
    seconds = 4 * 8 * work.mean_tokens / a100.tokens_per_s + 600
    assert a100.hours * 3600 == pytest.approx(seconds)
    assert a100.on_demand_cost == pytest.approx(a100.hours * 3.67)
    assert report.chosen == "Standard_NC24ads_A100_v4"  # the train step's Azure ML instance type
    eight = report.row("Standard_ND96asr_v4")
    assert eight.tokens_per_s == pytest.approx(a100.tokens_per_s * 8 * 0.9)


def test_bench_results_override_the_flop_estimate(tune):
    (tune / "bench" / "results").mkdir(parents=True)
    (tune / "bench" / "results" / "train_a100.json").write_text(
        json.dumps(
            [{"gpu": "NVIDIA A100-SXM4-80GB", "tokens_per_s": 50_000, "base_model": "tiny-random-llama"}]
        )
    )
    pipeline = load_pipeline(tune / "pipelines" / "tune.yaml")
    report = estimate(pipeline, load_prices(), target="aks", home=tune / ".tuneline", tokenizer="estimate")
    row = report.row("Standard_NC24ads_A100_v4")
    assert row.tokens_per_s == 50_000 and "bench/results/train_a100.json" in row.throughput_source


def test_cli_prints_the_assumptions_and_table(tune, capsys, monkeypatch):
    from tuneline.cli.main import main as cli_main

    code = cli_main(
        [
            "cost",
            "pipelines/tune.yaml",
            "--target",
            "azureml",
            "--spot",
            "--tokenizer",
            "estimate",
            "--set",
            "max_steps=8",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "max_steps 8 x 8 examples per step per GPU" in out
    for sku in ("local-cpu", "Standard_NC24ads_A100_v4", "Standard_NC40ads_H100_v5", "Standard_ND96asr_v4"):
        assert sku in out
    assert "* Standard_NC24ads_A100_v4 (spot)" in out
    assert "GFLOP/s matmul measured here" in out  # local-cpu without a previous run: calibrated
    assert (tune / ".tuneline" / "cost" / "calibration.json").is_file()


def test_price_table_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "prices.yaml"
    bad.write_text("skus:\n  x:\n    gpus: 1\n    gpu: TPU\n    price_per_hour: 1\n    targets: [aks]\n")
    with pytest.raises(CostError, match=r"prices.yaml:4:\d+: skus.x.gpu: 'TPU' is not under gpus"):
        load_prices(bad)
    bad.write_text("skus:\n  x:\n    gpus: -1\n    price_per_hour: 1\n    targets: [aks]\n")
    with pytest.raises(CostError, match=r"prices.yaml:3:\d+: skus.x.gpus"):
        load_prices(bad)


def test_a_pipeline_without_a_train_step_is_refused(tune):
    pipeline = load_pipeline(tune / "pipelines" / "grow.yaml")
    with pytest.raises(CostError, match="no step's component declares `role: train`"):
        estimate(pipeline, load_prices(), target="aks", home=tune / ".tuneline")


# ---------------------------------------------------------------------------------------------- memory plan
# Published figures the plan is checked against:
# - PEFT's print_trainable_parameters() for Llama-3-8B with LoRA r=16 on all linear layers:
#   "trainable params: 41,943,040 || all params: 8,072,204,288" (the base model has 8,030,261,248).
# - Hugging Face transformers docs, "model memory anatomy": AdamW training keeps 4 B of weights (fp32), 4 B of
#   gradients and 8 B of optimizer state per parameter: 16 B/param, ~128 GB for an 8B model before activations.
# - Dettmers et al. 2023, QLoRA (arXiv:2305.14314), abstract: finetuning a 65B model needs ">780GB of GPU memory"
#   in 16-bit and "<48GB" with QLoRA.
from tuneline.ops.cost.memory import GIB, ModelShape, memory_plan, render_plan  # noqa: E402

CONFIGS = REPO / "data" / "model-configs"
LLAMA8B = "meta-llama/Llama-3.1-8B-Instruct"


def _shape(name: str) -> ModelShape:
    return ModelShape.from_config(json.loads((CONFIGS / name / "config.json").read_text()), name)


def test_parameter_counts_from_the_shipped_configs_match_the_published_ones():
    llama = _shape(LLAMA8B)
    assert llama.params == 8_030_261_248 and llama.lora_params(16, "all-linear") == 41_943_040
    assert _shape("mistralai/Mistral-7B-Instruct-v0.3").params == 7_248_023_552
    assert _shape("Qwen/Qwen2.5-7B-Instruct").params == 7_615_616_512
    assert _shape("Qwen/Qwen3-8B").params == 8_190_735_360


def _project(tmp_path: Path, profile: str, train_inputs: str, evaluate_profile: str = "cpu") -> Path:
    """A project using this repository's components, model configs and SKU table, with one pipeline."""
    root = tmp_path / "project"
    (root / "pipelines").mkdir(parents=True)
    (root / "data").mkdir()
    for link in ("components", "config", "data/model-configs", "data/sample"):
        (root / link).symlink_to(REPO / link)
    (root / "pipelines" / "plan.yaml").write_text(f"""
name: plan
params:
  dataset: {{type: uri_file, default: data/sample/tickets.jsonl}}
  base_model: {{type: string, default: {LLAMA8B}}}
compute:
  cpu: {{kubeflow: {{cpu: "2", memory: 8Gi}}, azureml: {{cluster: cpu-cluster}}}}
  gpu: {profile}
steps:
  prepare: {{component: components/prepare, compute: cpu, inputs: {{raw: "${{{{params.dataset}}}}"}}}}
  train:
    component: components/train
    compute: gpu
    inputs: {{train: "${{{{steps.prepare.outputs.train}}}}", base_model: "${{{{params.base_model}}}}", {train_inputs}}}
  evaluate:
    component: components/evaluate
    compute: {evaluate_profile}
    inputs: {{test: "${{{{steps.prepare.outputs.test}}}}", model: "${{{{steps.train.outputs.model}}}}",
             base_model: "${{{{params.base_model}}}}"}}
""")
    return root / "pipelines" / "plan.yaml"


T4 = ("{kubeflow: {gpus: 1, accelerator: nvidia-t4, memory: 24Gi}, "
      "azureml: {cluster: t4, instance_type: Standard_NC4as_T4_v3}}")
A100 = ("{kubeflow: {gpus: 1, accelerator: nvidia-a100, memory: 96Gi}, "
        "azureml: {cluster: a, instance_type: Standard_NC24ads_A100_v4}}")


def test_8b_qlora_without_checkpointing_does_not_fit_a_t4_and_with_it_does(tmp_path):
    path = _project(tmp_path, T4, "method: qlora, per_device_batch: 8, max_seq_len: 256")
    plan = memory_plan(load_pipeline(path), tmp_path / "home", "aks")
    train = plan.steps[0]
    weights = train.gpu["weights (NF4 + constants, rest fp32)"]
    # The unquantised rest (embeddings, lm_head, norms) in fp32, as prepare_model_for_kbit_training casts it.
    shape = _shape(LLAMA8B)
    from tuneline.ops.cost import memory

    assert weights == memory.NF4_BYTES * shape.linear_params + 4 * (shape.params - shape.linear_params)
    assert 6 * GIB < weights < 9 * GIB
    assert train.gpu_need > 15 * GIB and train.gpu_have == 15 * GIB
    assert any(w.startswith("train: needs") and "T4" in w and "gradient_checkpointing" in w for w in plan.warnings)
    # Not "FSDP across GPUs": each rank loads the whole 4-bit model before sharding it.
    assert any("every rank still loads the whole 4-bit model" in w for w in plan.warnings)
    # The CPU evaluate profile of 8Gi cannot hold an 8B model in fp32.
    assert any(w.startswith("evaluate: needs") and "8Gi" in w for w in plan.warnings)
    path = _project(tmp_path / "b", T4, "method: qlora, per_device_batch: 1, max_seq_len: 512, "
                                        "gradient_checkpointing: true")
    train = memory_plan(load_pipeline(path), tmp_path / "home", "azureml").steps[0]
    assert train.gpu_need < 10 * GIB and train.gpu_have == 15 * GIB and not train.warnings


def test_full_fine_tuning_states_take_16_bytes_per_parameter(tmp_path):
    path = _project(tmp_path, A100, "method: full, per_device_batch: 1, max_seq_len: 256", evaluate_profile="gpu")
    plan = memory_plan(load_pipeline(path), tmp_path / "home", "aks")
    train, evaluate = plan.steps
    states = train.gpu["weights (fp32 masters)"] + train.gpu["gradients (fp32)"] + train.gpu["AdamW moments (fp32)"]
    assert states == 16 * 8_030_261_248  # ~128 GB: no single 80 GB GPU holds it
    assert [w.split(":")[0] for w in plan.warnings] == ["train"]
    assert train.host["weights read on the host x 1 process(es)"] == 4 * 8_030_261_248  # fp32 read on the host
    assert evaluate.where == "gpu" and evaluate.gpu_need < 80 * GIB and not evaluate.warnings


def test_qlora_65b_fits_in_48_gb_and_16_bit_needs_more_than_780_gb():
    from tuneline.ops.cost import memory

    llama65 = _shape("huggyllama/llama-65b")
    assert 65.0e9 < llama65.params < 65.5e9
    # QLoRA: 4-bit base + double-quantised constants, LoRA on all linear layers, gradient checkpointing, batch 1.
    weights = memory.NF4_BYTES * llama65.linear_params + 2 * (llama65.params - llama65.linear_params)
    lora = 16 * llama65.lora_params(16, "all-linear")
    checkpointed = (llama65.layers * llama65.hidden + llama65.activation_elements(True)) * 2 * 512
    total = weights + lora + checkpointed + 512 * llama65.vocab * 10 + memory.GPU_OVERHEAD
    assert 33e9 < weights < 35e9 and total < 48e9
    # 16-bit finetuning (fp16 weights and gradients, fp32 Adam moments: 12 B/param) as the paper's baseline.
    assert 12 * llama65.params > 780e9


def test_cost_prints_the_memory_plan_of_the_gpu_pipeline_for_an_8b_model(cli):
    code, out, _ = cli("cost", str(REPO / "pipelines" / "finetune-gpu.yaml"), "--target", "aks",
                       "--tokenizer", "estimate", "--set", f"base_model={LLAMA8B}", "--set", "method=full")
    assert code == 0
    assert "memory plan for meta-llama/Llama-3.1-8B-Instruct (8.03B parameters, 32 layers" in out
    assert "  train on profile gpu_spot (method full" in out and "  evaluate on profile gpu_spot" in out
    assert "warning: train: needs 146" in out and "gives 80 GiB (A100 80GB (nvidia-a100))" in out
    assert "warning: evaluate" not in out  # evaluate runs on the GPU node now, in bf16
    code, out, _ = cli("cost", str(REPO / "pipelines" / "finetune-gpu.yaml"), "--tokenizer", "estimate",
                       "--set", f"base_model={LLAMA8B}")
    assert code == 0 and "every step fits its profile" in out
    plan = render_plan(memory_plan(load_pipeline(REPO / "pipelines" / "finetune-gpu.yaml",
                                                 {"base_model": LLAMA8B}), REPO / ".tuneline", "azureml"))
    assert "Standard_NC24ads_A100_v4 VM" in plan

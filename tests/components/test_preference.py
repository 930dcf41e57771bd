"""The preference component on a tiny random Llama: the DPO and KTO losses, outputs and MLflow metrics, LoRA on a
base model and on an SFT adapter, full fine-tuning, and a SIGTERM-killed run resuming to the uninterrupted one."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from components.preference.__main__ import main
from components.preference.loop import SUMS, reward_metrics
from components.preference.losses import dpo_loss, kl_estimate, kl_reference_point, kto_loss
from tests.support.preference import write_preference_splits
from tests.support.tickets import write_splits

ROOT = Path(__file__).resolve().parents[2]


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_loss_is_the_sigmoid_loss_with_label_smoothing():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))
    terms = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0)
    # delta = (pc - rc) - (pr - rr) = 2: TRL's "sigmoid" loss -logsigmoid(beta * delta)
    assert terms.losses.item() == pytest.approx(-_logsig(0.2), abs=1e-6)
    assert terms.chosen_rewards.item() == pytest.approx(0.1) and terms.rejected_rewards.item() == pytest.approx(-0.1)
    smoothed = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1)
    assert smoothed.losses.item() == pytest.approx(-0.9 * _logsig(0.2) - 0.1 * _logsig(-0.2), abs=1e-6)


def test_dpo_label_smoothing_of_one_half_is_refused():
    # At 0.5 the conservative loss is symmetric in delta: minimal at delta = 0, so it would unlearn the preference.
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))
    with pytest.raises(ValueError, match=r"must be in \[0, 0.5\)"):
        dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.5)


def test_kto_reference_point_averages_the_processes_before_clamping():
    # TRL 1.16 clamps the mean of the gathered estimates; clamping each first would give (0 + 0.4) / 2 = 0.2.
    assert kl_reference_point(torch.tensor([-1.0, 0.4])).item() == 0.0
    assert kl_reference_point(torch.tensor([-0.2, 1.0])).item() == pytest.approx(0.4)


def test_kto_reward_figures_leave_out_a_side_with_no_records():
    # Four undesirable records, no desirable one: no chosen reward and no margin (not 0 and -rejected).
    totals = dict.fromkeys(SUMS, 0.0) | {"rejected": -0.8, "n_rejected": 4.0, "correct": 3.0, "groups": 1.0}
    metrics = reward_metrics(totals, 4.0, "kto")
    assert metrics == {"rewards/accuracies": 0.75, "rewards/rejected": pytest.approx(-0.2), "kl": 0.0}
    both = reward_metrics(totals | {"chosen": 0.3, "n_chosen": 1.0}, 5.0, "kto")
    assert both["rewards/margins"] == pytest.approx(0.3 + 0.2)


def test_kto_loss_uses_the_clamped_kl_reference_point():
    policy, ref = torch.tensor([0.0, -3.0]), torch.tensor([-1.0, -2.0])
    labels = torch.tensor([True, False])
    estimate = kl_estimate(torch.tensor([-2.0, -1.0]), torch.tensor([-2.5, -1.5]))
    z = kl_reference_point(estimate.reshape(1))
    assert z.item() == pytest.approx(0.5)
    assert kl_reference_point(kl_estimate(torch.tensor([-3.0]), torch.tensor([-1.0])).reshape(1)).item() == 0.0
    terms = kto_loss(policy, ref, labels, z, beta=0.1, desirable_weight=1.0, undesirable_weight=2.0)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert terms.losses.tolist() == pytest.approx([1 - sigmoid(0.1 * (1 - 0.5)), 2 * (1 - sigmoid(0.1 * (0.5 + 1)))])
    assert terms.chosen_rewards.tolist() == pytest.approx([0.1]) and terms.rejected_rewards.tolist() == pytest.approx(
        [-0.1])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("preference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELINE_HOME", str(root / "home"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield {"root": root, "pairs": write_preference_splits(root / "pairs", "pairs"),
               "kto": write_preference_splits(root / "kto", "kto"), "chat": write_splits(root / "chat")}


def _args(data, out, *extra):
    return ["--train", str(data["train"]), "--validation", str(data["validation"]), "--test", str(data["test"]),
            "--base-model", "tiny-random-llama", "--model-out", str(out / "model"),
            "--checkpoints", str(out / "ckpt"), "--mlflow-run-id-out", str(out / "run_id.json"),
            "--per-device-batch", "4", "--max-steps", "3", "--save-steps", "0", *extra]


def _summary(out):
    return json.loads((out / "model" / "training_summary.json").read_text())


def test_dpo_lora_writes_adapter_held_out_rewards_progress_and_mlflow_metrics(env, monkeypatch):
    from mlflow.tracking import MlflowClient

    out = env["root"] / "dpo"
    monkeypatch.setenv("TUNELINE_PROGRESS", str(out / "progress.jsonl"))
    out.mkdir()
    assert main(_args(env["pairs"], out)) == 0
    model = out / "model"
    assert {"adapter_config.json", "adapter_model.safetensors", "training_summary.json"} <= {
        p.name for p in model.iterdir()}
    s = _summary(out)
    assert s["method"] == "lora" and s["preference"]["loss"] == "dpo" and s["steps"] == 3
    assert s["first_train_loss"] == pytest.approx(math.log(2), abs=1e-6)  # a new adapter: policy == reference
    for split in ("validation", "test"):
        held = s["held_out"][split]
        assert held["examples"] == 8 and 0 <= held["rewards/accuracies"] <= 1
        assert held["rewards/margins"] == pytest.approx(held["rewards/chosen"] - held["rewards/rejected"])
        assert s[f"{split}_rewards/accuracies"] == held["rewards/accuracies"]
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert [p["current"] for p in progress] == [1, 2, 3] and progress[-1]["total"] == 3
    run = MlflowClient().get_run((out / "run_id.json").read_text())
    assert run.info.status == "FINISHED" and run.data.tags["tuneline.preference_loss"] == "dpo"
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "eval_rewards/accuracies", "eval_rewards/margins", "test_rewards_accuracies"} <= set(run.data.metrics)
    history = MlflowClient().get_metric_history(run.info.run_id, "rewards/margins")
    assert [m.step for m in history] == [1, 2, 3]


def test_a_hub_base_model_is_loaded_and_recorded_at_the_commit_its_branch_resolved_to(env, tmp_path, monkeypatch):
    """As train does (tests/components/test_train.py): the Hub id's branch resolves once, from a local Hub cache
    offline (tests/support/fakehub.py), and that commit is what the summary and the run record."""
    from huggingface_hub import constants
    from mlflow.tracking import MlflowClient

    from tests.support.fakehub import add_commit
    from tuneline.llm.ml.models import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import, as is the cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    commit = add_commit(tmp_path / "hub", "fake-org/tiny", resolve_model("tiny-random-llama"), message="v1")
    out = tmp_path / "dpo-hub"
    args = _args(env["pairs"], out, "--max-steps", "1")
    args[args.index("tiny-random-llama")] = "fake-org/tiny"
    assert main(args) == 0
    s = _summary(out)
    assert s["base_model"] == "fake-org/tiny" and s["base_model_revision"] == commit
    run = MlflowClient().get_run((out / "run_id.json").read_text())
    assert run.data.tags["tuneline.base_model_revision"] == commit
    assert run.data.params["attn_implementation"] == "sdpa"  # what the model runs, not what was requested


def _sft(env):
    """train's LoRA adapter on the chat split, trained once for the tests that start from it."""
    from components.train.__main__ import main as train_main

    sft = env["root"] / "sft"
    if not (sft / "model" / "training_summary.json").is_file():
        chat = env["chat"]
        assert train_main(["--train", str(chat["train"]), "--base-model", "tiny-random-llama", "--model-out",
                           str(sft / "model"), "--checkpoints", str(sft / "ckpt"), "--mlflow-run-id-out",
                           str(sft / "run_id.json"), "--per-device-batch", "4", "--max-steps", "2",
                           "--save-steps", "0"]) == 0
    return sft / "model"


def test_dpo_on_an_sft_adapter_writes_one_adapter_over_the_base_that_serves_beside_it(env):
    from tuneline.serving.repository import RepositorySpec, adapter_problem

    sft = _sft(env)
    out = env["root"] / "dpo-sft"
    assert main(_args(env["pairs"], out, "--sft-model", str(sft))) == 0
    s = _summary(out)
    assert s["method"] == "lora" and s["preference"]["output"] == "stacked"
    assert "rank 32 over the base model" in s["preference"]["output_why"]
    assert s["base_model"] == "tiny-random-llama" and s["preference"]["start"] == "tiny-random-llama + SFT model"
    # The reference is the SFT model: at the first step the new adapter is off, the loss is ln 2.
    assert s["first_train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    model = out / "model"
    assert not (model / "config.json").exists() and not (model / "model.safetensors").exists()
    cfg, sft_cfg = (json.loads((d / "adapter_config.json").read_text()) for d in (model, sft))
    assert cfg["base_model_name_or_path"] == sft_cfg["base_model_name_or_path"] == "tiny-random-llama"
    assert (cfg["r"], cfg["lora_alpha"]) == (sft_cfg["r"] + 16, sft_cfg["r"] + 16)
    # The champion's server takes it as one more adapter of its base.
    assert adapter_problem(model, RepositorySpec()) is None
    assert (model / "tokenizer.json").is_file()


def test_the_stacked_adapter_is_the_policy_merged_into_the_sft_model(env):
    """The same run on the SFT model written as a full model (which cannot be stacked: its LoRA is merged into
    it) trains the same LoRA; the stacked adapter merged into the base gives that merged model's weights."""
    from safetensors.torch import load_file

    from tuneline.llm.ml.models import load_tuned, merge_lora, resolve_model

    sft = _sft(env)
    full_sft = env["root"] / "sft-full"
    merge_lora(resolve_model("tiny-random-llama"), sft, dtype=torch.float32).save_pretrained(full_sft)
    for path in sft.iterdir():  # the tokenizer and training_summary.json
        if not path.name.startswith("adapter_"):
            (full_sft / path.name).write_bytes(path.read_bytes())
    stacked, merged = env["root"] / "dpo-stacked", env["root"] / "dpo-merged"
    fp32 = ["--learning-rate", "5e-3", "--precision", "no"]  # compared in fp32 on a GPU too
    assert main(_args(env["pairs"], stacked, "--sft-model", str(sft), *fp32)) == 0
    assert main(_args(env["pairs"], merged, "--sft-model", str(full_sft), *fp32)) == 0
    s = _summary(merged)
    assert s["method"] == "full" and s["preference"]["output"] == "merged"
    assert s["preference"]["output_why"] == ("not stacked with the SFT model: the SFT model is a full model, not an "
                                             "adapter of a base model")
    assert not (merged / "model" / "adapter_config.json").exists()
    want = load_file(merged / "model" / "model.safetensors")
    got = load_tuned(stacked / "model", dtype=torch.float32)[0].state_dict()
    sft_only = load_file(full_sft / "model.safetensors")
    assert want.keys() <= got.keys()
    assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-5
    assert max((sft_only[k] - want[k]).abs().max().item() for k in want) > 1e-4  # the preference LoRA trained


def test_an_sft_adapter_that_cannot_be_stacked_is_merged_and_the_summary_says_why(env, tmp_path):
    import dataclasses
    import shutil

    from components.preference.__main__ import PROGRAM, _output_form

    config = PROGRAM.parse(["--train", "t", "--model-out", "m", "--checkpoints", "c", "--mlflow-run-id-out", "r",
                            "--sft-model", str(_sft(env))])
    assert _output_form(config)[0] == "stacked"
    odd = tmp_path / "odd"
    shutil.copytree(config.sft_model, odd)
    cfg = json.loads((odd / "adapter_config.json").read_text())
    (odd / "adapter_config.json").write_text(json.dumps({**cfg, "modules_to_save": ["lm_head"]}))
    form, why = _output_form(dataclasses.replace(config, sft_model=odd))
    assert form == "merged" and why.startswith("not stacked with the SFT model: ") and "modules_to_save" in why
    assert _output_form(dataclasses.replace(config, method="full"))[0] == "full"
    assert _output_form(dataclasses.replace(config, sft_model=None))[0] == "adapter"


def test_kto_full_fine_tune_on_labelled_records(env):
    out = env["root"] / "kto"
    assert main(_args(env["kto"], out, "--loss", "kto", "--method", "full", "--learning-rate", "1e-4")) == 0
    s = _summary(out)
    assert s["method"] == "full" and s["data"]["kind"] == "kto" and (out / "model" / "config.json").is_file()
    assert s["first_train_loss"] == pytest.approx(0.5, abs=1e-6)  # policy == frozen copy: 1 - sigmoid(0)
    held = s["held_out"]["validation"]
    assert held["examples"] == 8 and "kl" in held and "policy_preference_accuracy" not in held


def test_data_that_does_not_fit_the_loss_is_refused_before_loading(env, capsys):
    out = env["root"] / "refused"
    assert main(_args(env["chat"], out)) == 2
    assert "not a preference record" in capsys.readouterr().err
    assert main(_args(env["kto"], out)) == 2
    assert "--loss dpo needs pairs records, this split holds kto records; use --loss kto" in capsys.readouterr().err
    assert main(_args(env["kto"], out, "--loss", "kto", "--per-device-batch", "1")) == 2
    assert "--per-device-batch 2 or more" in capsys.readouterr().err


STEPS = 24
RESUME = ["--max-steps", str(STEPS), "--per-device-batch", "4", "--grad-accum", "2", "--lora-dropout", "0.1",
          "--save-steps", "2", "--keep-checkpoints", "1", "--eval-steps", "0"]


def _launch(data, out, env):
    args = ["--train", str(data["train"]), "--validation", str(data["validation"]), "--base-model",
            "tiny-random-llama", "--model-out", str(out / "model"), "--checkpoints", str(out / "ckpt"),
            "--mlflow-run-id-out", str(out / "run_id.json"), *RESUME]
    return subprocess.Popen([sys.executable, "-m", "components.preference", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _state(out):
    from tuneline.llm.ml.checkpoint import latest

    return json.loads((latest(out / "ckpt") / "state.json").read_text())


@pytest.mark.heavy
def test_sigterm_then_rerun_resumes_to_the_uninterrupted_run(tmp_path, train_env):
    from safetensors.torch import load_file

    data = write_preference_splits(tmp_path / "data", "pairs", n_train=32)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    process = _launch(data, whole, train_env)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]

    process = _launch(data, killed, train_env)
    try:
        deadline = time.time() + 600
        while not list((killed / "ckpt").glob("checkpoint-*")) and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, "not preempted: " + output[-3000:]
    assert "SIGTERM received" in output
    stopped_at = _state(killed)["global_step"]
    assert 2 <= stopped_at < STEPS
    process = _launch(data, killed, train_env)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    assert f"resumed from checkpoint-{stopped_at:08d}: step {stopped_at}" in output
    resumed, uninterrupted = _state(killed), _state(whole)
    assert resumed["resumes"] == 1 and resumed["global_step"] == STEPS
    assert resumed["losses"] == pytest.approx(uninterrupted["losses"], abs=1e-5)
    a, b = (load_file(out / "model" / "adapter_model.safetensors") for out in (whole, killed))
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)
    held = [_summary(out)["held_out"]["validation"] for out in (whole, killed)]
    assert held[1]["rewards/margins"] == pytest.approx(held[0]["rewards/margins"], abs=1e-5)


def test_component_yaml_inputs_reach_the_program():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from components.preference.__main__ import PROGRAM

    config = PROGRAM.parse(["--train", "t", "--model-out", "m", "--checkpoints", "c", "--mlflow-run-id-out", "r"])
    assert (config.loss, config.beta, config.method, config.sft_model) == ("dpo", 0.1, "lora", None)


@pytest.mark.slow
def test_dpo_after_sft_prefers_the_right_answer_on_held_out_prompts(tmp_path, monkeypatch):
    """The bench's claim (bench/preference_bench.py) on a tiny model: after DPO on top of an SFT adapter, the
    held-out reward accuracy is above 0.5, and the policy ranks the chosen answer first more often than the SFT
    model it started from."""
    from components.train.__main__ import main as train_main

    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    chat = write_splits(tmp_path / "chat", n_train=32)
    # A flaw the tiny byte-level model can learn in a few steps: the rejected answer leaves the schema.
    pairs = write_preference_splits(tmp_path / "pairs", "pairs", n_train=64, n_validation=32, n_test=32, seed=7,
                                    flaw="invalid")
    sft = tmp_path / "sft"
    assert train_main(["--train", str(chat["train"]), "--base-model", "tiny-random-llama", "--model-out",
                       str(sft / "model"), "--checkpoints", str(sft / "ckpt"), "--mlflow-run-id-out",
                       str(sft / "run_id.json"), "--per-device-batch", "8", "--max-steps", "2",
                       "--save-steps", "0"]) == 0
    out = tmp_path / "dpo"
    assert main(["--train", str(pairs["train"]), "--validation", str(pairs["validation"]), "--test",
                 str(pairs["test"]), "--base-model", "tiny-random-llama", "--sft-model", str(sft / "model"),
                 "--model-out", str(out / "model"), "--checkpoints", str(out / "ckpt"), "--mlflow-run-id-out",
                 str(out / "run_id.json"), "--per-device-batch", "8", "--max-steps", "24", "--learning-rate",
                 "2e-3", "--save-steps", "0", "--max-eval-examples", "0"]) == 0
    for split in ("validation", "test"):
        held = _summary(out)["held_out"][split]
        assert held["examples"] == 32
        assert held["rewards/accuracies"] > 0.5 and held["rewards/margins"] > 0, held
        # Like for like with the SFT model: how often each gives the chosen answer the higher log-probability.
        assert held["policy_preference_accuracy"] > held["reference_preference_accuracy"], held


def test_distribution_is_trains_input_and_reaches_the_program():
    import yaml

    def declared(component):
        spec = yaml.safe_load((ROOT / "components" / component / "component.yaml").read_text())
        return spec["inputs"]["distribution"]

    ours, trains = declared("preference"), declared("train")
    assert (ours["enum"], ours["default"]) == (trains["enum"], trains["default"])
    # The packages each config and method needs are checked for train's image (tests/cluster/test_image_methods.py):
    # this step runs in the same one and offers no method train does not.
    spec = {c: yaml.safe_load((ROOT / "components" / c / "component.yaml").read_text())
            for c in ("preference", "train")}
    assert spec["preference"]["environment"] == spec["train"]["environment"]
    assert set(spec["preference"]["inputs"]["method"]["enum"]) <= set(spec["train"]["inputs"]["method"]["enum"])
    from components.preference.__main__ import PROGRAM

    config = PROGRAM.parse(["--train", "t", "--model-out", "m", "--checkpoints", "c", "--mlflow-run-id-out", "r",
                            "--distribution", "fsdp"])
    assert config.distribution == "fsdp"


@pytest.mark.parametrize(("name", "method", "refused"), [("zero3", "full", True), ("zero3", "lora", False),
                                                        ("zero2", "full", False)])
def test_a_full_fine_tune_under_zero3_is_refused_before_loading(name, method, refused, monkeypatch):
    # The plugin as each process builds it from what --distribution sets (train's distribution.launch_env, checked
    # against accelerate's own launcher in test_train_distribution).
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    from components.preference.model import ReferenceUnsupported, check_reference
    from components.train import distribution

    for key in [k for k in os.environ if k.startswith(("ACCELERATE_", "FSDP_"))]:
        monkeypatch.delenv(key)
    for key, value in distribution.launch_env(name).items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    if refused:
        with pytest.raises(ReferenceUnsupported, match="--method full under ZeRO-3"):
            check_reference(method, DistributedType.DEEPSPEED, plugin)
    else:
        check_reference(method, DistributedType.DEEPSPEED, plugin)


def test_kto_scores_a_held_out_split_whose_last_group_has_one_record(env):
    # 5 test records in groups of 4: the fifth joins the first group (the KL estimate pairs each record with
    # another one) instead of failing the finished run at its last scoring.
    data = write_preference_splits(env["root"] / "kto5", "kto", n_validation=2, n_test=5)
    out = env["root"] / "kto5-out"
    assert main(_args(data, out, "--loss", "kto", "--max-steps", "1")) == 0
    assert _summary(out)["held_out"]["test"]["examples"] == 5


def test_under_deepspeed_a_step_marks_the_accumulation_boundary_and_undoes_the_engines_division(env):
    """DeepSpeed's engine divides each loss by its gradient_accumulation_steps and steps when accelerate says the
    micro-batch is the last (train's loop.py). DeepSpeed needs a GPU: the loop is told it runs under it on a
    CPU accelerator that records what each backward is given, which is everything up to the engine."""
    from accelerate import Accelerator
    from transformers import get_scheduler

    from components.preference.__main__ import PROGRAM
    from components.preference.data import encode_split, read_preference_split
    from components.preference.loop import PreferenceLoop
    from components.preference.model import build
    from components.train import modelsetup
    from components.train.loop import StopFlag
    from components.train.state import TrainState

    class Recording(Accelerator):
        seen: list = []

        def backward(self, loss, **kwargs):
            self.seen.append((float(loss), self.gradient_state.sync_gradients))
            super().backward(loss, **kwargs)

    config = PROGRAM.parse(_args(env["pairs"], env["root"] / "deepspeed", "--grad-accum", "2",
                                 "--per-device-batch", "2"))
    acc = Recording(cpu=True)
    model, reference, tokenizer = build(config, "no", acc.device)
    train, _ = encode_split(tokenizer, read_preference_split(config.train), config.max_seq_len)
    optimizer = torch.optim.AdamW(modelsetup.param_groups(model, 0.0), lr=1e-3)
    scheduler = get_scheduler("constant", optimizer)
    model, optimizer = acc.prepare(model, optimizer)
    loop = PreferenceLoop(config, acc, model, tokenizer, optimizer, scheduler, train, [], None, StopFlag(),
                          TrainState(), reference=reference, kind="pairs")
    loop.deepspeed = True  # what parallel.is_deepspeed(acc) says under a DeepSpeed launch
    loop._step([[0, 1], [2, 3]])
    # A new adapter: each pair's loss is ln 2, a micro-batch's sum 2 ln 2, scaled by 1/4 pairs x 2 micro-batches.
    assert [s for _, s in acc.seen] == [False, True]
    assert [loss for loss, _ in acc.seen] == pytest.approx([math.log(2), math.log(2)], abs=1e-6)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_rank_other_than_0_under_fsdp_reads_no_weight_for_policy_or_reference(env, method, monkeypatch):
    """FSDP with cpu_ram_efficient_loading broadcasts rank 0's weights into the shards: the other ranks build
    both models on meta (a 70B start model would otherwise sit in every rank's host memory, twice for a full
    fine-tune), with storage for the trainable parameters only (accelerate maps the optimizer's by data_ptr)."""
    from components.preference.__main__ import PROGRAM
    from components.preference.model import build
    from components.train import parallel

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    monkeypatch.setenv("RANK", "1")
    assert parallel.loads_on_meta()
    config = PROGRAM.parse(_args(env["pairs"], env["root"] / "meta", "--method", method))
    model, reference, _ = build(config, "no", torch.device("cpu"), sharded=True, on_meta=True)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.is_meta for p in frozen) and bool(frozen) == (method == "lora")
    assert trainable and not any(p.is_meta for p in trainable)
    assert len({p.data_ptr() for p in trainable}) == len(trainable)
    assert not any(b.is_meta for b in model.buffers())  # rotary frequencies: copied back, not broadcast
    if method == "full":
        assert all(p.is_meta for p in reference.parameters())

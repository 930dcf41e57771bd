"""The training loop: exact-resume, gradient accumulation, distributed, validation, early stopping.

Why our own loop rather than TRL's ``SFTTrainer``: resuming must replay exactly the batches and random
numbers an uninterrupted run would have used, and the HF Trainer does not restore data order and RNG
reliably. Here the batch plan is a pure function of (seed, epoch) (``tuneline.llm.ml.batching``), the
position is ``(epoch, step_in_epoch)``, and RNG state is saved per rank. The loop also takes the loss on
assistant tokens only and computes logits only at those positions (``logits_to_keep``), which saves the
vocabulary projection for every prompt token. Distribution goes through ``accelerate`` so the same entry
point runs as one process, under ``torchrun`` (DDP) or ``accelerate launch`` with FSDP/DeepSpeed configs.

Loss normalisation: every micro-batch contributes ``sum(token CE) / (target tokens in the whole global
step, all ranks)``, multiplied by the world size because DDP averages gradients over ranks. So N ranks
with batch B compute the same update as one process with batch N*B, and accumulation is exact.
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from components.train import modelsetup, parallel
from components.train.config import TrainConfig
from components.train.state import TrainState
from tuneline.llm.ml import checkpoint as ckpt
from tuneline.llm.ml.batching import Batch, collate, rank_steps, steps_per_epoch
from tuneline.llm.ml.chat import IGNORE, Encoded
from tuneline.llm.ml.device import peak_memory_mb
from tuneline.step.progress import report as report_progress

SHARDED_TRAINABLE = "trainable-dcp"  # an FSDP run's adapter and optimizer shards (torch distributed checkpoint)
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a killed process would report; the step is retried


class Preempted(SystemExit):
    def __init__(self) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)


class StopFlag:
    """SIGTERM, seen at optimizer-step boundaries, where a consistent checkpoint can be taken.

    `received` is this process's own signal and is never cleared; `agreed` is what every rank concluded from
    the same step's reduction. Keeping them apart matters: a signal that lands while the reduction is in
    flight is not in this step's sum, and writing the sum back into one flag would drop it for good.
    """

    def __init__(self) -> None:
        self.received = False
        self.agreed = False

    def agree(self, ranks_stopping: float) -> None:
        """Every rank stops at the same step: the first step whose reduction saw a signal on any rank."""
        self.agreed = ranks_stopping > 0

    def install(self):
        """Install the handler; returns the previous one so an in-process caller can restore it."""
        return signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        print("SIGTERM received: checkpointing at the end of this step", flush=True)
        self.received = True


@dataclass
class Plan:
    total_steps: int
    steps_per_epoch: int


def plan(config: TrainConfig, n_train: int, world: int) -> Plan:
    per_epoch = steps_per_epoch(n_train, config.per_device_batch, config.grad_accum, world)
    total = config.max_steps if config.max_steps > 0 else per_epoch * config.epochs
    return Plan(total, per_epoch)


def token_loss_sum(model, batch: Batch) -> torch.Tensor:
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=batch.keep, use_cache=False)
    targets = batch.targets[:, batch.keep]
    return F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")


class Loop:
    def __init__(self, config: TrainConfig, accelerator, model, tokenizer, optimizer, scheduler,
                 train: list[Encoded], validation: list[Encoded], run, stop: StopFlag, state: TrainState) -> None:
        self.c, self.acc, self.model, self.tokenizer = config, accelerator, model, tokenizer
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train, self.validation, self.run, self.stop, self.state = train, validation, run, stop, state
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.plan = plan(config, len(train), self.world)
        self.deepspeed = parallel.is_deepspeed(accelerator)
        # accelerate's clip_grad_norm_ recognises an FSDP model only by its full parameter list
        # (accelerator.py clip_grad_norm_, accelerate 1.15): given the trainable ones alone it unscales the
        # fp16 gradients, finds no model and unscales again, and the GradScaler refuses ("unscale_() has
        # already been called"). Frozen parameters carry no gradient and add nothing to the norm.
        self.clip_params = list(model.parameters()) if parallel.is_fsdp(accelerator) else \
            [p for p in model.parameters() if p.requires_grad]
        self.pad_id = tokenizer.pad_token_id
        self.started = time.perf_counter()
        self.wall_at_start = state.wall_time_s

    # -- collectives ------------------------------------------------------------------------------------
    def _sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.acc.device)
        return self.acc.reduce(tensor, reduction="sum").tolist()

    # -- one optimizer step -----------------------------------------------------------------------------
    def apply_update(self) -> bool:
        """The optimizer step and the schedule's; returns whether the step was skipped.

        An fp16 step whose gradients overflowed changed no weight (the GradScaler skipped it and lowered its
        scale): the schedule stays where it was, or warm-up and decay would run ahead of the updates made.
        The data position still advances, so a resumed run replays the same batches.
        """
        self.optimizer.step()
        skipped = bool(getattr(self.optimizer, "step_was_skipped", False))
        if not skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return skipped

    def loss_scale(self, global_count: float) -> float:
        """What each micro-batch's summed loss is multiplied by so that the step's gradient is the mean over the
        `global_count` targets (tokens, pairs, records) of every rank and micro-batch: DDP averages gradients
        over ranks, hence the world size."""
        scale = self.world / max(global_count, 1.0)
        if self.deepspeed:
            # The engine divides every loss by its gradient_accumulation_steps (engine.backward, scale_wrt_gas);
            # the scale above already averages over the whole step.
            scale *= self.c.grad_accum
        return scale

    def accumulating(self, micro: list):
        """Each micro-batch of a step, with its backward to run inside the loop body: gradients are reduced
        across ranks only after the last one (no_sync before it)."""
        for j, item in enumerate(micro):
            sync = j == len(micro) - 1
            if self.deepspeed:
                # accelerate's DeepSpeed backward marks the accumulation boundary and steps the engine only when
                # sync_gradients is set (utils/deepspeed.py DeepSpeedEngineWrapper.backward), as inside its own
                # accumulate() context.
                self.acc.gradient_state._set_sync_gradients(sync)
            with nullcontext() if sync else self.acc.no_sync(self.model):
                yield item

    def _step(self, micro: list[list[int]]) -> dict[str, float]:
        batches = [collate([self.train[i] for i in mb], self.pad_id, self.c.packing).to(self.acc.device)
                   for mb in micro]
        global_targets = self._sum([float(sum(b.n_targets for b in batches))])[0]
        scale = self.loss_scale(global_targets)
        loss_sum = 0.0
        _synchronize(self.acc.device)
        t0 = time.perf_counter()
        for batch in self.accumulating(batches):
            loss = token_loss_sum(self.model, batch)
            self.acc.backward(loss * scale)
            loss_sum += float(loss.detach())
        max_norm = self.c.max_grad_norm if self.c.max_grad_norm > 0 else float("inf")
        grad_norm = _as_float(self.acc.clip_grad_norm_(self.clip_params, max_norm))
        lr = self.scheduler.get_last_lr()[0]
        skipped = self.apply_update()
        # CUDA kernels run asynchronously: without waiting, the optimizer step's kernels would be counted in
        # the next step's time (or in none, for the last), and tokens/s and MFU would be off.
        _synchronize(self.acc.device)
        seconds = time.perf_counter() - t0
        real = sum(b.real_tokens for b in batches)
        padded = sum(b.padded_tokens for b in batches)
        g_loss, g_real, g_padded, g_stop = self._sum([loss_sum, real, padded, float(self.stop.received)])
        self.stop.agree(g_stop)
        s = self.state
        s.global_step += 1
        s.step_in_epoch += 1
        s.skipped_steps += skipped
        s.real_tokens += int(g_real)
        s.padded_tokens += int(g_padded)
        s.target_tokens += int(global_targets)
        s.train_time_s += seconds
        loss_value = g_loss / max(global_targets, 1.0)
        s.losses.append(loss_value)
        return {"loss": loss_value, "learning_rate": lr, "grad_norm": grad_norm,
                "tokens_per_s": g_real / max(seconds, 1e-9), "real_token_share": g_real / max(g_padded, 1.0),
                "epoch": s.epoch + s.step_in_epoch / self.plan.steps_per_epoch}

    # -- validation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        if not self.validation:
            return None
        examples = self.validation
        per = self.c.per_device_batch
        chunk = per * self.world
        # Every rank runs the same number of forward passes (collectives inside wrapped models must pair up);
        # filler examples carry no targets and so add nothing.
        filler = Encoded("filler", examples[0].input_ids, [IGNORE] * len(examples[0].labels), False)
        padded = examples + [filler] * (-len(examples) % chunk)
        self.model.eval()
        total, targets = 0.0, 0.0
        for start in range(0, len(padded), chunk):
            mine = padded[start + self.rank * per: start + (self.rank + 1) * per]
            batch = collate(mine, self.pad_id, packing=False).to(self.acc.device)
            total += float(token_loss_sum(self.model, batch))
            targets += batch.n_targets
        self.model.train()
        total, targets = self._sum([total, targets])
        return total / max(targets, 1.0)

    def _after_eval(self, val_loss: float) -> None:
        s = self.state
        s.val_losses.append([s.global_step, val_loss])
        self._log({"val_loss": val_loss})
        if s.best_val_loss is None or val_loss < s.best_val_loss - self.c.early_stopping_min_delta:
            s.best_val_loss, s.bad_evals = val_loss, 0
        else:
            s.bad_evals += 1
        if self.c.early_stopping_patience and s.bad_evals >= self.c.early_stopping_patience:
            s.stopped_early = True
            self._print(f"early stopping: no val_loss improvement in {s.bad_evals} evaluations")

    # -- checkpoints ------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        step = self.state.global_step
        folder = self.c.checkpoints
        if self.acc.is_main_process:
            ckpt.begin(folder, step)
        self.acc.wait_for_everyone()
        tmp = ckpt.tmp_dir(folder, step)
        if self._adapter_under_fsdp():
            parallel.save_trainable_sharded(self.model, self.optimizer, tmp / SHARDED_TRAINABLE)
        elif self._sharded():
            saving, _ = parallel.checkpoint_kwargs(self.deepspeed, self.c.method)
            self.acc.save_state(str(tmp / "accelerate"), **saving)
        elif self.acc.is_main_process:
            from safetensors.torch import save_file

            save_file(modelsetup.trainable_state(self.acc.unwrap_model(self.model)), tmp / "trainable.safetensors")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        if self.acc.is_main_process:
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            if self.acc.scaler is not None:
                torch.save(self.acc.scaler.state_dict(), tmp / "scaler.pt")
            self.state.wall_time_s = self._wall()
            self.state.save(tmp)
        torch.save(ckpt.rng_state(), tmp / f"rng-rank{self.rank}.pt")
        self.acc.wait_for_everyone()
        final = ckpt.publish(folder, step, self.c.keep_checkpoints) if self.acc.is_main_process else None
        self.acc.wait_for_everyone()
        self._print(f"checkpoint saved at step {step}")
        return final or folder / ckpt.name_for(step)

    def _sharded(self) -> bool:
        return parallel.is_sharded(self.acc)

    def _adapter_under_fsdp(self) -> bool:
        """LoRA/QLoRA under FSDP2: only the adapter and its optimizer state go into a checkpoint."""
        return self.c.method != "full" and getattr(self.acc, "is_fsdp2", False)

    def load_checkpoint(self, path: Path) -> None:
        saved = TrainState.load(path)
        if saved.world_size != self.world or saved.per_device_batch != self.c.per_device_batch:
            self._print(f"warning: {path} was written with world size {saved.world_size} x batch "
                        f"{saved.per_device_batch}; resuming with {self.world} x {self.c.per_device_batch} "
                        "changes the data order from here on")
        if self._adapter_under_fsdp():
            parallel.load_trainable_sharded(self.model, self.optimizer, path / SHARDED_TRAINABLE)
        elif self._sharded():
            _, loading = parallel.checkpoint_kwargs(self.deepspeed, self.c.method)
            self.acc.load_state(str(path / "accelerate"), **loading)
        else:
            from safetensors.torch import load_file

            trainable = load_file(path / "trainable.safetensors")
            modelsetup.load_trainable_state(self.acc.unwrap_model(self.model), trainable)
            # Onto this rank's device: without a map_location every rank would load rank 0's tensors onto the
            # device they were saved from (cuda:0), and a full fine-tune's optimizer state fills GPU 0.
            self.optimizer.load_state_dict(ckpt.load_tensors(path / "optimizer.pt", self.acc.device))
        self.scheduler.load_state_dict(ckpt.load_tensors(path / "scheduler.pt", "cpu"))
        if self.acc.scaler is not None and (path / "scaler.pt").is_file():
            self.acc.scaler.load_state_dict(ckpt.load_tensors(path / "scaler.pt", "cpu"))
        rng = path / f"rng-rank{self.rank}.pt"
        if rng.is_file():
            ckpt.set_rng_state(ckpt.load_tensors(rng, "cpu"))  # RNG states are CPU byte tensors
        saved.resumes += 1
        self.state = saved
        self.wall_at_start = saved.wall_time_s
        self._print(f"resumed from {path.name}: step {saved.global_step}, epoch {saved.epoch}")

    # -- the loop -----------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        c, s = self.c, self.state
        s.world_size, s.per_device_batch = self.world, c.per_device_batch
        self.model.train()
        last_eval = -1
        while s.global_step < self.plan.total_steps and not s.stopped_early:
            steps = rank_steps(len(self.train), c.per_device_batch, c.grad_accum, self.world, self.rank,
                               c.seed, s.epoch)
            if s.step_in_epoch >= len(steps):
                s.epoch, s.step_in_epoch = s.epoch + 1, 0
                continue
            metrics = self._step(steps[s.step_in_epoch])
            if s.global_step % c.log_steps == 0 or s.global_step == self.plan.total_steps:
                self._log(metrics)
            self._print(f"step {s.global_step}/{self.plan.total_steps} loss {metrics['loss']:.4f} "
                        f"lr {metrics['learning_rate']:.2e} grad_norm {metrics['grad_norm']:.3f} "
                        f"tok/s {metrics['tokens_per_s']:.0f}")
            if self.acc.is_main_process:
                report_progress(s.global_step, self.plan.total_steps, "step", loss=round(metrics["loss"], 4),
                                tokens_per_s=round(metrics["tokens_per_s"]))
            epoch_end = s.step_in_epoch >= len(steps)
            if self.validation and ((c.eval_steps and s.global_step % c.eval_steps == 0)
                                    or (not c.eval_steps and epoch_end)):
                self._after_eval(self.evaluate())
                last_eval = s.global_step
            if self.stop.agreed:
                self.save_checkpoint()
                raise Preempted()
            if c.save_steps and s.global_step % c.save_steps == 0 and s.global_step < self.plan.total_steps:
                self.save_checkpoint()
        if self.validation and last_eval != s.global_step and not any(v[0] == s.global_step for v in s.val_losses):
            self._after_eval(self.evaluate())
        self.save_checkpoint()
        return s

    # -- reporting ------------------------------------------------------------------------------------------
    def _wall(self) -> float:
        return self.wall_at_start + time.perf_counter() - self.started

    def _log(self, metrics: dict[str, float]) -> None:
        if self.run is not None and self.acc.is_main_process:
            self.run.log_metrics(metrics, step=self.state.global_step)

    def _print(self, text: str) -> None:
        if self.acc.is_main_process:
            print(text, flush=True)

    def summary(self) -> dict:
        s = self.state
        tail = s.losses[-10:]
        return {
            "steps": s.global_step,
            "planned_steps": self.plan.total_steps,
            "epochs_completed": s.epoch + s.step_in_epoch / max(self.plan.steps_per_epoch, 1),
            "final_train_loss": s.losses[-1] if s.losses else None,
            "final_train_loss_mean10": sum(tail) / len(tail) if tail else None,
            "first_train_loss": s.losses[0] if s.losses else None,
            "final_val_loss": s.val_losses[-1][1] if s.val_losses else None,
            "best_val_loss": s.best_val_loss,
            "stopped_early": s.stopped_early,
            "tokens_per_s": s.real_tokens / s.train_time_s if s.train_time_s else None,
            "real_tokens": s.real_tokens,
            "target_tokens": s.target_tokens,
            "real_token_share": s.real_tokens / s.padded_tokens if s.padded_tokens else None,
            "train_time_s": s.train_time_s,
            "wall_time_s": self._wall(),
            "peak_memory_mb": peak_memory_mb(),
            "resumes": s.resumes,
            "skipped_steps": s.skipped_steps,
        }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_float(norm) -> float:
    """The gradient norm as a number: DeepSpeed reports None before its first step, FSDP2 a replicated DTensor."""
    if norm is None:
        return float("nan")
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")

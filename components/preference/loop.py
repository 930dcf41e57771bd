"""The preference loop: ``train``'s loop (exact resume, accumulation, checkpoints on SIGTERM, progress) with the
DPO or KTO loss in place of the token cross-entropy.

Only the optimizer step and the evaluation differ from ``components.train.loop.Loop``, so only they are
overridden: the batch plan (a pure function of seed and epoch), the (epoch, step_in_epoch) position, the per-rank
RNG state, the checkpoint format and ``$TUNELINE_PROGRESS`` reports are train's own, and a run killed after a
checkpoint resumes to the uninterrupted run's numbers.

Normalisation: a global step's loss is the mean over its pairs (dpo) or records (kto) across micro-batches and
ranks, as one batch of that size would give; each micro-batch contributes ``sum(losses) * world / n_global``.
KTO's reference point is estimated per micro-batch (TRL: per batch, averaged over processes; here too).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from components.preference.data import EncodedPreference, encode_side
from components.preference.losses import PreferenceTerms, dpo_loss, kl_estimate, kl_reference_point, kto_loss
from components.preference.model import reference_of
from components.train.loop import Loop, _as_float, _synchronize
from tuneline.llm.ml.batching import collate
from tuneline.llm.ml.chat import IGNORE, TemplateError


def sequence_logps(model, batch) -> torch.Tensor:
    """Sum of the target tokens' log-probabilities, one per row (TRL's ``per_token_logps.sum(dim=1)``)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=batch.keep, use_cache=False)
    targets = batch.targets[:, batch.keep]
    nll = F.cross_entropy(out.logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    return -nll.sum(dim=1)


SUMS = ("loss", "chosen", "rejected", "n_chosen", "n_rejected", "correct", "kl", "tokens", "padded",
        "policy_prefers", "reference_prefers", "groups")


def reward_metrics(totals: dict[str, float], n: float, kind: str) -> dict[str, float]:
    """TRL's reward figures from summed ``SUMS``. A KTO step or split with no desirable (or no undesirable)
    record has no ``rewards/chosen`` (``rewards/rejected``) and no margin, as in TRL 1.16's KTO trainer: a mean
    over no records reported as 0 would make the margin the other side's reward, negated."""
    metrics = {"rewards/accuracies": totals["correct"] / max(n, 1.0)}
    if totals["n_chosen"]:
        metrics["rewards/chosen"] = totals["chosen"] / totals["n_chosen"]
    if totals["n_rejected"]:
        metrics["rewards/rejected"] = totals["rejected"] / totals["n_rejected"]
    if totals["n_chosen"] and totals["n_rejected"]:
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    if kind == "kto":
        metrics["kl"] = totals["kl"] / max(totals["groups"], 1.0)
    return metrics


class PreferenceLoop(Loop):
    def __init__(self, *args, reference=None, kind: str = "pairs", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reference = reference
        self.kind = kind
        self.eval_metrics: dict[str, float] = {}

    # -- scoring ------------------------------------------------------------------------------------------
    def _logps(self, model, examples) -> torch.Tensor:
        return sequence_logps(model, collate(examples, self.pad_id, packing=False).to(self.acc.device))

    def _reference_logps(self, examples) -> torch.Tensor:
        with torch.no_grad(), reference_of(self.acc.unwrap_model(self.model), self.reference) as ref:
            return self._logps(ref, examples)

    def _kl_examples(self, records: list[EncodedPreference]):
        """Each prompt with the previous record's completion (TRL's collator cycles completions by one)."""
        shifted = records[-1:] + records[:-1]
        out = []
        for r, other in zip(records, shifted, strict=True):
            try:
                out.append(encode_side(self.tokenizer, r.id, r.prompt, other.completion, self.c.max_seq_len))
            except TemplateError:
                out.append(r.chosen)
        return out

    def terms(self, model, records: list[EncodedPreference], counted: bool = True) -> PreferenceTerms:
        """The loss terms of one group. ``counted`` False: a filler group that only keeps this rank in step with
        the others (``score``); it joins KTO's reduction of the reference point without weighing in it."""
        c = self.c
        if self.kind == "pairs":
            sides = [r.chosen for r in records] + [r.rejected for r in records]
            policy = self._logps(model, sides)
            ref = self._reference_logps(sides)
            n = len(records)
            terms = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], c.beta, c.label_smoothing)
            terms.policy_prefers = float((policy[:n] > policy[n:]).sum())
            terms.reference_prefers = float((ref[:n] > ref[n:]).sum())
            return terms
        examples = [r.chosen for r in records]
        kl_examples = self._kl_examples(records)
        with torch.no_grad():
            policy_kl = self._logps(model, kl_examples)
        ref = self._reference_logps(examples + kl_examples)
        n = len(records)
        estimate = kl_estimate(policy_kl, ref[n:])
        if self.world > 1:
            total, ranks = self._sum([float(estimate) * counted, float(counted)])
            estimate = torch.tensor(total / max(ranks, 1.0), device=estimate.device)
        point = kl_reference_point(estimate.reshape(1))
        labels = torch.tensor([bool(r.label) for r in records], device=self.acc.device)
        terms = kto_loss(self._logps(model, examples), ref[:n], labels, point, c.beta, c.desirable_weight,
                         c.undesirable_weight)
        terms.kl = float(point)
        return terms

    # -- one optimizer step -------------------------------------------------------------------------------
    def _step(self, micro: list[list[int]]) -> dict[str, float]:
        groups = [[self.train[i] for i in mb] for mb in micro]
        n_global = self._sum([float(sum(len(g) for g in groups))])[0]
        scale = self.loss_scale(n_global)  # train's: DeepSpeed's own division by the accumulation undone
        sums = dict.fromkeys(SUMS, 0.0)
        _synchronize(self.acc.device)
        t0 = time.perf_counter()
        for group in self.accumulating(groups):  # train's: no_sync, and DeepSpeed's accumulation boundary
            terms = self.terms(self.model, group)
            self.acc.backward(terms.losses.sum() * scale)
            self._accumulate(sums, terms, group)
        max_norm = self.c.max_grad_norm if self.c.max_grad_norm > 0 else float("inf")
        grad_norm = _as_float(self.acc.clip_grad_norm_(self.clip_params, max_norm))
        lr = self.scheduler.get_last_lr()[0]
        self.state.skipped_steps += self.apply_update()  # an fp16 overflow leaves the schedule where it was
        _synchronize(self.acc.device)
        seconds = time.perf_counter() - t0
        keys = list(sums)
        *reduced, stop = self._sum([sums[k] for k in keys] + [float(self.stop.received)])
        totals = dict(zip(keys, reduced, strict=True))
        self.stop.agree(stop)
        s = self.state
        s.global_step += 1
        s.step_in_epoch += 1
        s.real_tokens += int(totals["tokens"])
        s.padded_tokens += int(totals["padded"])
        s.train_time_s += seconds
        loss = totals["loss"] / max(n_global, 1.0)
        s.losses.append(loss)
        metrics = {"loss": loss, "learning_rate": lr, "grad_norm": grad_norm,
                   "tokens_per_s": totals["tokens"] / max(seconds, 1e-9),
                   "epoch": s.epoch + s.step_in_epoch / self.plan.steps_per_epoch}
        metrics.update(reward_metrics(totals, n_global, self.kind))
        return metrics

    def _accumulate(self, sums: dict[str, float], terms: PreferenceTerms, group: list[EncodedPreference]) -> None:
        sums["groups"] += 1
        sums["loss"] += float(terms.losses.detach().sum())
        sums["chosen"] += float(terms.chosen_rewards.sum())
        sums["rejected"] += float(terms.rejected_rewards.sum())
        sums["n_chosen"] += terms.chosen_rewards.numel()
        sums["n_rejected"] += terms.rejected_rewards.numel()
        if self.kind == "pairs":
            sums["correct"] += float((terms.chosen_rewards > terms.rejected_rewards).sum())
        else:
            # KTO has no pairs: a record counts as right when its reward has its label's sign.
            sums["correct"] += float((terms.chosen_rewards > 0).sum() + (terms.rejected_rewards < 0).sum())
            sums["kl"] += terms.kl
        sides = [r.chosen for r in group] + ([r.rejected for r in group] if self.kind == "pairs" else [])
        sums["tokens"] += sum(len(e.input_ids) for e in sides)
        sums["padded"] += len(sides) * max(len(e.input_ids) for e in sides)
        sums["policy_prefers"] += terms.policy_prefers
        sums["reference_prefers"] += terms.reference_prefers

    # -- held-out scoring -----------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, records: list[EncodedPreference]) -> dict[str, float]:
        """Held-out loss, reward accuracy and margin against the reference, and how often the policy and the
        reference themselves give the chosen side the higher log-probability (pairs)."""
        per = self.c.per_device_batch
        chunk = per * self.world
        mine = [records[i] for start in range(0, len(records), chunk)
                for i in range(start + self.rank * per, min(start + (self.rank + 1) * per, len(records)))]
        was_training = self.model.training
        self.model.eval()
        sums = dict.fromkeys(SUMS, 0.0)
        # The module itself, not DDP's wrapper: no gradient is reduced here. Under FSDP and ZeRO-3 each forward
        # pass still gathers parameters with the other ranks, and KTO reduces its reference point per group, so
        # every rank scores as many groups: one whose share ran out scores a filler that counts for nothing
        # (train's evaluate pads with filler examples for the same reason).
        model = self.acc.unwrap_model(self.model)
        groups = [mine[start:start + per] for start in range(0, len(mine), per)]
        if self.kind == "kto" and len(groups) > 1 and len(groups[-1]) < 2:
            last = groups.pop()  # the KL estimate pairs each record with another one
            groups[-1] = groups[-1] + last
        filler = records[:per]
        for i in range(self._max(len(groups))):
            counted = i < len(groups)
            group = groups[i] if counted else filler
            terms = self.terms(model, group, counted=counted)
            if counted:
                self._accumulate(sums, terms, group)
        if was_training:
            self.model.train()
        keys = list(sums)
        totals = dict(zip(keys, self._sum([sums[k] for k in keys]), strict=True))
        n = float(len(records))
        metrics = {"loss": totals["loss"] / max(n, 1.0), **reward_metrics(totals, n, self.kind), "examples": n}
        if self.kind == "pairs":
            metrics["policy_preference_accuracy"] = totals["policy_prefers"] / max(n, 1.0)
            metrics["reference_preference_accuracy"] = totals["reference_prefers"] / max(n, 1.0)
        return metrics

    def _max(self, value: int) -> int:
        if self.world == 1:
            return value
        return int(self.acc.gather(torch.tensor([value], device=self.acc.device)).max())

    def evaluate(self) -> float | None:
        if not self.validation:
            return None
        self.eval_metrics = self.score(self.validation)
        self._log({f"eval_{k}": v for k, v in self.eval_metrics.items() if k != "examples"})
        return self.eval_metrics["loss"]

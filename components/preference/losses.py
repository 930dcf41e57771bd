"""The DPO and KTO losses, as TRL 1.16 defines them, on summed completion log-probabilities.

Written here rather than called from TRL: in trl 1.16.0 neither loss is a function of its own; each is inlined
in its trainer's ``_compute_loss`` (trl/trainer/dpo_trainer.py, loss_type "sigmoid"; trl/trainer/kto_trainer.py,
loss_type "kto"), which also runs the model, gathers metrics across processes and expects TRL's collated batch.
The formulas are a few lines; ``tests/components/test_preference.py`` checks them on worked numbers.

DPO (Rafailov et al. 2023), per pair, with ``delta = (pi_c - ref_c) - (pi_r - ref_r)``:
    loss = -(1 - eps) * logsigmoid(beta * delta) - eps * logsigmoid(-beta * delta)
At eps = 0 (the default) this is TRL 1.16's "sigmoid" loss exactly. With eps > 0 (label smoothing) it is
conservative DPO (Mitchell 2023), which TRL's "sigmoid" loss computed from ``label_smoothing`` up to v0.19
(trl/trainer/dpo_trainer.py at v0.19.0); TRL 1.16's "sigmoid" ignores ``label_smoothing``, and its "robust" loss
(Chowdhury et al. 2024) is a different formula, ``(clean - flipped) / (1 - 2 eps)`` with the flipped term
subtracted. eps must stay below 0.5: at 0.5 the two terms are mirror images, the loss is smallest at
``delta = 0`` and training would pull every pair towards indifference.
Rewards are ``beta * (pi - ref)`` per side, accuracy ``reward_c > reward_r``, margin ``reward_c - reward_r``.

KTO (Ethayarajh et al. 2024, eq. 7), per record, with the reference point ``z = max(0, mean(pi_KL - ref_KL))``
estimated on mismatched (prompt, another record's completion) sequences and not differentiated:
    desirable:   w_d * (1 - sigmoid(beta * ((pi - ref) - z)))
    undesirable: w_u * (1 - sigmoid(beta * (z - (pi - ref))))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PreferenceTerms:
    losses: torch.Tensor  # one per pair (dpo) or record (kto)
    chosen_rewards: torch.Tensor  # detached; for kto the desirable records' rewards
    rejected_rewards: torch.Tensor  # detached; for kto the undesirable records'
    kl: float = 0.0  # kto: the reference point used
    policy_prefers: float = 0.0  # dpo: pairs whose chosen side the policy gives the higher log-probability
    reference_prefers: float = 0.0  # dpo: the same under the reference


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, label_smoothing: float) -> PreferenceTerms:
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing {label_smoothing:g}: must be in [0, 0.5) (the assumed share of flipped "
                         "labels; at 0.5 the loss prefers neither side)")
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    delta = chosen_logratios - rejected_logratios
    losses = (-(1 - label_smoothing) * F.logsigmoid(beta * delta)
              - label_smoothing * F.logsigmoid(-beta * delta))
    return PreferenceTerms(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def kto_loss(policy: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor, kl: torch.Tensor, beta: float,
             desirable_weight: float, undesirable_weight: float) -> PreferenceTerms:
    """``labels`` is a bool tensor; ``kl`` the (already detached and clamped) reference point z."""
    logratios = policy - ref
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    losses = torch.where(labels, desirable, undesirable)
    rewards = beta * logratios.detach()
    return PreferenceTerms(losses, rewards[labels], rewards[~labels])


def kl_estimate(policy_kl: torch.Tensor, ref_kl: torch.Tensor) -> torch.Tensor:
    """One process's KL estimate, TRL's ``(KL_logps - ref_KL_logps).mean().detach()``, not yet clamped."""
    return (policy_kl - ref_kl).mean().detach()


def kl_reference_point(estimates: torch.Tensor) -> torch.Tensor:
    """The processes' estimates averaged, then clamped at 0, in that order as TRL 1.16 does
    (kto_trainer.py: ``gather_for_metrics(kl).mean().clamp(min=0)``): clamping each process's estimate first would
    turn a negative estimate on one process into a positive reference point overall."""
    return estimates.mean().clamp(min=0)

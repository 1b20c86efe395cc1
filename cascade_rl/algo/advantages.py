"""Advantage estimators.

Group estimators turn the rewards of one prompt's G rollouts into one advantage per rollout;
they live in the ``ADVANTAGES`` registry and share one signature,
``fn(rewards_PG, *, eps) -> advantages_PG``, so a stage config names its estimator by string.
A 1-D ``rewards_G`` is treated as a single group. The loop broadcasts a rollout's advantage to
its response tokens.

MOPD's advantage is per token rather than per rollout (``mopd_advantages``): it is the
sampled-token log-ratio teacher/student, which is why MOPD can reuse the RL loss unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from cascade_rl.algo._tensor import at_least_fp32


class GroupAdvantageFn(Protocol):
    def __call__(self, rewards_PG: torch.Tensor, *, eps: float = ...) -> torch.Tensor: ...


ADVANTAGES: dict[str, GroupAdvantageFn] = {}


def register_advantage(name: str) -> Callable[[GroupAdvantageFn], GroupAdvantageFn]:
    """Decorator adding a group estimator to ``ADVANTAGES`` under ``name`` (names are unique)."""

    def deco(fn: GroupAdvantageFn) -> GroupAdvantageFn:
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGES[name] = fn
        return fn

    return deco


def _as_groups(rewards: torch.Tensor) -> torch.Tensor:
    if rewards.dim() == 1:
        return rewards.unsqueeze(0)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [G] or [P, G], got shape {tuple(rewards.shape)}")
    return rewards


@register_advantage("grpo")
def grpo_advantages(rewards_PG: torch.Tensor, *, eps: float = 1e-6, normalize_std: bool = True) -> torch.Tensor:
    """GRPO group-normalised advantage: ``A[p,g] = (r[p,g] - mean_g r[p]) / (std_g r[p] + eps)``.

    ``std`` is the *sample* standard deviation (Bessel-corrected, divisor G-1), as in
    DeepSeekMath's GRPO and TRL; e.g. rewards [1, 0, 0, 1] → mean 0.5, std 0.57735,
    advantages ±0.866. A group of one rollout has no spread and gets advantage 0.
    A constant group gets 0 (its numerator is 0); dynamic filtering drops such groups anyway.

    Args:
        rewards_PG: [P, G] (or [G]) rewards, P prompts × G rollouts.
        normalize_std: False gives the Dr. GRPO estimator ``r - mean`` (see ``grpo_no_std``).
    Returns:
        float32 advantages with the input's shape.
    """
    r_PG = _as_groups(at_least_fp32(rewards_PG))
    centered_PG = r_PG - r_PG.mean(dim=-1, keepdim=True)
    if normalize_std:
        if r_PG.shape[-1] < 2:
            centered_PG = torch.zeros_like(centered_PG)
        else:
            centered_PG = centered_PG / (r_PG.std(dim=-1, keepdim=True, correction=1) + eps)
    return centered_PG.reshape(rewards_PG.shape)


@register_advantage("grpo_no_std")
def grpo_no_std_advantages(rewards_PG: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO: ``A[p,g] = r[p,g] - mean_g r[p]``.

    Dividing by the group std up-weights prompts that are nearly always right or wrong
    (small std); dropping it removes that difficulty bias. ``eps`` is accepted for a uniform
    registry signature and unused.
    """
    del eps
    return grpo_advantages(rewards_PG, normalize_std=False)


def constant_group_mask(rewards_PG: torch.Tensor, *, atol: float = 0.0) -> torch.Tensor:
    """Dynamic-filtering keep mask: ``keep[p] = max_g r[p,g] - min_g r[p,g] > atol``.

    True marks groups to KEEP (their rollouts disagree); groups whose rollouts all got the
    same reward have zero advantage everywhere and only dilute the token normaliser.

    Args:
        rewards_PG: [P, G] rewards (a 1-D [G] is one group).
    Returns:
        [P] bool (a 0-dim bool for 1-D input).
    """
    r_PG = _as_groups(at_least_fp32(rewards_PG))
    keep_P = (r_PG.amax(dim=-1) - r_PG.amin(dim=-1)) > atol
    return keep_P.reshape(rewards_PG.shape[:-1])


def mopd_advantages(
    teacher_logprobs_BT: torch.Tensor, student_logprobs_BT: torch.Tensor, mask_BT: torch.Tensor
) -> torch.Tensor:
    """Per-token MOPD advantage: ``a[b,t] = sg(log π_teacher(y_t) - log π_student(y_t)) · mask[b,t]``.

    Only the sampled token enters, so ``-a`` is a one-sample estimate of the reverse KL
    KL(π_student || π_teacher) at that position; no full-vocabulary sum is needed.
    Detached: it is a fixed per-token reward, never differentiated.

    Args:
        teacher_logprobs_BT, student_logprobs_BT: [B, T] sampled-token log-probs.
        mask_BT: [B, T] bool/0-1, 1 on response tokens that enter the loss.
    Returns:
        [B, T] float32 advantages, 0 outside the mask.
    """
    diff_BT = at_least_fp32(teacher_logprobs_BT.detach()) - at_least_fp32(student_logprobs_BT.detach())
    return torch.where(mask_BT.bool(), diff_BT, torch.zeros_like(diff_BT))

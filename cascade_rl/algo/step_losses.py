"""Step losses by name: what a Policy computes in ``forward_backward(batch, loss=name, config)``.

A policy engine (in-process, FSDP2 rank, Ray actor) receives only plain data: the batch's per-token
inputs as ``[S, L]`` tensors (``mask`` plus every name in ``TrainSequence.values``), the step's
global normalisers and a JSON-able ``config``. The loss is looked up here by name, so nothing
callable crosses a process boundary and a new objective is one registered function.

Every loss is ``fn(logprobs_SL, inputs, norm, config) -> (loss, metrics)`` with the conventions of
``algo.losses`` (additive metrics; the normaliser of the whole step, never of the micro-batch).

Per-token inputs by loss:

==============  =====================================================================
``nll``         ``mask``
``grpo``        ``mask``, ``advantages``, ``inf_logprobs`` (+ ``ref_logprobs`` with a KL)
``tis``         as ``grpo``
``grpo_clip``   as ``grpo``
``mopd``        ``mask``, ``inf_logprobs``, ``teacher_logprobs`` (+ ``advantages`` with
                ``reward_weight``, ``ref_logprobs`` with a KL)
==============  =====================================================================

``domain_id`` (optional, every RL loss): per-domain diagnostics as ``name_sum@id`` / ``tokens@id``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cascade_rl.algo.losses import (
    Metrics,
    icepop_weights,
    kl_penalty,
    mopd_loss,
    nll_loss,
    pg_loss_clipped,
    pg_loss_on_policy,
    tis_weights,
)


@dataclass(frozen=True)
class Normalisers:
    """Trained tokens and sequences of the whole optimizer step (``TrainBatch.num_tokens`` / ``num_sequences``)."""

    tokens: float
    sequences: float


Inputs = Mapping[str, torch.Tensor]
Config = Mapping[str, Any]
Loss = tuple[torch.Tensor, Metrics]
StepLossFn = Callable[[torch.Tensor, Inputs, Normalisers, Config], Loss]


@dataclass(frozen=True)
class StepLoss:
    fn: StepLossFn
    entropy: bool  # the policy also sums the sampled positions' entropy (a diagnostic)


STEP_LOSSES: dict[str, StepLoss] = {}


def register_step_loss(name: str, *, entropy: bool = False) -> Callable[[StepLossFn], StepLossFn]:
    def deco(fn: StepLossFn) -> StepLossFn:
        if name in STEP_LOSSES:
            raise ValueError(f"step loss {name!r} is already registered")
        STEP_LOSSES[name] = StepLoss(fn, entropy)
        return fn

    return deco


def get_step_loss(name: str) -> StepLoss:
    try:
        return STEP_LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown step loss {name!r}; registered: {', '.join(sorted(STEP_LOSSES))}") from None


def _band(config: Config) -> tuple[float, float] | None:
    band = config.get("icepop")
    return None if band is None else (float(band[0]), float(band[1]))


def domain_breakdown(logprobs_SL: torch.Tensor, t: Inputs, band: tuple[float, float] | None) -> dict[str, torch.Tensor]:
    """Per-domain sums of per-token diagnostics (keys ``name_sum@id`` and ``tokens@id``, ids from
    ``t["domain_id"]``): train/inference mismatch, IcePop drops and, with a teacher, the reverse KL."""
    if "domain_id" not in t:
        return {}
    lp = logprobs_SL.detach()
    mask, ids = t["mask"], t["domain_id"]
    per_token = {"abs_logprob_diff": (lp - t["inf_logprobs"]).abs()}
    if band is not None:
        ratio = torch.exp(lp - t["inf_logprobs"])
        per_token["icepop_drop_frac"] = ((ratio < band[0]) | (ratio > band[1])).float()
    if "teacher_logprobs" in t:
        per_token["reverse_kl"] = lp - t["teacher_logprobs"]
    out: dict[str, torch.Tensor] = {}
    for d in ids[mask > 0].unique().tolist():
        m = mask * (ids == d)
        out[f"tokens@{int(d)}"] = m.sum()
        for name, values in per_token.items():
            out[f"{name}_sum@{int(d)}"] = (values * m).sum()
    return out


def _rl_extras(loss: Loss, logprobs_SL: torch.Tensor, t: Inputs, norm: Normalisers, config: Config) -> Loss:
    """The optional k3 KL to a reference (``kl_coef``), train/inference mismatch and per-domain diagnostics."""
    value, metrics = loss
    metrics = dict(metrics)
    coef = float(config.get("kl_coef", 0.0))
    if coef > 0:
        kl, kl_metrics = kl_penalty(logprobs_SL, t["ref_logprobs"], t["mask"], norm.tokens, coef=coef)
        value = value + kl
        metrics["kl_sum"] = kl_metrics["kl_sum"]
    diff = (logprobs_SL.detach() - t["inf_logprobs"]).abs() * t["mask"]
    metrics.setdefault("abs_logprob_diff_sum", diff.sum())
    return value, {**metrics, **domain_breakdown(logprobs_SL, t, _band(config))}


@register_step_loss("nll")
def nll(logprobs_SL: torch.Tensor, t: Inputs, norm: Normalisers, config: Config) -> Loss:
    """SFT: mean negative log-likelihood over every supervised token of the step."""
    return nll_loss(logprobs_SL, t["mask"], norm.tokens)


def _policy_gradient(
    logprobs_SL: torch.Tensor, t: Inputs, norm: Normalisers, weights: torch.Tensor | None, flagged: Metrics
) -> Loss:
    loss, metrics = pg_loss_on_policy(logprobs_SL, t["advantages"], t["mask"], norm.tokens, weights)
    return loss, {**metrics, **flagged}


@register_step_loss("grpo", entropy=True)
def grpo(logprobs_SL: torch.Tensor, t: Inputs, norm: Normalisers, config: Config) -> Loss:
    """Token-level on-policy GRPO, IcePop-weighted when ``config["icepop"]`` holds a band."""
    band, weights, flagged = _band(config), None, {}
    if band is not None:
        weights, dropped = icepop_weights(logprobs_SL, t["inf_logprobs"], *band)
        flagged = {"icepop_drop_frac_sum": (dropped.float() * t["mask"]).sum()}
    return _rl_extras(_policy_gradient(logprobs_SL, t, norm, weights, flagged), logprobs_SL, t, norm, config)


@register_step_loss("tis", entropy=True)
def tis(logprobs_SL: torch.Tensor, t: Inputs, norm: Normalisers, config: Config) -> Loss:
    """GRPO with truncated importance weights ``min(pi_train / pi_inf, tis_cap)`` instead of IcePop's band."""
    weights, capped = tis_weights(logprobs_SL, t["inf_logprobs"], cap=float(config.get("tis_cap", 2.0)))
    flagged = {"tis_capped_frac_sum": (capped.float() * t["mask"]).sum()}
    return _rl_extras(_policy_gradient(logprobs_SL, t, norm, weights, flagged), logprobs_SL, t, norm, config)


@register_step_loss("grpo_clip", entropy=True)
def grpo_clip(logprobs_SL: torch.Tensor, t: Inputs, norm: Normalisers, config: Config) -> Loss:
    """PPO's clipped surrogate with the behaviour policy (the sampler's log-probs) as the old policy.

    Strictly on-policy the ratio is 1 and this equals ``grpo`` without IcePop; it matters when
    rollouts are stale (asynchronous generation), where the clip bounds each token's update.
    """
    low, high = config.get("clip", (0.2, 0.2))
    loss = pg_loss_clipped(
        logprobs_SL, t["inf_logprobs"], t["advantages"], t["mask"], norm.tokens, clip_low=low, clip_high=high
    )
    return _rl_extras(loss, logprobs_SL, t, norm, config)


@register_step_loss("mopd", entropy=True)
def mopd(logprobs_SL: torch.Tensor, t: Inputs, norm: Normalisers, config: Config) -> Loss:
    """Multi-domain on-policy distillation (SPEC section 5), see ``algo.losses.mopd_loss``."""
    reduction = str(config.get("reduction", "seq_mean"))
    loss = mopd_loss(
        logprobs_SL,
        t["inf_logprobs"],
        t["teacher_logprobs"],
        t["mask"],
        normalizer=norm.sequences if reduction == "seq_mean" else norm.tokens,
        reduction=reduction,
        icepop=_band(config),
        reward_adv_BT=t.get("advantages"),
        reward_weight=float(config.get("reward_weight", 0.0)),
    )
    return _rl_extras(loss, logprobs_SL, t, norm, config)

"""Policy-gradient, distillation and SFT losses as pure functions.

Contract shared by every loss here:
    * Inputs are per-token tensors ``[B, T]`` of one micro-batch plus ``mask_BT`` (1 on tokens
      that enter the loss). Masked-out positions may hold anything (even -inf/NaN log-probs
      from padding): they are selected away with ``torch.where``, never multiplied by 0.
    * The normaliser (tokens, or sequences for ``seq_mean``) of the WHOLE optimizer step, over
      all micro-batches and data-parallel ranks, is an explicit argument. A loss never counts
      its own tokens, so ``Σ_microbatches loss == full-batch loss`` exactly and gradient
      accumulation / data parallelism cannot change the objective.
    * Returns ``(loss, metrics)``. Metrics are detached 0-dim tensors (no host sync) and are
      ADDITIVE across micro-batches: counts (``tokens``, ``sequences``) and sums over valid
      tokens (keys ending ``_sum``). ``summarize_metrics`` adds them up and turns each
      ``X_sum`` into the per-token mean ``X``.
    * Importance weights (``icepop_weights`` / ``tis_weights``) are computed by the caller and
      passed as ``weights_BT``; tokens they drop still count in the normaliser, as in the MOPD
      formula whose 1/|y| counts every response token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch

from cascade_rl.algo._tensor import at_least_fp32
from cascade_rl.algo.advantages import mopd_advantages

Metrics = dict[str, torch.Tensor | float]
Normalizer = float | torch.Tensor

# exp() of a log-ratio beyond this overflows fp32 toward inf; ratios that large are already
# far outside any trust band, so clamping changes no decision and keeps the loss finite.
_MAX_LOG_RATIO = 20.0


def _check_normalizer(normalizer: Normalizer) -> None:
    # Only plain numbers are checked: inspecting a device tensor would force a host sync.
    if isinstance(normalizer, int | float) and normalizer <= 0:
        raise ValueError(f"normaliser must be > 0, got {normalizer}; skip optimizer steps with no tokens")


def _masked(values_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    return torch.where(mask_BT.bool(), values_BT, torch.zeros_like(values_BT))


def _count(mask_BT: torch.Tensor) -> torch.Tensor:
    return mask_BT.bool().sum().float()


def _sum_detached(values_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    return _masked(at_least_fp32(values_BT.detach()), mask_BT).sum()


def _log_ratio(num_BT: torch.Tensor, den_BT: torch.Tensor) -> torch.Tensor:
    return (at_least_fp32(num_BT) - at_least_fp32(den_BT)).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)


# --------------------------------------------------------------------------- reductions


class ReductionFn(Protocol):
    def __call__(self, values_BT: torch.Tensor, mask_BT: torch.Tensor, normalizer: Normalizer) -> torch.Tensor: ...


REDUCTIONS: dict[str, ReductionFn] = {}


def register_reduction(name: str) -> Callable[[ReductionFn], ReductionFn]:
    """Decorator adding a per-token → scalar reduction to ``REDUCTIONS``."""

    def deco(fn: ReductionFn) -> ReductionFn:
        if name in REDUCTIONS:
            raise ValueError(f"reduction {name!r} is already registered")
        REDUCTIONS[name] = fn
        return fn

    return deco


@register_reduction("token_mean")
def token_mean(values_BT: torch.Tensor, mask_BT: torch.Tensor, normalizer: Normalizer) -> torch.Tensor:
    """``Σ_{b,t} mask · values / normalizer``; normalizer = valid tokens of the whole step."""
    _check_normalizer(normalizer)
    return _masked(values_BT, mask_BT).sum() / normalizer


@register_reduction("seq_mean")
def seq_mean(values_BT: torch.Tensor, mask_BT: torch.Tensor, normalizer: Normalizer) -> torch.Tensor:
    """``Σ_b (1/|y_b|) Σ_t mask · values / normalizer``; normalizer = sequences of the whole step.

    Each row is one sequence and ``|y_b|`` its number of valid tokens (rows with none
    contribute 0). Packed rows holding several samples must be unpacked first.
    """
    _check_normalizer(normalizer)
    len_B = mask_BT.bool().sum(-1).clamp(min=1).to(values_BT.dtype)
    return (_masked(values_BT, mask_BT).sum(-1) / len_B).sum() / normalizer


# --------------------------------------------------------------------------- SFT


def nll_loss(logprobs_BT: torch.Tensor, mask_BT: torch.Tensor, num_tokens: Normalizer) -> tuple[torch.Tensor, Metrics]:
    """Per-token SFT loss: ``L = -Σ_{b,t} mask · logprob / num_tokens``.

    With ``num_tokens`` = supervised tokens of the whole step this is the mean over all
    supervised tokens, and a packed row's loss is exactly the sum of its samples' losses.

    Args:
        logprobs_BT: [B, T] log-probs of the label tokens.
        mask_BT: [B, T] 1 on supervised (assistant) tokens.
    """
    loss = token_mean(-logprobs_BT, mask_BT, num_tokens)
    return loss, {"tokens": _count(mask_BT), "nll_sum": _sum_detached(-logprobs_BT, mask_BT)}


# --------------------------------------------------------------------------- train/inference mismatch


# (weights, flagged) = fn(train_logprobs, inf_logprobs, **band_or_cap)
WeightCorrectionFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
WEIGHT_CORRECTIONS: dict[str, WeightCorrectionFn] = {}


def register_weight_correction(name: str) -> Callable[[WeightCorrectionFn], WeightCorrectionFn]:
    """Decorator adding a train/inference mismatch correction to ``WEIGHT_CORRECTIONS``.

    Each returns ``(weights, flagged)``: detached per-token weights and a bool mask of the
    tokens the correction acted on (dropped or truncated), for metrics.
    """

    def deco(fn: WeightCorrectionFn) -> WeightCorrectionFn:
        if name in WEIGHT_CORRECTIONS:
            raise ValueError(f"weight correction {name!r} is already registered")
        WEIGHT_CORRECTIONS[name] = fn
        return fn

    return deco


@register_weight_correction("icepop")
def icepop_weights(
    train_logprobs: torch.Tensor, inf_logprobs: torch.Tensor, low: float = 0.5, high: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """IcePop: ``r = exp(train - inf)``; ``w = sg(r) · 1[low ≤ r ≤ high]``.

    Tokens whose ratio leaves the band are DROPPED (weight 0), not clipped: a token the
    trainer and the rollout engine disagree on that much carries a corrupt gradient.

    Args:
        train_logprobs, inf_logprobs: [...] sampled-token log-probs, same shape.
    Returns:
        (w float32 detached, dropped bool) — dropped = outside the band.
    """
    r = _log_ratio(train_logprobs.detach(), inf_logprobs.detach()).exp()
    in_band = (r >= low) & (r <= high)
    # where(), not r * in_band: an out-of-band r may be huge, and the weight must be exactly 0.
    return torch.where(in_band, r, torch.zeros_like(r)), ~in_band


@register_weight_correction("tis")
def tis_weights(
    train_logprobs: torch.Tensor, inf_logprobs: torch.Tensor, cap: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance sampling: ``w = sg(min(exp(train - inf), cap))``.

    Returns:
        (w float32 detached, capped bool) — capped = tokens whose ratio exceeded ``cap``.
    """
    r = _log_ratio(train_logprobs.detach(), inf_logprobs.detach()).exp()
    return r.clamp(max=cap), r > cap


# --------------------------------------------------------------------------- policy gradient


def pg_loss_on_policy(
    logprobs_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    num_tokens: Normalizer,
    weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Strictly on-policy GRPO loss: ``L = -Σ_{b,t} mask · w · A · logprob / num_tokens``.

    One optimizer update per rollout batch means the PPO ratio is identically 1, so there is
    nothing to clip: the gradient is REINFORCE with token-level normalisation,
    ``∂L/∂logprob[b,t] = -w · A / num_tokens``. ``A`` and ``w`` are treated as constants.

    Args:
        logprobs_BT: [B, T] trainer log-probs of the sampled tokens (with grad).
        advantages_BT: [B, T] per-token advantages (a rollout's advantage broadcast over it).
        mask_BT: [B, T] 1 on response tokens in the loss (overlong responses already 0).
        num_tokens: response tokens of the whole step.
        weights_BT: optional [B, T] mismatch weights (IcePop / TIS); None means 1.
    """
    coef_BT = at_least_fp32(advantages_BT.detach())
    if weights_BT is not None:
        coef_BT = coef_BT * at_least_fp32(weights_BT.detach())
    loss = token_mean(-coef_BT * at_least_fp32(logprobs_BT), mask_BT, num_tokens)
    metrics: Metrics = {
        "tokens": _count(mask_BT),
        "advantage_sum": _sum_detached(advantages_BT, mask_BT),
        "logprob_sum": _sum_detached(logprobs_BT, mask_BT),
    }
    return loss, metrics


def pg_loss_clipped(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    num_tokens: Normalizer,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate, token-level:

    ``ρ = exp(logprob - old)``;
    ``L = -Σ mask · w · min(ρ·A, clip(ρ, 1-clip_low, 1+clip_high)·A) / num_tokens``.

    For off-policy reuse of a rollout batch (several updates per batch). With
    ``logprobs == old`` it has the same value and gradient as ``pg_loss_on_policy``. DAPO's
    "clip-higher" uses ``clip_high = 0.28``.

    Metrics: ``clip_frac_sum`` counts tokens where the clipped term is the active (smaller)
    one, i.e. tokens whose gradient is zeroed; ``ratio_sum`` sums ρ.
    """
    adv_BT = at_least_fp32(advantages_BT.detach())
    ratio_BT = _log_ratio(logprobs_BT, old_logprobs_BT.detach()).exp()
    surr_BT = ratio_BT * adv_BT
    surr_clipped_BT = ratio_BT.clamp(1.0 - clip_low, 1.0 + clip_high) * adv_BT
    per_token_BT = -torch.minimum(surr_BT, surr_clipped_BT)
    if weights_BT is not None:
        per_token_BT = per_token_BT * at_least_fp32(weights_BT.detach())
    loss = token_mean(per_token_BT, mask_BT, num_tokens)
    clipped_BT = (surr_clipped_BT < surr_BT).float()
    metrics: Metrics = {
        "tokens": _count(mask_BT),
        "advantage_sum": _sum_detached(adv_BT, mask_BT),
        "clip_frac_sum": _sum_detached(clipped_BT, mask_BT),
        "ratio_sum": _sum_detached(ratio_BT, mask_BT),
    }
    return loss, metrics


# --------------------------------------------------------------------------- KL to a reference


def kl_k3(logprobs_BT: torch.Tensor, ref_logprobs_BT: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π || π_ref) on tokens sampled from π:

    ``k3 = exp(ref - lp) - (ref - lp) - 1`` (≥ 0, unbiased, low variance). Differentiable in
    ``logprobs``: ``∂k3/∂lp = 1 - exp(ref - lp)``, zero when the policies agree.
    """
    delta_BT = _log_ratio(ref_logprobs_BT.detach(), logprobs_BT)
    return delta_BT.exp() - delta_BT - 1.0


def kl_penalty(
    logprobs_BT: torch.Tensor,
    ref_logprobs_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    num_tokens: Normalizer,
    *,
    coef: float,
) -> tuple[torch.Tensor, Metrics]:
    """KL term to add to the policy loss: ``coef · Σ mask · k3 / num_tokens``.

    Only the RLHF stage uses it (coef 0.03); RLVR stages run without KL.
    Metrics: ``kl_sum`` is the uncoefficiented k3 sum over valid tokens.
    """
    k3_BT = kl_k3(logprobs_BT, ref_logprobs_BT)
    loss = coef * token_mean(k3_BT, mask_BT, num_tokens)
    return loss, {"tokens": _count(mask_BT), "kl_sum": _sum_detached(k3_BT, mask_BT)}


# --------------------------------------------------------------------------- MOPD


def mopd_loss(
    logprobs_BT: torch.Tensor,
    inf_logprobs_BT: torch.Tensor,
    teacher_logprobs_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    normalizer: Normalizer,
    reduction: str = "seq_mean",
    icepop: tuple[float, float] | None = (0.5, 2.0),
    reward_adv_BT: torch.Tensor | None = None,
    reward_weight: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Multi-domain on-policy distillation loss (SPEC §5).

    ``a_t = sg(log π_teacher - log π_train) [+ reward_weight · A_reward]``;
    ``r_t = exp(log π_train - log π_inf)``; ``w_t = sg(r_t) · 1[low ≤ r_t ≤ high]`` for
    ``icepop=(low, high)`` (``icepop=None``: ``w_t = 1``, no train / inference mismatch correction);

    * ``seq_mean``:   ``L = -(1/normalizer) Σ_b (1/|y_b|) Σ_t w_t a_t log π_train(y_t)``,
      normalizer = sequences of the whole step (the published objective);
    * ``token_mean``: ``L = -(1/normalizer) Σ_{b,t} w_t a_t log π_train(y_t)``,
      normalizer = response tokens of the whole step.

    Args:
        logprobs_BT: [B, T] trainer log-probs of the sampled tokens (with grad).
        inf_logprobs_BT: [B, T] rollout-engine log-probs of the same tokens.
        teacher_logprobs_BT: [B, T] the domain teacher's log-probs of the same tokens.
        mask_BT: [B, T] 1 on response tokens; each row is one sequence.
        reward_adv_BT: optional [B, T] reward advantage, mixed in with ``reward_weight``
            (0 in the published run).

    Metrics (sums over valid tokens): ``reverse_kl_sum`` = Σ -(teacher - train) (one-sample
    reverse KL, excluding the reward term), ``icepop_drop_frac_sum`` = dropped-token count,
    ``abs_logprob_diff_sum`` = Σ |train - inf|, plus ``tokens`` and ``sequences``.
    """
    if reward_weight != 0.0 and reward_adv_BT is None:
        raise ValueError("reward_weight != 0 needs reward_adv_BT")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; registered: {sorted(REDUCTIONS)}")
    reduce = REDUCTIONS[reduction]
    distill_adv_BT = mopd_advantages(teacher_logprobs_BT, logprobs_BT, mask_BT)
    adv_BT = distill_adv_BT
    if reward_adv_BT is not None and reward_weight != 0.0:
        adv_BT = adv_BT + reward_weight * at_least_fp32(reward_adv_BT.detach())
    if icepop is not None:
        w_BT, dropped_BT = icepop_weights(logprobs_BT, inf_logprobs_BT, *icepop)
    else:
        w_BT, dropped_BT = torch.ones_like(mask_BT, dtype=torch.float32), torch.zeros_like(mask_BT, dtype=torch.bool)
    loss = reduce(-(w_BT * adv_BT) * at_least_fp32(logprobs_BT), mask_BT, normalizer)
    mismatch_BT = (at_least_fp32(logprobs_BT.detach()) - at_least_fp32(inf_logprobs_BT)).abs()
    metrics: Metrics = {
        "tokens": _count(mask_BT),
        "sequences": mask_BT.bool().any(-1).sum().float(),
        "reverse_kl_sum": _sum_detached(-distill_adv_BT, mask_BT),
        "icepop_drop_frac_sum": _sum_detached(dropped_BT.float(), mask_BT),
        "abs_logprob_diff_sum": _sum_detached(mismatch_BT, mask_BT),
    }
    return loss, metrics


# --------------------------------------------------------------------------- metrics


def summarize_metrics(per_microbatch: Sequence[Mapping[str, torch.Tensor | float]]) -> dict[str, float]:
    """Add up additive metrics of one step's micro-batches and derive per-token means.

    Every key is summed; each ``X_sum`` also yields ``X = X_sum / tokens`` (mean over valid
    tokens, or a fraction for count-like sums such as ``clip_frac_sum``). Pass ONE dict per
    micro-batch (merge the dicts of losses added together, e.g. ``pg | kl``, so ``tokens`` is
    counted once). Call it on metrics already summed across data-parallel ranks to get
    global values.
    """
    totals: dict[str, float] = {}
    for metrics in per_microbatch:
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    tokens = totals.get("tokens", 0.0)
    derived = {
        key[: -len("_sum")]: value / tokens for key, value in totals.items() if key.endswith("_sum") and tokens > 0
    }
    return {**totals, **derived}


# --------------------------------------------------------------------------- reward models


def bradley_terry_loss(
    chosen_N: torch.Tensor, rejected_N: torch.Tensor, num_pairs: Normalizer
) -> tuple[torch.Tensor, Metrics]:
    """Bradley-Terry preference loss of a reward model: ``L = -Σ_i log σ(r_c,i - r_r,i) / num_pairs``.

    ``num_pairs`` counts the pairs of the WHOLE optimizer step (like the other normalisers), so
    micro-batches of pairs add up to the step's mean. ``logsigmoid`` keeps a large negative margin
    finite (``log(sigmoid(-100))`` would be ``log(0)``).

    Args:
        chosen_N: [N] scores of the preferred responses (with grad).
        rejected_N: [N] scores of the rejected responses of the same N pairs.

    Metrics (additive): ``pairs``, ``accuracy_sum`` (pairs with r_c > r_r; a tie is not correct) and
    ``margin_sum`` (Σ r_c - r_r).
    """
    _check_normalizer(num_pairs)
    if chosen_N.shape != rejected_N.shape or chosen_N.ndim != 1:
        raise ValueError(f"chosen and rejected scores must be [N] alike, got {chosen_N.shape} and {rejected_N.shape}")
    margin_N = at_least_fp32(chosen_N) - at_least_fp32(rejected_N)
    loss = -torch.nn.functional.logsigmoid(margin_N).sum() / num_pairs
    detached = margin_N.detach()
    metrics: Metrics = {
        "pairs": torch.tensor(float(margin_N.numel()), device=margin_N.device),
        "accuracy_sum": (detached > 0).sum().float(),
        "margin_sum": detached.sum(),
    }
    return loss, metrics

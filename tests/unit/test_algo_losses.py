"""Losses: hand-computed values and gradients, mismatch weights, global normaliser invariance."""

from __future__ import annotations

import math

import pytest
import torch

from cascade_rl.algo.losses import (
    REDUCTIONS,
    WEIGHT_CORRECTIONS,
    icepop_weights,
    kl_k3,
    kl_penalty,
    mopd_loss,
    nll_loss,
    pg_loss_clipped,
    pg_loss_on_policy,
    summarize_metrics,
    tis_weights,
)


def _lp(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def _assert_grad(t: torch.Tensor, expected: list[list[float]]) -> None:
    assert t.grad is not None
    torch.testing.assert_close(t.grad, torch.tensor(expected, dtype=t.grad.dtype))


# --------------------------------------------------------------------------- nll


def test_nll_hand_value_and_gradient():
    lp = _lp([[-1.0, -2.0, -3.0], [-0.5, -4.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, metrics = nll_loss(lp, mask, num_tokens=3)
    # (1 + 2 + 0.5) / 3
    assert loss.item() == pytest.approx(3.5 / 3)
    loss.backward()
    # d/dlp = -mask / num_tokens
    _assert_grad(lp, [[-1 / 3, -1 / 3, 0.0], [-1 / 3, 0.0, 0.0]])
    assert float(metrics["tokens"]) == 3.0 and float(metrics["nll_sum"]) == pytest.approx(3.5)
    # the normaliser is whatever the caller says (here: tokens of a larger step)
    assert nll_loss(lp, mask, num_tokens=10)[0].item() == pytest.approx(0.35)


def test_nonpositive_normaliser_rejected():
    with pytest.raises(ValueError, match="normaliser must be > 0"):
        nll_loss(_lp([[-1.0]]), torch.tensor([[1]]), num_tokens=0)


# --------------------------------------------------------------------------- mismatch weights


def test_icepop_drops_exactly_tokens_outside_band():
    ratios = [1.0, 0.4, 2.5, 0.6, 1.9, 0.49, 2.01]
    train = torch.zeros(len(ratios))
    inf = -torch.log(torch.tensor(ratios))  # exp(train - inf) = ratio
    w, dropped = icepop_weights(train, inf, low=0.5, high=2.0)
    assert dropped.tolist() == [False, True, True, False, False, True, True]
    assert w.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.6, 1.9, 0.0, 0.0], abs=1e-6)


def test_icepop_band_is_inclusive_and_weight_is_detached():
    train = torch.tensor([-1.0, -2.0], requires_grad=True)
    w, dropped = icepop_weights(train, train.detach().clone(), low=1.0, high=1.0)  # r == 1 exactly
    assert w.tolist() == [1.0, 1.0] and dropped.tolist() == [False, False]
    assert not w.requires_grad


def test_icepop_huge_ratio_gives_zero_not_nan():
    w, dropped = icepop_weights(torch.tensor([0.0, 0.0]), torch.tensor([-200.0, float("-inf")]))
    assert w.tolist() == [0.0, 0.0] and dropped.tolist() == [True, True]


def test_tis_truncates():
    train = torch.zeros(3)
    inf = -torch.log(torch.tensor([0.4, 2.5, 1.9]))
    w, capped = tis_weights(train, inf, cap=2.0)
    assert w.tolist() == pytest.approx([0.4, 2.0, 1.9], abs=1e-6)
    assert capped.tolist() == [False, True, False]
    assert set(WEIGHT_CORRECTIONS) >= {"icepop", "tis"}


# --------------------------------------------------------------------------- policy gradient


def test_pg_on_policy_hand_value_and_gradient():
    lp = _lp([[-1.0, -2.0], [-0.5, -3.0]])
    adv = torch.tensor([[1.0, 1.0], [-2.0, -2.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    w = torch.tensor([[1.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
    loss, metrics = pg_loss_on_policy(lp, adv, mask, num_tokens=4, weights_BT=w)
    # -(1·1·(-1) + 0.5·1·(-2) + 1·(-2)·(-0.5)) / 4 = -(-1 - 1 + 1) / 4 = 0.25
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    # REINFORCE with token-level normalisation: d/dlp = -w · A / num_tokens on valid tokens
    _assert_grad(lp, [[-0.25, -0.125], [0.5, 0.0]])
    assert float(metrics["advantage_sum"]) == pytest.approx(1 + 1 - 2)


def test_pg_clipped_hand_value_gradient_and_clip_fraction():
    ratios = [1.5, 0.5, 1.1, 0.7]
    lp = torch.log(torch.tensor([ratios], dtype=torch.float64)).requires_grad_()
    old = torch.zeros(1, 4, dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4)
    loss, metrics = pg_loss_clipped(lp, old, adv, mask, num_tokens=4, clip_low=0.2, clip_high=0.2)
    # tok1 ρ=1.5,A=+1: min(1.5, 1.2) = 1.2 (clipped)   tok2 ρ=0.5,A=+1: min(0.5, 0.8) = 0.5
    # tok3 ρ=1.1,A=-1: min(-1.1, -1.1) = -1.1          tok4 ρ=0.7,A=-1: min(-0.7, -0.8) = -0.8 (clipped)
    # L = -(1.2 + 0.5 - 1.1 - 0.8) / 4 = 0.05
    assert loss.item() == pytest.approx(0.05)
    loss.backward()
    # unclipped tokens: d(-ρA/4)/dlp = -ρA/4 -> tok2 -0.125, tok3 +0.275; clipped tokens: 0
    _assert_grad(lp, [[0.0, -0.125, 0.275, 0.0]])
    assert float(metrics["clip_frac_sum"]) == 2.0
    # clip-higher 0.28: tok1 becomes min(1.5, 1.28) = 1.28 -> L = -(1.28 + 0.5 - 1.1 - 0.8) / 4 = 0.03
    loss_hi, _ = pg_loss_clipped(lp, old, adv, mask, num_tokens=4, clip_high=0.28)
    assert loss_hi.item() == pytest.approx(0.03)


def test_clipped_equals_on_policy_at_ratio_one():
    g = torch.Generator().manual_seed(0)
    lp_a = (-torch.rand(3, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    lp_b = lp_a.detach().clone().requires_grad_()
    adv = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 5, generator=g) > 0.3
    on, _ = pg_loss_on_policy(lp_a, adv, mask, num_tokens=11.0)
    clip, metrics = pg_loss_clipped(lp_b, lp_b.detach(), adv, mask, num_tokens=11.0)
    # values differ (Σ A·lp vs Σ A·1) but the gradients -A/N are identical
    on.backward()
    clip.backward()
    torch.testing.assert_close(lp_a.grad, lp_b.grad)
    assert float(metrics["clip_frac_sum"]) == 0.0


# --------------------------------------------------------------------------- KL


def test_kl_k3_hand_values_and_gradient():
    lp = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.0, math.log(2.0), -math.log(2.0)], dtype=torch.float64)
    k3 = kl_k3(lp, ref)
    # d = ref - lp:  d=0 -> 0;  d=ln2 -> 2 - ln2 - 1 = 0.30685;  d=-ln2 -> 0.5 + ln2 - 1 = 0.19315
    assert k3.tolist() == pytest.approx([0.0, 1 - math.log(2), math.log(2) - 0.5])
    k3.sum().backward()
    # dk3/dlp = 1 - exp(d) -> [0, -1, 0.5]
    assert lp.grad.tolist() == pytest.approx([0.0, -1.0, 0.5])


def test_kl_penalty_coefficient_and_normaliser():
    lp = torch.zeros(1, 4, dtype=torch.float64)
    ref = torch.tensor([[math.log(2.0), -math.log(2.0), 0.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, metrics = kl_penalty(lp, ref, mask, num_tokens=3, coef=0.03)
    # k3 sum over valid = 0.30685 + 0.19315 + 0 = 0.5 -> 0.03 · 0.5 / 3 = 0.005
    assert loss.item() == pytest.approx(0.005)
    assert float(metrics["kl_sum"]) == pytest.approx(0.5)


# --------------------------------------------------------------------------- MOPD


def _mopd_batch():
    nan = float("nan")
    # row 0: 2 valid tokens (padding holds NaN, which must not leak); row 1: 4 valid tokens
    train = _lp([[-1.0, -2.0, nan, nan], [-1.0, -1.0, -1.0, -1.0]])
    teacher = torch.tensor([[-0.5, -3.0, nan, nan], [-0.5, -0.5, -0.5, -3.0]], dtype=torch.float64)
    # inference agrees except row 1 token 2: r = exp(-1 - (-4)) = e^3 = 20.1 -> dropped by IcePop
    inf = torch.tensor([[-1.0, -2.0, nan, nan], [-1.0, -1.0, -4.0, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    return train, inf, teacher, mask


def test_mopd_seq_mean_vs_token_mean_hand_values():
    # a = teacher - train: row0 [0.5, -1], row1 [0.5, 0.5, 0.5, -2];  w: row0 [1, 1], row1 [1, 1, 0, 1]
    # Σ_t w·a·lp: row0 = 0.5·(-1) + (-1)·(-2) = 1.5;  row1 = -0.5 - 0.5 + 0 + (-2)·(-1) = 1.0
    train, inf, teacher, mask = _mopd_batch()
    seq, metrics = mopd_loss(train, inf, teacher, mask, normalizer=2, reduction="seq_mean")
    # seq_mean: -(1.5/2 + 1.0/4) / 2 sequences = -0.5
    assert seq.item() == pytest.approx(-0.5)
    seq.backward()
    # d/dlp = -w·a / (|y| · 2): row0 -[0.5, -1]/4, row1 -[0.5, 0.5, 0, -2]/8
    _assert_grad(train, [[-0.125, 0.25, 0.0, 0.0], [-0.0625, -0.0625, 0.0, 0.25]])

    train, inf, teacher, mask = _mopd_batch()
    tok, _ = mopd_loss(train, inf, teacher, mask, normalizer=6, reduction="token_mean")
    # token_mean: -(1.5 + 1.0) / 6 tokens = -0.41667
    assert tok.item() == pytest.approx(-2.5 / 6)
    tok.backward()
    _assert_grad(train, [[-0.5 / 6, 1 / 6, 0.0, 0.0], [-0.5 / 6, -0.5 / 6, 0.0, 2 / 6]])

    # metrics: reverse KL Σ -a = -(0.5 - 1 + 0.5 + 0.5 + 0.5 - 2) = 1;  one drop;  Σ|train - inf| = 3
    assert {k: float(v) for k, v in metrics.items()} == pytest.approx(
        {
            "tokens": 6.0,
            "sequences": 2.0,
            "reverse_kl_sum": 1.0,
            "icepop_drop_frac_sum": 1.0,
            "abs_logprob_diff_sum": 3.0,
        }
    )


def test_mopd_reward_mixing():
    train, inf, teacher, mask = _mopd_batch()
    reward_adv = torch.ones(2, 4, dtype=torch.float64)
    loss, _ = mopd_loss(
        train, inf, teacher, mask, normalizer=6, reduction="token_mean", reward_adv_BT=reward_adv, reward_weight=0.5
    )
    # Σ w·(a + 0.5)·lp = 2.5 + 0.5 · Σ w·lp = 2.5 + 0.5 · (-1 - 2 - 1 - 1 - 1) = -0.5 -> L = 0.5 / 6
    assert loss.item() == pytest.approx(0.5 / 6)
    with pytest.raises(ValueError, match="reward_adv_BT"):
        mopd_loss(train, inf, teacher, mask, normalizer=6, reward_weight=0.5)
    with pytest.raises(ValueError, match="unknown reduction"):
        mopd_loss(train, inf, teacher, mask, normalizer=6, reduction="sum")


def test_mopd_nan_padding_gives_finite_gradients():
    train, inf, teacher, mask = _mopd_batch()
    loss, _ = mopd_loss(train, inf, teacher, mask, normalizer=2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(train.grad).all()


# --------------------------------------------------------------------------- global normaliser


def _random_batch(seed: int, b: int = 6, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 4
    other = lp - torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3
    teacher = -torch.rand(b, t, generator=g, dtype=torch.float64) * 4
    adv = torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[:, 0] = True
    return lp, other, teacher, adv, mask


LOSSES = {
    "nll": lambda lp, other, teacher, adv, mask, n_tok, n_seq: nll_loss(lp, mask, n_tok),
    "pg_on_policy": lambda lp, other, teacher, adv, mask, n_tok, n_seq: pg_loss_on_policy(
        lp, adv, mask, n_tok, weights_BT=icepop_weights(lp, other)[0]
    ),
    "pg_clipped": lambda lp, other, teacher, adv, mask, n_tok, n_seq: pg_loss_clipped(lp, other, adv, mask, n_tok),
    "kl": lambda lp, other, teacher, adv, mask, n_tok, n_seq: kl_penalty(lp, teacher, mask, n_tok, coef=0.03),
    "mopd_token": lambda lp, other, teacher, adv, mask, n_tok, n_seq: mopd_loss(
        lp, other, teacher, mask, normalizer=n_tok, reduction="token_mean"
    ),
    "mopd_seq": lambda lp, other, teacher, adv, mask, n_tok, n_seq: mopd_loss(
        lp, other, teacher, mask, normalizer=n_seq, reduction="seq_mean"
    ),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_microbatch_split_equals_full_batch(name: str):
    loss_fn = LOSSES[name]
    lp, other, teacher, adv, mask = _random_batch(seed=3)
    n_tok, n_seq = float(mask.sum()), float(mask.shape[0])

    full_lp = lp.clone().requires_grad_()
    full, full_metrics = loss_fn(full_lp, other, teacher, adv, mask, n_tok, n_seq)
    full.backward()

    split_lp = lp.clone().requires_grad_()
    total = torch.zeros((), dtype=torch.float64)
    parts = []
    for rows in (slice(0, 2), slice(2, 6)):  # uneven micro-batches, same global normaliser
        part, part_metrics = loss_fn(split_lp[rows], other[rows], teacher[rows], adv[rows], mask[rows], n_tok, n_seq)
        part.backward()
        total = total + part.detach()
        parts.append(part_metrics)

    torch.testing.assert_close(total, full.detach())
    torch.testing.assert_close(split_lp.grad, full_lp.grad)
    assert summarize_metrics(parts) == pytest.approx(summarize_metrics([full_metrics]))


def test_summarize_metrics_sums_and_derives_means():
    mb1 = {"tokens": torch.tensor(3.0), "clip_frac_sum": torch.tensor(1.0), "ratio_sum": 3.3}
    mb2 = {"tokens": torch.tensor(1.0), "clip_frac_sum": torch.tensor(1.0), "ratio_sum": 0.7}
    out = summarize_metrics([mb1, mb2])
    # 4 tokens, 2 clipped -> 0.5; Σρ = 4.0 -> mean ratio 1.0
    assert out == pytest.approx({"tokens": 4.0, "clip_frac_sum": 2.0, "clip_frac": 0.5, "ratio_sum": 4.0, "ratio": 1.0})
    assert set(REDUCTIONS) == {"token_mean", "seq_mean"}

"""MoE router load-balancing loss: hand-computed values, parity with transformers, gradients, tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import PreTrainedModel
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from cascade_rl.algo.moe import load_balancing_loss

LN3 = math.log(3.0)  # softmax([ln 3, 0]) = [3/4, 1/4]
LN7 = math.log(7.0)  # softmax([0, ln 7]) = [1/8, 7/8]


def _hand_logits() -> list[torch.Tensor]:
    # 2 layers x 3 tokens x 2 experts, top-1.
    #   layer 0: t0 [ln3, 0] -> p = (3/4, 1/4), expert 0
    #            t1 [0, ln3] -> p = (1/4, 3/4), expert 1
    #            t2 [ln3, 0] -> p = (3/4, 1/4), expert 0
    #   layer 1: t0 [0, ln3] -> p = (1/4, 3/4), expert 1
    #            t1 [0, ln3] -> p = (1/4, 3/4), expert 1
    #            t2 [0, ln7] -> p = (1/8, 7/8), expert 1
    layer0 = torch.tensor([[LN3, 0.0], [0.0, LN3], [LN3, 0.0]], dtype=torch.float64)
    layer1 = torch.tensor([[0.0, LN3], [0.0, LN3], [0.0, LN7]], dtype=torch.float64)
    return [layer0, layer1]


def test_hand_computed_top1() -> None:
    # Means over the 2 x 3 = 6 (layer, token) rows:
    #   f = tokens_per_expert = (#expert0, #expert1) / 6 = (2/6, 4/6) = (1/3, 2/3)
    #   P = router_prob_per_expert:
    #       P0 = (3/4 + 1/4 + 3/4 + 1/4 + 1/4 + 1/8) / 6 = (19/8) / 6 = 19/48
    #       P1 = (1/4 + 3/4 + 1/4 + 3/4 + 3/4 + 7/8) / 6 = (29/8) / 6 = 29/48
    #   loss = E * (f0 P0 + f1 P1) = 2 * (19/144 + 58/144) = 154/144 = 77/72
    expected = 2 * ((1 / 3) * (19 / 48) + (2 / 3) * (29 / 48))
    assert expected == pytest.approx(77 / 72, abs=1e-12)
    loss = load_balancing_loss(_hand_logits(), num_experts=2, top_k=1)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_hand_computed_top1_masked() -> None:
    # Token t1 is padding: 2 layers x 2 valid tokens = 4 rows.
    #   expert choices: layer 0 -> (0, 0), layer 1 -> (1, 1)   =>  f = (2/4, 2/4) = (1/2, 1/2)
    #   P0 = (3/4 + 3/4 + 1/4 + 1/8) / 4 = (15/8) / 4 = 15/32,  P1 = 1 - P0 = 17/32
    #   loss = 2 * (1/2 * 15/32 + 1/2 * 17/32) = 2 * (32/64) = 1  (balanced load: the loss is K = 1)
    valid_N = torch.tensor([True, False, True])
    loss = load_balancing_loss(_hand_logits(), num_experts=2, top_k=1, valid_N=valid_N)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)


def _random_logits(
    num_layers: int, num_tokens: int, num_experts: int, seed: int, requires_grad: bool = False
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(num_tokens, num_experts, generator=gen).mul_(2.0).requires_grad_(requires_grad)
        for _ in range(num_layers)
    ]


def _attention_mask_BT() -> torch.Tensor:
    # Row 0 right-padded, row 1 left-padded, row 2 full.
    return torch.tensor(
        [
            [1, 1, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
        ]
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_transformers(seed: int, masked: bool) -> None:
    attention_mask_BT = _attention_mask_BT()
    batch, time = attention_mask_BT.shape
    num_experts, top_k = 4, 2
    logits = _random_logits(num_layers=3, num_tokens=batch * time, num_experts=num_experts, seed=seed)
    # The router logits of a forward pass are [B*T, E], flattened row-major like attention_mask.reshape(-1).
    valid_N = attention_mask_BT.reshape(-1).bool() if masked else None
    ours = load_balancing_loss(logits, num_experts, top_k, valid_N=valid_N)
    # transformers ignores anything but a tuple (it returns 0 for a list).
    theirs = load_balancing_loss_func(
        tuple(logits), num_experts=num_experts, top_k=top_k, attention_mask=attention_mask_BT if masked else None
    )
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(float(theirs), abs=1e-6)


def test_gradient_matches_transformers() -> None:
    attention_mask_BT = _attention_mask_BT()
    ours_logits = _random_logits(3, attention_mask_BT.numel(), 4, seed=3, requires_grad=True)
    theirs_logits = [t.detach().clone().requires_grad_(True) for t in ours_logits]
    load_balancing_loss(ours_logits, 4, 2, valid_N=attention_mask_BT.reshape(-1).bool()).backward()
    load_balancing_loss_func(tuple(theirs_logits), 4, 2, attention_mask_BT).backward()
    for ours, theirs in zip(ours_logits, theirs_logits, strict=True):
        assert ours.grad is not None and theirs.grad is not None
        assert ours.grad.abs().sum() > 0
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=0)
    # Padding tokens get no gradient.
    pad_N = ~attention_mask_BT.reshape(-1).bool()
    for t in ours_logits:
        assert t.grad is not None and t.grad[pad_N].abs().max() == 0


def test_balanced_router_gives_top_k() -> None:
    # Let c_e = Σ_k f[k, e] (share of the top-K assignments on expert e, Σ_e c_e = K) and
    # loss = E Σ_e c_e P_e. Perfect balance c_e = K/E gives loss = E · (K/E) Σ_e P_e = K for any P.
    # When P tracks the load (P = c/K), loss = E/K Σ_e c_e² ≥ E/K · (Σ_e c_e)²/E = K by
    # Cauchy-Schwarz, with equality iff c is uniform: K is the minimum, reached by balanced routing.
    # Router: E = 4, K = 2, 4 tokens; token n puts logit 2 on experts n and n+1 (mod 4), 0 elsewhere.
    # Each expert is chosen by 2 of the 4 tokens (c_e = 1/2) and, by the cyclic symmetry, P_e = 1/4:
    #   loss = 4 · Σ_e (1/2)(1/4) = 4 · 4/8 = 2 = K.
    num_experts, top_k = 4, 2
    logits_NE = torch.zeros(4, num_experts)
    for n in range(4):
        logits_NE[n, n] = logits_NE[n, (n + 1) % num_experts] = 2.0
    loss = load_balancing_loss([logits_NE, logits_NE.roll(1, dims=0)], num_experts, top_k)
    assert loss.item() == pytest.approx(float(top_k), abs=1e-6)
    # Collapsed router: every token to experts 0 and 1 with p ≈ (1/2, 1/2, 0, 0): c = (1, 1, 0, 0),
    # P ≈ (1/2, 1/2, 0, 0), loss ≈ 4 · (1/2 + 1/2) = 4 = E > K.
    collapsed_NE = torch.tensor([[20.0, 20.0, 0.0, 0.0]]).expand(4, -1)
    assert load_balancing_loss([collapsed_NE], num_experts, top_k).item() == pytest.approx(4.0, abs=1e-6)


def test_gradient_flows_to_logits() -> None:
    logits = _random_logits(2, 7, 4, seed=4, requires_grad=True)
    loss = load_balancing_loss(logits, num_experts=4, top_k=2)
    loss.backward()
    for t in logits:
        assert t.grad is not None
        assert torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


def test_mask_all_true_equals_no_mask_and_all_padding_is_zero() -> None:
    logits = _random_logits(2, 6, 4, seed=5)
    plain = load_balancing_loss(logits, 4, 2)
    all_valid = load_balancing_loss(logits, 4, 2, valid_N=torch.ones(6, dtype=torch.bool))
    assert all_valid.item() == pytest.approx(plain.item(), abs=1e-7)
    none_valid = load_balancing_loss(logits, 4, 2, valid_N=torch.zeros(6, dtype=torch.bool))
    assert none_valid.item() == 0.0


def test_low_precision_logits_are_computed_in_fp32() -> None:
    logits = _random_logits(2, 6, 4, seed=6)
    loss_bf16 = load_balancing_loss([t.to(torch.bfloat16) for t in logits], 4, 2)
    assert loss_bf16.dtype == torch.float32
    loss_fp32 = load_balancing_loss([t.to(torch.bfloat16).float() for t in logits], 4, 2)
    assert loss_bf16.item() == pytest.approx(loss_fp32.item(), abs=1e-7)


@pytest.mark.parametrize(
    ("logits", "top_k", "valid_N", "match"),
    [
        ([], 1, None, "empty"),
        ([torch.zeros(3, 2)], 3, None, "top_k"),
        ([torch.zeros(3, 3)], 1, None, r"\[N=3, E=2\]"),
        ([torch.zeros(3, 2), torch.zeros(4, 2)], 1, None, r"router_logits\[1\]"),
        ([torch.zeros(3, 2)], 1, torch.ones(4, dtype=torch.bool), "valid_N"),
    ],
)
def test_rejects_bad_shapes(logits: list[torch.Tensor], top_k: int, valid_N: torch.Tensor | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_balancing_loss(logits, num_experts=2, top_k=top_k, valid_N=valid_N)


# --------------------------------------------------------------------------- tiny qwen3_moe


@pytest.fixture(scope="module")
def tiny_moe() -> PreTrainedModel:
    from cascade_rl.model.tiny import build_tiny
    from tests.conftest import small_corpus

    model, _ = build_tiny(
        "qwen3_moe",
        corpus=small_corpus(),
        vocab_size=400,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
    )
    return model


@pytest.mark.parametrize("masked", [False, True])
def test_tiny_qwen3_moe_aux_loss(tiny_moe: PreTrainedModel, masked: bool) -> None:
    config = tiny_moe.config
    input_ids_BT = torch.randint(0, config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    attention_mask_BT = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]) if masked else None

    # The base model returns one [B*T, E] logits tensor per MoE layer when asked to.
    decoder_out = tiny_moe.get_decoder()(
        input_ids=input_ids_BT, attention_mask=attention_mask_BT, output_router_logits=True
    )
    router_logits = decoder_out.router_logits
    assert isinstance(router_logits, tuple) and len(router_logits) == config.num_hidden_layers
    assert all(t.shape == (input_ids_BT.numel(), config.num_experts) and t.requires_grad for t in router_logits)

    full = tiny_moe(input_ids_BT, attention_mask=attention_mask_BT, labels=input_ids_BT, output_router_logits=True)
    valid_N = None if attention_mask_BT is None else attention_mask_BT.reshape(-1).bool()
    ours = load_balancing_loss(router_logits, config.num_experts, config.num_experts_per_tok, valid_N=valid_N)
    assert ours.item() == pytest.approx(full.aux_loss.item(), abs=1e-6)

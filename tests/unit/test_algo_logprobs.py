"""Chunked log-probs / entropy: hand values, chunked == unchunked, gradients, saved memory."""

from __future__ import annotations

import math

import pytest
import torch

from cascade_rl.algo.logprobs import chunked_lm_logprobs, selective_log_softmax, token_entropy


def _reference(logits_NV: torch.Tensor, targets_N: torch.Tensor, temperature: float = 1.0):
    ls_NV = torch.log_softmax(logits_NV / temperature, dim=-1)
    return ls_NV.gather(-1, targets_N[:, None]).squeeze(-1), -(ls_NV.exp() * ls_NV).sum(-1)


def test_hand_values():
    # logits [0, ln 3] -> softmax [1/4, 3/4]
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]], dtype=torch.float64)
    lp = selective_log_softmax(logits, torch.tensor([1, 0]))
    assert lp.tolist() == pytest.approx([math.log(0.75), math.log(0.25)], abs=1e-12)  # -0.28768, -1.38629
    int32_targets = selective_log_softmax(logits, torch.tensor([1, 0], dtype=torch.int32))
    torch.testing.assert_close(int32_targets, lp)
    # H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.34657 + 0.21576 = 0.56233
    assert token_entropy(logits).tolist() == pytest.approx([0.5623351446] * 2, abs=1e-9)
    # temperature 2: z = [0, ln3 / 2] -> p = [1, √3] / (1 + √3) -> p1 = 0.63397, ln p1 = -0.45580
    lp_t = selective_log_softmax(logits[:1], torch.tensor([1]), temperature=2.0)
    assert lp_t.item() == pytest.approx(math.log(math.sqrt(3) / (1 + math.sqrt(3))), abs=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
def test_selective_and_entropy_match_unchunked(chunk_size: int):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(23, 50, generator=g) * 3
    targets = torch.randint(0, 50, (23,), generator=g)
    ref_lp, ref_h = _reference(logits, targets, temperature=0.7)
    lp = selective_log_softmax(logits, targets, temperature=0.7, chunk_size=chunk_size)
    h = token_entropy(logits, temperature=0.7, chunk_size=chunk_size)
    torch.testing.assert_close(lp, ref_lp, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(h, ref_h, atol=1e-6, rtol=1e-6)
    # one chunk vs many chunks: the same per-row arithmetic
    torch.testing.assert_close(lp, selective_log_softmax(logits, targets, temperature=0.7, chunk_size=10_000))


def test_bf16_logits_are_upcast():
    logits = torch.randn(5, 40).to(torch.bfloat16)
    targets = torch.randint(0, 40, (5,))
    lp = selective_log_softmax(logits, targets, chunk_size=2)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, _reference(logits.float(), targets)[0], atol=1e-6, rtol=1e-6)


def test_ignore_index_gives_zero_and_no_gradient():
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([2, -100, 5, -100])
    lp = selective_log_softmax(logits, targets, chunk_size=3)
    assert lp[1].item() == 0.0 and lp[3].item() == 0.0
    lp.sum().backward()
    assert logits.grad is not None
    assert (logits.grad[1] == 0).all() and (logits.grad[3] == 0).all()
    # d log softmax(z)_y / dz = onehot(y) - softmax(z)
    expected = torch.nn.functional.one_hot(torch.tensor(2), 6) - torch.softmax(logits[0].detach(), -1)
    torch.testing.assert_close(logits.grad[0], expected.double())


def test_chunked_lm_logprobs_matches_full_projection_and_gradients():
    g = torch.Generator().manual_seed(1)
    n, h_dim, v = 37, 8, 29
    hidden = torch.randn(n, h_dim, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h_dim, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    lp, ent = chunked_lm_logprobs(hidden, weight, targets, chunk_size=5, temperature=1.3, with_entropy=True)
    assert ent is not None
    (lp.sum() + 0.5 * ent.sum()).backward()
    grads = (hidden.grad.clone(), weight.grad.clone())

    hidden.grad = weight.grad = None
    ref_lp, ref_h = _reference(hidden @ weight.T, targets, temperature=1.3)
    (ref_lp.sum() + 0.5 * ref_h.sum()).backward()
    torch.testing.assert_close(lp, ref_lp, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ent, ref_h, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grads[0], hidden.grad, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grads[1], weight.grad, atol=1e-10, rtol=1e-10)


def test_chunked_lm_logprobs_without_entropy_and_empty():
    lp, ent = chunked_lm_logprobs(torch.randn(3, 4), torch.randn(10, 4), torch.tensor([0, 1, 2]))
    assert ent is None and lp.shape == (3,)
    lp0, ent0 = chunked_lm_logprobs(
        torch.randn(0, 4), torch.randn(10, 4), torch.zeros(0, dtype=torch.long), with_entropy=True
    )
    assert lp0.shape == (0,) and ent0 is not None and ent0.shape == (0,)


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd keeps for backward while running fn()."""
    storages: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return sum(storages.values())


def test_backward_memory_does_not_hold_full_logits():
    n, h_dim, v, chunk = 512, 16, 2000, 64
    hidden = torch.randn(n, h_dim, requires_grad=True)
    weight = torch.randn(v, h_dim, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    inputs = sum(t.untyped_storage().nbytes() for t in (hidden, weight, targets))
    full_logits = n * v * 4
    chunked = _saved_bytes(lambda: chunked_lm_logprobs(hidden, weight, targets, chunk, with_entropy=True))
    naive = _saved_bytes(lambda: _reference(hidden @ weight.T, targets))
    # checkpointed chunks keep only their inputs; a naive log_softmax keeps several [N, V] tensors
    assert chunked - inputs < chunk * v * 4
    assert naive > full_logits

"""Token log-probabilities and entropies without materialising a full fp32 [N, V] tensor.

With a 131K vocabulary, fp32 log-softmax over a 64K-token response is 34 GB; trainers must
never build it. Every function here walks the rows in chunks of ``chunk_size``: the forward
pass holds one ``[chunk_size, V]`` fp32 block at a time, and when gradients are needed each
chunk runs under activation checkpointing, so backward recomputes the block instead of
keeping every chunk's fp32 copy alive. Peak extra memory is therefore
``O(chunk_size · V)`` in both passes, independent of N.

Conventions:
    * ``targets`` equal to ``ignore_index`` (the label convention of ``data.packing``) give
      log-prob 0 and no gradient; their entropy is still computed (callers mask it).
    * ``temperature`` divides the logits before the softmax, matching how the rollout engine
      samples, so trainer log-probs are comparable with the engine's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from cascade_rl.algo._tensor import at_least_fp32

DEFAULT_CHUNK_SIZE = 1024
IGNORE_INDEX = -100


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _run_chunked(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    rows: tuple[torch.Tensor, ...],
    shared: tuple[torch.Tensor, ...],
    n_rows: int,
    chunk_size: int,
) -> tuple[torch.Tensor, ...]:
    """Apply ``fn(*row_chunks, *shared)`` to consecutive row chunks and concatenate the outputs.

    Callers handle ``n_rows == 0`` themselves (there is no chunk to infer output arity from).
    Checkpointing is used only when autograd will record the graph: it is what keeps backward
    from holding every chunk's fp32 logits at once, and it costs nothing to skip it otherwise.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    use_ckpt = _needs_grad(*rows, *shared)
    outs: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, n_rows, chunk_size):
        chunk = tuple(r[start : start + chunk_size] for r in rows)
        if use_ckpt:
            outs.append(checkpoint(fn, *chunk, *shared, use_reentrant=False, preserve_rng_state=False))
        else:
            outs.append(fn(*chunk, *shared))
    return tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))


def _logprob_from_logits(z_cV: torch.Tensor, targets_c: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """log softmax(z)[target] = z[target] - logsumexp(z), with ignored targets mapped to 0."""
    targets_c = targets_c.long()  # gather needs int64; collators may hand over int32
    valid_c = targets_c != ignore_index
    safe_c = torch.where(valid_c, targets_c, torch.zeros_like(targets_c))
    picked_c = z_cV.gather(-1, safe_c.unsqueeze(-1)).squeeze(-1)
    lp_c = picked_c - torch.logsumexp(z_cV, dim=-1)
    return torch.where(valid_c, lp_c, torch.zeros_like(lp_c))


def _entropy_from_logits(z_cV: torch.Tensor) -> torch.Tensor:
    """H = -Σ p log p with log p = log_softmax(z).

    Not ``logsumexp(z) - Σ p z``: that difference of two large numbers loses ~1e-5 in fp32
    when the distribution is peaked; log_softmax subtracts the max first.
    """
    logp_cV = torch.log_softmax(z_cV, dim=-1)
    return -(logp_cV.exp() * logp_cV).sum(-1)


def selective_log_softmax(
    logits_NV: torch.Tensor,
    targets_N: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Log-probability of one target per row.

    ``logprobs[n] = z[n, y_n] - logsumexp_v z[n, v]`` with ``z = float32(logits) / temperature``.

    Args:
        logits_NV: [N, V] logits in any float dtype.
        targets_N: [N] int64 token ids; ``ignore_index`` rows give 0.
    Returns:
        [N] log-probs in fp32 (fp64 for fp64 input).
    """

    def fn(lg_cV: torch.Tensor, tg_c: torch.Tensor) -> tuple[torch.Tensor]:
        return (_logprob_from_logits(at_least_fp32(lg_cV) / temperature, tg_c, ignore_index),)

    if logits_NV.shape[0] == 0:
        return logits_NV.new_zeros((0,), dtype=torch.float32)
    (lp_N,) = _run_chunked(fn, (logits_NV, targets_N), (), logits_NV.shape[0], chunk_size)
    return lp_N


def token_entropy(
    logits_NV: torch.Tensor, *, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """Entropy of each row's distribution: ``H[n] = -Σ_v p[n,v] log p[n,v]``, p = softmax(z / T).

    Args:
        logits_NV: [N, V] logits.
    Returns:
        [N] entropies in nats, fp32 (fp64 for fp64 input).
    """

    def fn(lg_cV: torch.Tensor) -> tuple[torch.Tensor]:
        return (_entropy_from_logits(at_least_fp32(lg_cV) / temperature),)

    if logits_NV.shape[0] == 0:
        return logits_NV.new_zeros((0,), dtype=torch.float32)
    (h_N,) = _run_chunked(fn, (logits_NV,), (), logits_NV.shape[0], chunk_size)
    return h_N


def chunked_lm_logprobs(
    hidden_NH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_N: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``targets`` under the LM head, projecting ``chunk_size`` rows at a time.

    ``z = float32(hidden @ weight.T) / temperature``;
    ``logprobs[n] = z[n, y_n] - logsumexp(z[n])``; ``entropy[n] = -Σ softmax(z[n]) log softmax(z[n])``.

    The matmul runs in the inputs' dtype (bf16 on GPU) and only its [chunk, V] output is upcast,
    which is the precision trainers and inference engines both use. Gradients flow to
    ``hidden`` and ``weight``; backward recomputes each chunk's logits (checkpointing), so no
    [N, V] tensor is ever stored.

    Args:
        hidden_NH: [N, H] final hidden states (after the final norm).
        weight_VH: [V, H] LM-head weight (tied embedding or ``lm_head.weight``).
        targets_N: [N] next-token ids aligned with ``hidden`` rows; ``ignore_index`` gives 0.
    Returns:
        (logprobs [N] float32, entropy [N] float32 or None when ``with_entropy`` is False).
    """

    def fn(h_cH: torch.Tensor, tg_c: torch.Tensor, w_VH: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z_cV = at_least_fp32(h_cH @ w_VH.T) / temperature
        lp_c = _logprob_from_logits(z_cV, tg_c, ignore_index)
        if with_entropy:
            return lp_c, _entropy_from_logits(z_cV)
        return (lp_c,)

    if hidden_NH.shape[0] == 0:
        empty = hidden_NH.new_zeros((0,), dtype=torch.float32)
        return empty, (empty.clone() if with_entropy else None)
    outs = _run_chunked(fn, (hidden_NH, targets_N), (weight_VH,), hidden_NH.shape[0], chunk_size)
    return outs[0], (outs[1] if with_entropy else None)

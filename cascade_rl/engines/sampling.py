"""Next-token sampling for the local generator: temperature, top-k, top-p, seeded.

The log-prob returned with every token is that of the distribution actually sampled (tempered and
truncated), which is what the trainer's importance weights compare against.
"""

from __future__ import annotations

import torch

from cascade_rl.engines.base import SamplingParams


def sample_next(
    logits_BV: torch.Tensor, params: SamplingParams, point_B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; return it and its log-prob under the (tempered, truncated) distribution.

    ``point_B`` holds one uniform draw in [0, 1) per row (unused when greedy): the caller draws them, so a
    row's token does not depend on which other rows share the batch.
    """
    if params.temperature == 0:
        logp = torch.log_softmax(logits_BV, -1)
        token = logp.argmax(-1)
        return token, logp.gather(-1, token[:, None]).squeeze(-1)
    scores = logits_BV / params.temperature
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_scores, -1).cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        drop_sorted = (cumulative - torch.softmax(sorted_scores, -1)) >= params.top_p
        scores = scores.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    logp = torch.log_softmax(scores, -1)
    token = inverse_cdf_sample(logp.exp(), point_B)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


def inverse_cdf_sample(probs_BV: torch.Tensor, point_B: torch.Tensor) -> torch.Tensor:
    """One draw per row from ``probs`` (rows need not be normalised): the first token whose cumulative
    mass exceeds the row's uniform ``point_B`` (in [0, 1)) times the row's total.

    Same distribution as ``torch.multinomial(probs, 1)``, but one uniform per row instead of
    multinomial's per-call setup, which dominated small decode steps. Tokens of probability 0 are
    never drawn: a flat stretch of the CDF is never the first to exceed the point.
    """
    cdf = probs_BV.cumsum(-1)
    total = cdf[:, -1:].contiguous()
    point = point_B.to(cdf.dtype)[:, None] * total
    token = torch.searchsorted(cdf, point, right=True)
    # point can round up to the total itself, and searching past the end would pick a tail token of
    # probability 0; the first index that reaches the total is one where the CDF rises (mass > 0).
    last = torch.searchsorted(cdf, total, right=False)
    return torch.minimum(token, last).squeeze(-1)

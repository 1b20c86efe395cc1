"""Mixture-of-experts router losses as pure functions.

The trainer runs the decoder and the LM head itself instead of the HF ``*ForCausalLM.forward``, so
it must add the router load-balancing loss that forward would have added
(``loss += router_aux_loss_coef * aux_loss``, Switch Transformer / Mixtral / Qwen3-MoE) on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cascade_rl.algo._tensor import at_least_fp32


def load_balancing_loss(
    router_logits: Sequence[torch.Tensor],
    num_experts: int,
    top_k: int,
    valid_N: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Switch-Transformer auxiliary load-balancing loss of softmax top-k routers.

    Equal to transformers' ``load_balancing_loss_func`` (Mixtral, Qwen2/3-MoE). With ``L`` layers,
    ``N`` tokens per layer (the flattened ``B x T`` of one forward pass), ``E`` experts, ``K = top_k``,
    ``v_n`` = 1 on valid tokens (all 1 without ``valid_N``) and ``V = Σ_n v_n``::

        p[l,n,:]  = softmax(router_logits[l][n, :])                     [L, N, E]
        S[l,n,:]  = indices of the top-K of p[l,n,:]                    [L, N, K]
        f[k,e]    = Σ_{l,n} v_n · 1[S[l,n,k] = e] / (L · V)             [K, E]  tokens_per_expert
        P[e]      = Σ_{l,n} v_n · p[l,n,e]     / (L · V)                [E]     router_prob_per_expert
        loss      = E · Σ_{k,e} f[k,e] · P[e]

    i.e. the means run over every (layer, valid token) pair, as when the layers' logits are
    concatenated along the token axis. Only ``P`` carries a gradient (the top-k one-hot is piecewise
    constant). Under uniform routing (each expert gets ``K/E`` of the assignments) the loss is
    ``K`` whatever ``P`` is, and if ``P`` tracks the load (``P = Σ_k f[k,:] / K``) then by
    Cauchy-Schwarz ``loss = E/K · Σ_e (Σ_k f[k,e])² ≥ K``, with equality only for uniform routing.

    Args:
        router_logits: per-layer router logits, each ``[N, E]`` (pre-softmax), e.g. the
            ``router_logits`` a transformers MoE decoder returns with ``output_router_logits=True``.
        num_experts: ``E``; every layer's last axis must have this size.
        top_k: ``K``, experts selected per token (``config.num_experts_per_tok``).
        valid_N: optional ``[N]`` bool mask of real (non-padding) tokens, the same for every layer;
            it corresponds to transformers' ``attention_mask.reshape(-1)``. A pass with no valid token
            gives 0 (transformers gives NaN there).

    Returns:
        0-dim loss in fp32 (fp64 if the logits are fp64), differentiable w.r.t. the logits.
        Unscaled: the caller multiplies by ``router_aux_loss_coef``.
    """
    if len(router_logits) == 0:
        raise ValueError("router_logits is empty: the model returned no router logits")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
    num_tokens = router_logits[0].shape[0]
    for layer, logits_NE in enumerate(router_logits):
        if logits_NE.dim() != 2 or logits_NE.shape != (num_tokens, num_experts):
            raise ValueError(
                f"router_logits[{layer}] must be [N={num_tokens}, E={num_experts}], got {tuple(logits_NE.shape)}"
            )
    if valid_N is not None and valid_N.shape != (num_tokens,):
        raise ValueError(f"valid_N must be [N={num_tokens}], got {tuple(valid_N.shape)}")

    first_NE = router_logits[0]
    dtype = torch.promote_types(first_NE.dtype, torch.float32)
    device = first_NE.device
    weight_N = (
        torch.ones(num_tokens, dtype=dtype, device=device)
        if valid_N is None
        else valid_N.to(device=device, dtype=torch.bool).to(dtype)
    )
    weight_KN = weight_N.unsqueeze(0).expand(top_k, -1)

    # Accumulate sums layer by layer: peak memory is one layer's [N, E], not the [L·N, E] concatenation.
    count_KE = torch.zeros(top_k, num_experts, dtype=dtype, device=device)
    prob_sum_E = torch.zeros(num_experts, dtype=dtype, device=device)
    for logits_NE in router_logits:
        probs_NE = torch.softmax(at_least_fp32(logits_NE.to(device)), dim=-1)
        # Selected on the probabilities, as the routers do, so that near-ties resolve identically.
        selected_NK = torch.topk(probs_NE.detach(), top_k, dim=-1).indices
        # count_KE[k, e] += Σ_n v_n · 1[selected_NK[n, k] = e]; exact in fp32 up to 2^24 tokens.
        count_KE = count_KE.scatter_add(1, selected_NK.T, weight_KN)
        prob_sum_E = prob_sum_E + (probs_NE * weight_N.unsqueeze(-1)).sum(dim=0)

    # L · V, clamped so an all-padding pass gives 0 instead of 0/0 (no host sync to test for it).
    rows = (weight_N.sum() * len(router_logits)).clamp_min(1.0)
    tokens_per_expert_KE = count_KE / rows
    router_prob_per_expert_E = prob_sum_E / rows
    return num_experts * (tokens_per_expert_KE * router_prob_per_expert_E.unsqueeze(0)).sum()

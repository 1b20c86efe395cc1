"""Pure algorithm math: log-probs, advantages, losses. Tensors in, ``(loss, metrics)`` out.

Imports torch and the standard library only: no engines, configs, I/O or logging, so every
function here is testable on CPU with hand-computed values.
"""

from cascade_rl.algo.advantages import (
    ADVANTAGES,
    constant_group_mask,
    grpo_advantages,
    grpo_no_std_advantages,
    mopd_advantages,
    register_advantage,
)
from cascade_rl.algo.logprobs import chunked_lm_logprobs, selective_log_softmax, token_entropy
from cascade_rl.algo.losses import (
    REDUCTIONS,
    WEIGHT_CORRECTIONS,
    bradley_terry_loss,
    icepop_weights,
    kl_k3,
    kl_penalty,
    mopd_loss,
    nll_loss,
    pg_loss_clipped,
    pg_loss_on_policy,
    register_reduction,
    register_weight_correction,
    seq_mean,
    summarize_metrics,
    tis_weights,
    token_mean,
)

__all__ = [
    "ADVANTAGES",
    "REDUCTIONS",
    "WEIGHT_CORRECTIONS",
    "bradley_terry_loss",
    "chunked_lm_logprobs",
    "constant_group_mask",
    "grpo_advantages",
    "grpo_no_std_advantages",
    "icepop_weights",
    "kl_k3",
    "kl_penalty",
    "mopd_advantages",
    "mopd_loss",
    "nll_loss",
    "pg_loss_clipped",
    "pg_loss_on_policy",
    "register_advantage",
    "register_reduction",
    "register_weight_correction",
    "selective_log_softmax",
    "seq_mean",
    "summarize_metrics",
    "tis_weights",
    "token_entropy",
    "token_mean",
]

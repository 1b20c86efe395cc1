"""Small tensor helpers shared by the algorithm modules."""

from __future__ import annotations

import torch


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Promote bf16/fp16/int/bool to fp32 and keep fp32/fp64 as they are.

    Loss arithmetic on bf16 log-probs loses the small differences (train vs inference,
    teacher vs student) the algorithms depend on; fp64 is kept so tests can check exactly.
    """
    return x.to(torch.promote_types(x.dtype, torch.float32))

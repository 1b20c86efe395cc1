"""Verifiable rewards: spec-driven verifiers and a sandbox for model-written code.

``verify(text, spec)`` scores one raw completion; ``verify_batch`` scores many, optionally across
worker processes. Spec formats are documented in ``cascade_rl.rewards.base`` and in each verifier
module (math, mcqa, instruct, structured, tool_call, code).
"""

from cascade_rl.rewards.base import (
    RewardResult,
    SpecError,
    Verifier,
    check_spec,
    get_verifier,
    register,
    shutdown_pools,
    verify,
    verify_batch,
)

__all__ = [
    "RewardResult",
    "SpecError",
    "Verifier",
    "check_spec",
    "get_verifier",
    "register",
    "shutdown_pools",
    "verify",
    "verify_batch",
]

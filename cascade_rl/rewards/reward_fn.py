"""Rewards at group level: a ``RewardFn`` scores whole groups, seeing each prompt and all its rollouts.

This is the seam for rewards that are more than a per-completion check: a pairwise judge compares a
group's responses with one another, a reward model or an endpoint scores a batch at once, a process
pool verifies code. A reward function may hold such resources (``close`` releases them) and may be
asynchronous (``__call__`` returns an awaitable); ``score_groups`` runs either kind.

Reward functions are registered by name and built from a stage's ``reward`` block
(``{type: verifier, args: {...}}``) with a ``RewardContext``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cascade_rl.rewards.base import RewardResult, verify_batch
from cascade_rl.types import TrajectoryGroup

GroupRewards = list[list[RewardResult]]


class RewardFn(Protocol):
    def __call__(self, groups: Sequence[TrajectoryGroup]) -> GroupRewards | Awaitable[GroupRewards]:
        """One ``RewardResult`` per trajectory of every group, in order."""
        ...

    def close(self) -> None:
        """Release held resources (models, pools, connections)."""
        ...


@dataclass(frozen=True)
class RewardContext:
    """What a reward function may build on: reward worker processes, and the engines' backend (judges)."""

    workers: int = 0
    backend: Any = None


REWARD_FNS: dict[str, Callable[..., RewardFn]] = {}


def register_reward(name: str) -> Callable[[Callable[..., RewardFn]], Callable[..., RewardFn]]:
    def deco(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        if name in REWARD_FNS:
            raise ValueError(f"reward function {name!r} is already registered")
        REWARD_FNS[name] = factory
        return factory

    return deco


_BUILTIN = ("cascade_rl.rewards.judge", "cascade_rl.rewards.reward_model")


def reward_types() -> list[str]:
    """The registered reward function names (the built-in ones imported on first use)."""
    import importlib

    for module in _BUILTIN:
        importlib.import_module(module)
    return sorted(REWARD_FNS)


def build_reward(kind: str, context: RewardContext, **args: Any) -> RewardFn:
    reward_types()
    try:
        factory = REWARD_FNS[kind]
    except KeyError:
        raise ValueError(f"unknown reward type {kind!r}; registered: {', '.join(sorted(REWARD_FNS))}") from None
    return factory(context, **args)


def score_groups(fn: RewardFn, groups: Sequence[TrajectoryGroup]) -> GroupRewards:
    """Run a (synchronous or asynchronous) reward function and check it scored every trajectory."""
    result = fn(groups)
    if inspect.isawaitable(result):
        result = asyncio.run(_awaited(result))
    assert isinstance(result, list)
    shape = [len(g.trajectories) for g in groups]
    if [len(r) for r in result] != shape:
        raise ValueError(f"reward function returned {[len(r) for r in result]} rewards per group, expected {shape}")
    return result


async def _awaited(result: Awaitable[GroupRewards]) -> GroupRewards:
    return await result


@register_reward("verifier")
class VerifierReward:
    """The prompt's verifier spec judges each trajectory's final answer (``rewards.verify``).

    A truncated trajectory scores 0 unless its spec sets ``score_truncated``. With ``workers > 0``
    verification runs in that many processes (model-written code in its sandbox).
    """

    def __init__(self, context: RewardContext | None = None, *, workers: int | None = None) -> None:
        self.workers = (context.workers if context else 0) if workers is None else workers

    def __call__(self, groups: Sequence[TrajectoryGroup]) -> GroupRewards:
        out: GroupRewards = [[] for _ in groups]
        for thinking in (False, True):  # verify_batch parses every text of a call in one mode
            members = [i for i, g in enumerate(groups) if g.thinking == thinking]
            flat = [(i, t) for i in members for t in groups[i].trajectories]
            if not flat:
                continue
            results = verify_batch(
                [t.final_text for _, t in flat],
                [groups[i].prompt.spec for i, _ in flat],
                [t.truncated for _, t in flat],
                workers=self.workers,
                thinking=thinking,
            )
            for (i, _), result in zip(flat, results, strict=True):
                out[i].append(result)
        return out

    def close(self) -> None:
        """The worker pools are shared process-wide (``rewards.shutdown_pools``)."""

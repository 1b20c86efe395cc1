"""Scalar reward models (``type: reward_model`` rewards): a trained Bradley-Terry model scores each rollout.

Recipe block (``stage:NAME`` is the folder the reward-model stage NAME wrote)::

    reward:
      type: reward_model
      args: {model: "stage:reward_model", batch_size: 32}

Each trajectory is scored on its prompt plus its final answer: ``parse_completion(final_text,
thinking=group.thinking).content`` as the assistant turn, so the model never sees a think block or
special tokens (earlier turns of a multi-turn episode are not shown either). The reward is
``sigmoid(score)`` in [0, 1]; ``info["rm_score"]`` holds the raw score. A truncated trajectory scores 0
(``info["reason"] == "truncated"``), as it does under a verifier.

The model is loaded through the stage's backend as a ``reward_model`` with a placeholder optimizer
(``OptimConfig()``, one step; AdamW allocates nothing before its first step) and then frozen: no
gradients, the weights in the backend's compute precision (bf16 on a GPU; the score head stays fp32).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cascade_rl.chat import parse_completion
from cascade_rl.rewards.base import RewardResult
from cascade_rl.rewards.reward_fn import RewardContext, register_reward
from cascade_rl.types import TrajectoryGroup


def sigmoid(x: float) -> float:
    """Numerically safe logistic function (no overflow for large |x|)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def check_reward_model_folder(model: str) -> None:
    """Refuse a folder that is not a one-label sequence classifier: a causal LM would get a fresh, random
    score head (random rewards, no error)."""
    config_file = Path(model).expanduser() / "config.json"
    if not config_file.is_file():
        raise ValueError(f"reward model {model!r}: no model folder there (config.json missing)")
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or []
    labels = len(config.get("id2label") or {"0": ""})
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures) or labels != 1:
        raise ValueError(
            f"reward model {model!r} is not a one-label AutoModelForSequenceClassification folder (architectures "
            f"{architectures}, {labels} labels); train one with a reward_model stage and name it stage:NAME"
        )


@register_reward("reward_model")
class RewardModelReward:
    """See the module docstring.

    Args:
        model: a reward-model folder (``AutoModelForSequenceClassification``, one label).
        batch_size: conversations per forward pass.
        max_length: tokens per conversation at most (longer: the start of the prompt is cut).
        scorer: an already-built reward model (tests, embedding); ``model`` is then a label.
    """

    def __init__(
        self,
        context: RewardContext | None = None,
        *,
        model: str,
        batch_size: int = 32,
        max_length: int = 1024,
        scorer: Any = None,
    ) -> None:
        from cascade_rl.config import OptimConfig

        if batch_size < 1:
            raise ValueError(f"reward_model batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size = str(model), batch_size
        backend = context.backend if context is not None else None
        if scorer is None and backend is None:
            raise ValueError(f"reward model {self.model!r} needs a backend to load it (RewardContext.backend)")
        if scorer is None:
            check_reward_model_folder(self.model)
        self._rm = (
            scorer if scorer is not None else backend.reward_model(self.model, OptimConfig(), 1, max_length=max_length)
        )
        self._rm.freeze()

    def __call__(self, groups: Sequence[TrajectoryGroup]) -> list[list[RewardResult]]:
        if self._rm is None:
            raise RuntimeError("the reward model was closed")
        rows: list[list[int]] = []
        where: list[tuple[int, int]] = []
        out: list[list[RewardResult | None]] = [[None] * len(g.trajectories) for g in groups]
        for g, group in enumerate(groups):
            for t, trajectory in enumerate(group.trajectories):
                if trajectory.truncated:
                    out[g][t] = RewardResult(0.0, {"reason": "truncated"})
                    continue
                answer = parse_completion(trajectory.final_text, thinking=group.thinking).content
                rows.append(self._rm.encode(group.prompt.messages, answer, group.prompt.tools))
                where.append((g, t))
        scores = self._rm.scores(rows, batch_size=self.batch_size) if rows else []
        for (g, t), score in zip(where, scores, strict=True):
            out[g][t] = RewardResult(sigmoid(score), {"rm_score": score})
        return [[r for r in row if r is not None] for row in out]

    def close(self) -> None:
        """Drop the reward model so its memory can be freed; it cannot be called again."""
        self._rm = None

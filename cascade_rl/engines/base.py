"""Engine protocols: the RL loop talks to a Generator, a Policy and Scorers, never to a framework.

The same loop runs in-process on a laptop CPU (``engines.local``) and, with other implementations
of these protocols, on a cluster (vLLM generators, FSDP2 policies, Ray actors).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from cascade_rl.types import Completion


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # samples per prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0


@dataclass
class TrainSequence:
    """One sequence to train on.

    ``mask[j] = 1`` marks token ``j`` as trained/scored (it is predicted from tokens ``< j``);
    ``values[name][j]`` is a per-token quantity aligned with ``tokens`` (advantages, inference
    log-probs, teacher log-probs, ...). Position 0 is never trained.

    ``group`` marks sequences that start with the same tokens (the rollouts of one prompt): the
    trainer may then run that shared prefix once for the whole group. It is only a hint, so a wrong
    one costs speed, never correctness; ``None`` (SFT samples) means no sharing.
    """

    tokens: list[int]
    mask: list[int]
    values: dict[str, list[float]] = field(default_factory=dict)
    group: int | None = None


@dataclass
class TrainBatch:
    """The sequences of one optimizer step (or a slice of it) and the step's global normalisers."""

    sequences: list[TrainSequence]
    num_tokens: float  # trained tokens of the whole optimizer step
    num_sequences: float  # sequences of the whole optimizer step


# loss_fn(logprobs_BT, tensors_BT) -> (loss, metrics); one row per sequence, columns aligned with
# tokens; tensors_BT holds "mask" and every name in TrainSequence.values.
LossFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor | float]]]


class Generator(Protocol):
    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions for every prompt (token ids), in prompt order."""
        ...

    def sync(self, policy: Policy) -> None:
        """Load the policy's current weights."""
        ...


class Scorer(Protocol):
    temperature: float  # logits are divided by it: score at the temperature the tokens were sampled at

    def logprobs(self, sequences: Sequence[TrainSequence]) -> list[list[float]]:
        """log p(token_j | tokens_<j) for every token (0.0 at j = 0 and where ``mask`` is 0)."""
        ...


class Policy(Scorer, Protocol):
    def forward_backward(self, batch: TrainBatch, loss_fn: LossFn) -> dict[str, float]: ...

    def optim_step(self) -> dict[str, float]: ...

    def state_dict(self) -> Mapping[str, torch.Tensor]: ...

    def save(self, path: Path) -> None: ...

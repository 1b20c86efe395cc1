"""Engine protocols: the loops talk to a Generator, a Policy and Scorers, never to a framework.

The same loops run in-process on a laptop CPU (``engines.local``) and, with other implementations
of these protocols, on a cluster (vLLM generators, FSDP2 policies, Ray actors). Everything that
crosses these methods is plain data (token ids, floats, names), so a remote engine never has to
pickle a closure: a loss is chosen by its registered name (``algo.step_losses``) and its per-token
inputs travel in the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
    """One sequence to train on or score.

    ``mask[j] = 1`` marks token ``j`` as trained/scored (it is predicted from tokens ``< j``);
    ``values[name][j]`` is a per-token quantity aligned with ``tokens`` (advantages, behaviour
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
    """The sequences of one optimizer step (or a slice of it) and the step's global normalisers.

    ``num_tokens`` / ``num_sequences`` count the trained tokens / sequences of the WHOLE optimizer
    step (all slices, all data-parallel ranks): losses divide by them, so splitting a step into
    micro-batches or ranks never changes the objective. ``temperature`` divides the logits, as the
    sampler's did.
    """

    sequences: list[TrainSequence]
    num_tokens: float
    num_sequences: float
    temperature: float = 1.0


class Generator(Protocol):
    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions for every prompt (token ids), in prompt order."""
        ...

    def sync(self, policy: Policy, version: int) -> None:
        """Load the policy's current weights; completions sampled from now on carry ``version``."""
        ...


class Scorer(Protocol):
    """Token log-probs under a frozen model (MOPD teachers, the KL reference)."""

    def logprobs(self, sequences: Sequence[TrainSequence], temperature: float = 1.0) -> list[list[float]]:
        """log p(token_j | tokens_<j) at ``temperature`` for every token (0.0 at j = 0 and where ``mask`` is 0)."""
        ...


class Policy(Scorer, Protocol):
    """The trained model: it owns its whole training state (weights, optimizer, schedule, RNG)."""

    def forward_backward(
        self, batch: TrainBatch, loss: str, config: Mapping[str, Any] | None = None
    ) -> dict[str, float]:
        """Accumulate gradients of the registered loss ``loss`` (``algo.step_losses``) over the batch."""
        ...

    def optim_step(self) -> dict[str, float]:
        """Apply the accumulated gradients and clear them. With none, only the schedule advances
        (``skipped_update``); a non-finite gradient norm is not applied either (``nonfinite_update``)."""
        ...

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight under its Hugging Face name, on CPU (what a separate generator loads on ``sync``)."""
        ...

    def save(self, path: Path) -> None:
        """An ordinary Hugging Face folder of the current weights (what later stages and users load)."""
        ...

    def save_state(self, path: Path) -> None:
        """Everything an exact resume needs, written into the (new, empty) folder ``path``."""
        ...

    def load_state(self, path: Path) -> None:
        """Restore what ``save_state`` wrote; the next step equals the one an uninterrupted run takes."""
        ...

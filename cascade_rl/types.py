"""Frozen data contracts shared across the package.

Tensor-free on purpose: these cross process boundaries (reward workers, Ray actors) and are
written to JSONL, so they hold plain Python values only.

The RL step is split at ``Trajectory`` / ``TrajectoryGroup``: the rollout half (environments,
generators, reward functions) produces groups; the learner half (objectives, policies) consumes
them as token ids, masks and per-token numbers, and never decodes text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ToolCall:
    """One function call made by the assistant; ``arguments`` is always a mapping."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "arguments": dict(self.arguments)}}


@dataclass(frozen=True)
class Prompt:
    """An RL / evaluation prompt: the conversation so far plus how to judge the answer."""

    messages: tuple[dict[str, Any], ...]
    spec: dict[str, Any]
    domain: str
    tools: tuple[dict[str, Any], ...] | None = None
    uid: str = ""
    env: str = "single_turn"  # the registered environment an episode of this prompt runs in (``envs``)


@dataclass(frozen=True)
class Completion:
    """What a generator returns for one sample.

    ``logprobs`` holds log pi_inf(token) of every sampled token, under the distribution the
    token was actually drawn from (after temperature); ``policy_version`` is the version of the
    weights that sampled it (the one its generator was last synced to).
    """

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    text: str = ""
    policy_version: int = 0


@dataclass(frozen=True)
class Trajectory:
    """One episode, token in / token out: everything the model saw and wrote, in order.

    ``loss_mask[j]`` is 1 exactly on tokens the model wrote (template, prompt and tool-response
    tokens are 0); ``behaviour_logprobs[j]`` is the sampling engine's log-prob of a model-written
    token (0 elsewhere). ``turns`` holds ``[start, end)`` of each model turn in ``tokens``, and
    ``texts`` the decoded text of each turn (for rewards and logs only; the learner never reads it).
    ``truncated``: the episode ended on a budget (turn tokens, turns, context) rather than on its own.
    """

    tokens: tuple[int, ...]
    loss_mask: tuple[int, ...]
    behaviour_logprobs: tuple[float, ...]
    turns: tuple[tuple[int, int], ...]
    texts: tuple[str, ...]
    truncated: bool
    domain: str
    policy_version: int = 0
    reward: float = 0.0
    info: Mapping[str, Any] = field(default_factory=dict)
    failed: bool = False  # the environment broke (infrastructure): out of the loss and the group statistics

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if len(self.loss_mask) != n or len(self.behaviour_logprobs) != n:
            raise ValueError(
                f"trajectory: {n} tokens but {len(self.loss_mask)} mask and "
                f"{len(self.behaviour_logprobs)} log-prob entries"
            )
        if len(self.texts) != len(self.turns):
            raise ValueError(f"trajectory: {len(self.turns)} turns but {len(self.texts)} turn texts")

    @property
    def model_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def final_text(self) -> str:
        """The last model turn's text: what a single-answer verifier judges."""
        return self.texts[-1] if self.texts else ""


@dataclass(frozen=True)
class TrajectoryGroup:
    """One prompt's trajectories (GRPO's group); ``index`` identifies it within a step."""

    prompt: Prompt
    trajectories: tuple[Trajectory, ...]
    index: int = 0
    thinking: bool = False  # the generation prompt opened a <think> block (how the text is parsed)

    @property
    def rewards(self) -> list[float]:
        return [t.reward for t in self.trajectories]

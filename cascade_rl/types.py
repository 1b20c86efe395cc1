"""Frozen data contracts shared across the package.

Tensor-free on purpose: these cross process boundaries (reward workers, Ray actors) and are
written to JSONL, so they hold plain Python values only.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Completion:
    """What a generator returns for one sample.

    ``logprobs`` holds log pi_inf(token) of every sampled token, under the distribution the
    token was actually drawn from (after temperature / top-p / top-k).
    """

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    text: str = ""

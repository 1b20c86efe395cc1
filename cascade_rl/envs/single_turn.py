"""``single_turn``: the prompt's conversation, one model turn, done; the stage's reward function scores it."""

from __future__ import annotations

from typing import Any

from cascade_rl.chat import ParsedCompletion
from cascade_rl.envs.base import StepResult, register_env
from cascade_rl.types import Prompt


@register_env("single_turn")
class SingleTurnEnv:
    def __init__(self, prompt: Prompt) -> None:
        self.prompt = prompt

    def reset(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self.prompt.messages]

    def step(self, turn: ParsedCompletion) -> StepResult:
        return StepResult(done=True)

    def close(self) -> None:
        pass

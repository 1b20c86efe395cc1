"""The ``Env`` protocol and its registry.

An environment is stepped on the model's turns: ``reset`` gives the conversation the first turn is
generated from, ``step`` takes each parsed assistant turn and either ends the episode or answers it
(tool responses) so that the model takes another turn. A single-turn task is the one-step case
(``single_turn``). Environments are registered by name and built once per episode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cascade_rl.chat import ParsedCompletion
from cascade_rl.types import Prompt


@dataclass(frozen=True)
class StepResult:
    """After a model turn: the episode is ``done``, or ``messages`` (tool responses) come back to the model.

    ``reward``: a reward the environment itself assigns at the end (None: the stage's reward function
    scores the episode); ``info``: JSON-able detail kept with the trajectory.
    """

    done: bool
    messages: tuple[dict[str, Any], ...] = ()
    reward: float | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


class Env(Protocol):
    def reset(self) -> list[dict[str, Any]]:
        """The conversation (messages) the first model turn is generated from."""
        ...

    def step(self, turn: ParsedCompletion) -> StepResult: ...

    def close(self) -> None:
        """Release what the episode holds (interpreter sessions, scratch folders)."""
        ...


EnvFactory = Callable[..., Env]
ENVS: dict[str, EnvFactory] = {}


def register_env(name: str) -> Callable[[EnvFactory], EnvFactory]:
    def deco(factory: EnvFactory) -> EnvFactory:
        if name in ENVS:
            raise ValueError(f"environment {name!r} is already registered")
        ENVS[name] = factory
        return factory

    return deco


def env_class(name: str) -> EnvFactory:
    """The factory registered as ``name`` (the built-in environments are registered on first use)."""
    import cascade_rl.envs.python_tool
    import cascade_rl.envs.repo
    import cascade_rl.envs.single_turn
    import cascade_rl.envs.workplace  # noqa: F401

    try:
        return ENVS[name]
    except KeyError:
        raise ValueError(f"unknown environment {name!r}; registered: {', '.join(sorted(ENVS))}") from None


def make_env(name: str, prompt: Prompt, **args: Any) -> Env:
    """A fresh episode of environment ``name`` on ``prompt``."""
    return env_class(name)(prompt, **args)

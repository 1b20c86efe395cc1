"""Environments whose model turns may call tools: each call is executed and answered as the model sees it.

A turn with tool calls gets one tool response per call (in order); a turn without tool calls ends
the episode (its text is the final answer). Whatever goes wrong with a call the model made (an
unknown tool, arguments the schema refuses, a tool that raises ``ToolError``, a time-out) becomes an
error response the model reads, and the episode goes on; an exception of any other kind is a failure
of the environment itself (infrastructure), which ends the episode as failed, never the batch.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from cascade_rl.chat import ParsedCompletion
from cascade_rl.envs.base import StepResult
from cascade_rl.types import Prompt, ToolCall


class ToolError(Exception):
    """A tool call that cannot be carried out; the message is what the model reads."""


@dataclass(frozen=True)
class Tool:
    """An OpenAI function schema and the function that runs it (keyword arguments, returns text or JSON-able)."""

    schema: Mapping[str, Any]
    fn: Callable[..., Any]

    @property
    def name(self) -> str:
        return str(self.schema["function"]["name"])

    @functools.cached_property
    def validator(self) -> Any:
        """The arguments' JSON-schema validator, built once (re-checking the schema on every call costs more)."""
        parameters = self.schema["function"]["parameters"]
        return jsonschema.validators.validator_for(parameters)(parameters)

    def check(self, arguments: Mapping[str, Any]) -> None:
        """Raise ``ToolError`` for arguments the schema or the function's signature refuses."""
        error = jsonschema.exceptions.best_match(self.validator.iter_errors(dict(arguments)))
        if error is not None:
            raise ToolError(f"bad arguments for {self.name}: {error.message}")
        try:
            inspect.signature(self.fn).bind(**arguments)
        except TypeError as exc:
            raise ToolError(f"bad arguments for {self.name}: {exc}") from None


def tool_schema(
    name: str, description: str, properties: Mapping[str, Mapping[str, Any]], required: Sequence[str]
) -> dict:
    """The OpenAI shape of a function tool."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": dict(properties), "required": list(required)},
        },
    }


def _response_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


class ToolEnv:
    """Base of tool-using environments: executes calls, counts them and their errors.

    Subclasses give the tools and may override ``finish`` (the reward of the final answer; None
    leaves it to the stage's reward function) and ``close`` (release held resources).
    """

    def __init__(self, prompt: Prompt, tools: Sequence[Tool]) -> None:
        self.prompt = prompt
        self.tools = {t.name: t for t in tools}
        self.calls = self.errors = 0

    def reset(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self.prompt.messages]

    def step(self, turn: ParsedCompletion) -> StepResult:
        if not turn.tool_calls:
            return self.finish(turn)
        messages = tuple({"role": "tool", "content": self.run(call)} for call in turn.tool_calls)
        return StepResult(done=False, messages=messages, info=self.counts())

    def run(self, call: ToolCall) -> str:
        """One call's response text; the model's mistakes come back as ``error: ...`` responses."""
        self.calls += 1
        tool = self.tools.get(call.name)
        try:
            if tool is None:
                raise ToolError(f"unknown tool {call.name!r}; the tools are: {', '.join(sorted(self.tools))}")
            tool.check(call.arguments)
            return _response_text(tool.fn(**call.arguments))
        except ToolError as exc:
            self.errors += 1
            return f"error: {exc}"

    def finish(self, turn: ParsedCompletion) -> StepResult:
        """The episode's end on a turn without tool calls; the reward is the stage's reward function's."""
        return StepResult(done=True, info=self.counts())

    def counts(self) -> dict[str, int]:
        return {"tool_calls": self.calls, "tool_errors": self.errors}

    def close(self) -> None:
        pass

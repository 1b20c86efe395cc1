"""The contract every procedural task domain implements, plus helpers shared by the domains.

A ``Problem`` is one self-contained prompt with its verifier spec and a reference answer. The
reference answer (``answer`` + ``tool_calls``) always scores 1 under ``cascade_rl.rewards.verify``
with ``spec``; ``reasoning`` is a short trace used as ``reasoning_content`` in thinking-mode SFT.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cascade_rl.types import Prompt

IM_END = "<|im_end|>"
EMPTY_THINK = "<think></think>"
THINK_OPEN = "<think>\n"

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Problem:
    """One generated prompt with its verifier spec and reference solution."""

    domain: str
    uid: str
    messages: tuple[dict[str, Any], ...]
    spec: dict[str, Any]
    answer: str
    reasoning: str
    tools: tuple[dict[str, Any], ...] | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()
    env: str = "single_turn"
    # multi-turn problems: the reference episode after the prompt (assistant turns with tool calls,
    # tool responses, the final answer); an assistant turn's "reasoning" is its think block in thinking mode
    trace: tuple[dict[str, Any], ...] = ()
    # (domain, text) that decide the split, when they are not this problem's own: a variant of another
    # domain's problem splits with it, so that problem is never trained in one domain and tested in the other
    split_key: tuple[str, str] | None = None

    @property
    def user_text(self) -> str:
        """The last user message: the text that decides the train/eval split."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    def assistant_message(self, thinking: bool) -> dict[str, Any]:
        """The reference assistant turn in OpenAI shape."""
        message: dict[str, Any] = {"role": "assistant", "content": self.answer}
        if thinking:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [
                {"type": "function", "function": {"name": c["name"], "arguments": dict(c["arguments"])}}
                for c in self.tool_calls
            ]
        return message

    def sft_record(self, thinking: bool) -> dict[str, Any]:
        """A chat-format SFT sample: the prompt messages followed by the reference assistant turn(s)."""
        reply = [_traced(m, thinking) for m in self.trace] if self.trace else [self.assistant_message(thinking)]
        messages = [dict(m) for m in self.messages] + reply
        tools = [json.loads(json.dumps(t)) for t in self.tools] if self.tools else None
        return {"messages": messages, "tools": tools, "domain": self.domain}

    def to_prompt(self) -> Prompt:
        """The RL / evaluation view of this problem."""
        return Prompt(
            messages=self.messages, spec=self.spec, domain=self.domain, tools=self.tools, uid=self.uid, env=self.env
        )


def _traced(message: dict[str, Any], thinking: bool) -> dict[str, Any]:
    """A trace message as the chat format takes it: an assistant turn's reasoning only in thinking mode."""
    out = {k: copy.deepcopy(v) for k, v in message.items() if k != "reasoning"}
    if thinking and message.get("role") == "assistant" and message.get("reasoning"):
        out["reasoning_content"] = message["reasoning"]
    return out


@runtime_checkable
class Task(Protocol):
    """A procedural problem generator for one domain."""

    name: str

    def generate(self, rng: random.Random, difficulty: int) -> Problem: ...


def stable_hash(text: str) -> int:
    """A process-independent hash (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def make_problem(
    domain: str,
    difficulty: int,
    *,
    user: str,
    spec: dict[str, Any],
    answer: str,
    reasoning: str,
    system: str | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
    tool_calls: Sequence[dict[str, Any]] = (),
) -> Problem:
    """Build a ``Problem`` whose uid is derived from everything the model sees."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    canonical = json.dumps([messages, list(tools or [])], sort_keys=True)
    uid = f"{domain}-{difficulty}-{stable_hash(canonical):016x}"
    return Problem(
        domain=domain,
        uid=uid,
        messages=tuple(messages),
        spec=spec,
        answer=answer,
        reasoning=reasoning,
        tools=tuple(tools) if tools else None,
        tool_calls=tuple({"name": c["name"], "arguments": dict(c["arguments"])} for c in tool_calls),
    )


def argument_text(value: Any) -> str:
    """How the chat template writes a tool-call argument: JSON for dicts / lists, str() otherwise."""
    if isinstance(value, Mapping) or (isinstance(value, Sequence) and not isinstance(value, str)):
        return json.dumps(value, ensure_ascii=False)
    return value if isinstance(value, str) else str(value)


def render_tool_calls(calls: Sequence[Mapping[str, Any]]) -> str:
    """Qwen3-Coder XML for a list of ``{"name", "arguments"}`` calls, one block per call."""
    out = []
    for call in calls:
        out.append(f"<tool_call>\n<function={call['name']}>\n")
        for key, value in call["arguments"].items():
            out.append(f"<parameter={key}>\n{argument_text(value)}\n</parameter>\n")
        out.append("</function>\n</tool_call>\n")
    return "".join(out)


def assistant_text(problem: Problem, thinking: bool) -> str:
    """The reference completion exactly as the model emits it after the generation prompt.

    Mirrors the chat template: the assistant body (``<think>`` block + content) is stripped,
    tool calls follow on a new line, and the turn ends with ``<|im_end|>``. The generation
    prompt already holds ``<think>\\n`` (thinking) or ``<think></think>`` (non-thinking), so
    that prefix is removed from the body.
    """
    if thinking:
        body = f"{THINK_OPEN}{problem.reasoning}\n</think>\n{problem.answer}".strip()
        prefix = THINK_OPEN
    else:
        body = f"{EMPTY_THINK}{problem.answer}".strip()
        prefix = EMPTY_THINK
    text = body[len(prefix) :]
    if problem.tool_calls:
        text += "\n" + render_tool_calls(problem.tool_calls)
    return text + IM_END


def number_word(n: int) -> str:
    """Small counts are spelled out in prompts ("three times"); larger ones stay digits."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def pick(rng: random.Random, options: Sequence[Any], k: int) -> list[Any]:
    """k distinct items in random order."""
    return rng.sample(list(options), k)

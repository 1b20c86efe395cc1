"""Completion text -> assistant message, tolerant of whatever a model emits.

``parse_completion`` never raises on model output: anything it cannot make sense of is kept as
plain content and reported through the ``malformed_*`` / ``unclosed_think`` / ``truncated`` flags,
so verifiers and metrics can count failure modes instead of crashing a rollout worker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cascade_rl.types import ToolCall

IM_END = "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_FUNCTION_RE = re.compile(r"^\s*<function=([^>\n]+)>(.*)</function>\s*$", re.S)
_PARAM_RE = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)
_NUMBER_RE = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_LITERALS: dict[str, Any] = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}


@dataclass(frozen=True)
class ParsedCompletion:
    """An assistant turn recovered from raw completion text."""

    content: str
    reasoning_content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    unclosed_think: bool = False  # <think> opened (or prompt opened it) and never closed
    malformed_tool_call: bool = False  # a <tool_call> block that could not be parsed (dropped)
    truncated: bool = False  # the text does not end with <|im_end|>
    errors: tuple[str, ...] = field(default=())

    def to_message(self) -> dict[str, Any]:
        """The OpenAI-shaped assistant message (what ``render`` takes back)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning_content is not None:
            message["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        return message


def parse_value(raw: str) -> Any:
    """Invert the template's argument encoding: JSON for objects / arrays, str() for scalars."""
    text = raw.strip()
    if text in _LITERALS:
        return _LITERALS[text]
    if _NUMBER_RE.fullmatch(text):
        return json.loads(text)
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return raw


def _parse_tool_call(block: str) -> ToolCall | None:
    match = _FUNCTION_RE.match(block)
    if match is None:
        return None
    name, body = match.group(1).strip(), match.group(2)
    if not name:
        return None
    params = _PARAM_RE.findall(body)
    leftover = _PARAM_RE.sub("", body).strip()
    if leftover:
        return None
    return ToolCall(name=name, arguments={key.strip(): parse_value(value) for key, value in params})


def _split_reasoning(text: str, thinking: bool) -> tuple[str | None, str, bool]:
    """Returns (reasoning or None, remaining text, unclosed_think)."""
    stripped = text.lstrip()
    opened = thinking or stripped.startswith(THINK_OPEN)
    if stripped.startswith(THINK_OPEN):
        text = stripped[len(THINK_OPEN) :]
    close = text.find(THINK_CLOSE)
    if close >= 0:
        return text[:close].strip(), text[close + len(THINK_CLOSE) :], False
    if opened:
        return text.strip(), "", True
    return None, text, False


def parse_completion(text: str, *, thinking: bool = False) -> ParsedCompletion:
    """Parse raw assistant text (what follows the generation prompt).

    Args:
        text: the decoded completion, special tokens included.
        thinking: the prompt already opened ``<think>`` (thinking-mode generation prompt), so text
            before ``</think>`` is reasoning even without an explicit opening tag.
    """
    end = text.find(IM_END)
    truncated = end < 0
    body = text if truncated else text[:end]
    reasoning, rest, unclosed = _split_reasoning(body, thinking)
    if reasoning == "" and not unclosed:
        reasoning = None

    calls: list[ToolCall] = []
    errors: list[str] = []
    for block in _TOOL_CALL_RE.findall(rest):
        call = _parse_tool_call(block)
        if call is None:
            errors.append(f"unparseable tool call: {block.strip()[:80]!r}")
        else:
            calls.append(call)
    content = _TOOL_CALL_RE.sub("", rest)
    if "<tool_call>" in content:  # opened and never closed
        cut = content.index("<tool_call>")
        errors.append(f"unclosed <tool_call>: {content[cut : cut + 80]!r}")
        content = content[:cut]
    if unclosed:
        errors.append("unclosed <think>")
    return ParsedCompletion(
        content=content.strip(),
        reasoning_content=reasoning,
        tool_calls=tuple(calls),
        unclosed_think=unclosed,
        malformed_tool_call=any("tool call" in e or "tool_call" in e for e in errors),
        truncated=truncated,
        errors=tuple(errors),
    )

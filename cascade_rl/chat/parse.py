"""Completion text -> assistant message, tolerant of whatever a model emits.

``parse_completion`` never raises on model output: anything it cannot make sense of is kept as
plain content and reported through the ``malformed_*`` / ``unclosed_think`` / ``truncated`` flags,
so verifiers and metrics can count failure modes instead of crashing a rollout worker.

Where the format leaves room, the rules mirror what vLLM serves, so a reward judges what a user
of the served model would get:

* Reasoning (vLLM's ``nemotron_v3`` / DeepSeek-R1 ``extract_reasoning``): in the reasoning region
  (before the first ``</think>``), only the text after the first ``<think>`` is reasoning; text
  before a stray ``<think>`` is dropped, and a second ``<think>`` stays in the reasoning as vLLM
  leaves it. A ``<think>`` after ``</think>`` is plain content.
* Tool calls (vLLM's ``qwen3_coder``): one ``<tool_call>`` block may hold several
  ``<function=...>`` blocks, parsed in order. A parameter's name is the raw text between
  ``<parameter=`` and ``>``, neither stripped nor required to be non-empty (a ``<`` in it means a
  broken tag, and the block is unparseable rather than swallowing the next tag into a name).
  ``content`` is only the text before the first ``<tool_call>``: text after it (between or after
  the calls) is dropped, as vLLM drops it, and reported in ``errors`` without setting
  ``malformed_tool_call``, since every call still parsed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cascade_rl.types import ToolCall

IM_END = "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL_OPEN = "<tool_call>"
_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
# Non-greedy like vLLM's ``<function=(.*?)</function>``: a block may hold several functions.
_FUNCTION_RE = re.compile(r"<function=([^>\n]+)>(.*?)</function>", re.S)
_PARAM_RE = re.compile(r"<parameter=([^<>]*)>\n?(.*?)\n?</parameter>", re.S)
_NUMBER_RE = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_LITERALS: dict[str, Any] = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}


@dataclass(frozen=True)
class ParsedCompletion:
    """An assistant turn recovered from raw completion text."""

    content: str
    reasoning_content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    unclosed_think: bool = False  # <think> opened (or prompt opened it) and never closed
    malformed_tool_call: bool = False  # a <tool_call> block that could not be parsed or was never closed (dropped)
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


def _parse_function(name: str, body: str) -> ToolCall | None:
    name = name.strip()
    if not name:
        return None
    params = _PARAM_RE.findall(body)
    if _PARAM_RE.sub("", body).strip():  # text outside <parameter> tags: not a call we can trust
        return None
    # Raw names, as vLLM takes them; a repeated name keeps its last value, as vLLM's dict does.
    return ToolCall(name=name, arguments={key: parse_value(value) for key, value in params})


def _parse_tool_call_block(block: str) -> list[ToolCall] | None:
    """The calls of one ``<tool_call>`` block, or None if any part of it does not parse."""
    calls: list[ToolCall] = []
    pos = 0
    for match in _FUNCTION_RE.finditer(block):
        call = _parse_function(match.group(1), match.group(2))
        if call is None or block[pos : match.start()].strip():
            return None
        calls.append(call)
        pos = match.end()
    if not calls or block[pos:].strip():
        return None
    return calls


@dataclass
class _ToolCallParse:
    content: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    malformed: bool = False


def _extract_tool_calls(text: str) -> _ToolCallParse:
    """Split the answer text into content (before the first ``<tool_call>``) and the calls."""
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return _ToolCallParse(content=text.strip())
    out = _ToolCallParse(content=text[:start].strip())
    tail = text[start:]
    gaps: list[str] = []
    pos = 0
    for match in _TOOL_CALL_RE.finditer(tail):
        gaps.append(tail[pos : match.start()])
        pos = match.end()
        calls = _parse_tool_call_block(match.group(1))
        if calls is None:
            out.errors.append(f"unparseable tool call: {match.group(1).strip()[:80]!r}")
            out.malformed = True
        else:
            out.calls.extend(calls)
    rest = tail[pos:]
    if TOOL_CALL_OPEN in rest:  # opened and never closed
        cut = rest.index(TOOL_CALL_OPEN)
        out.errors.append(f"unclosed <tool_call>: {rest[cut : cut + 80]!r}")
        out.malformed = True
        rest = rest[:cut]
    dropped = "\n".join(part.strip() for part in [*gaps, rest] if part.strip())
    if dropped:
        out.errors.append(f"text after the tool calls dropped: {dropped[:80]!r}")
    return out


def _split_reasoning(text: str, thinking: bool) -> tuple[str | None, str, bool]:
    """Returns (reasoning or None, remaining text, unclosed_think)."""
    close = text.find(THINK_CLOSE)
    if close >= 0:
        region, rest, unclosed = text[:close], text[close + len(THINK_CLOSE) :], False
    elif thinking or text.lstrip().startswith(THINK_OPEN):
        region, rest, unclosed = text, "", True
    else:
        return None, text, False
    # vLLM partitions on the first <think> and keeps what follows it (the opener itself, or a
    # stray one that discards the text before it).
    opener, tag, after = region.partition(THINK_OPEN)
    return (after if tag else opener).strip(), rest, unclosed


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

    tools = _extract_tool_calls(rest)
    errors = tools.errors + (["unclosed <think>"] if unclosed else [])
    return ParsedCompletion(
        content=tools.content,
        reasoning_content=reasoning,
        tool_calls=tuple(tools.calls),
        unclosed_think=unclosed,
        malformed_tool_call=tools.malformed,
        truncated=truncated,
        errors=tuple(errors),
    )

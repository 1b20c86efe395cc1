"""The Nemotron-Cascade-2 chat format (ChatML with <think> blocks and Qwen3-Coder XML tool calls).

``render`` is byte-identical to the reference Jinja template for every golden vector in
``shared/testdata/chat_template_vectors.jsonl``, including its quirks (roles it passes through,
a tool message right after the system block, whitespace trimming of assistant turns), because a
trainer and a server that disagree by one byte train and serve different distributions.

The same rules are written as a Jinja template (``cascade2.jinja``) that every saved tokenizer
carries, so ``transformers.apply_chat_template`` and vLLM reproduce ``render`` exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
EMPTY_THINK = "<think></think>"
TOOLS_HEADER = "# Tools\n\nYou have access to the following functions:\n\n<tools>"

TOOL_INSTRUCTIONS = (
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n"
    "</parameter>\n<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
    "that can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...></function> block must "
    "be nested within <tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language BEFORE the "
    "function call, but NOT after\n- If there is no function call available, answer the question "
    "like normal with your current knowledge and do not tell the user about function calls\n"
    "</IMPORTANT>"
)


class ChatFormatError(ValueError):
    """A conversation that the chat format cannot represent (names the message and the reason)."""


@dataclass(frozen=True)
class Span:
    """A character range of rendered text; ``message`` indexes the input messages."""

    start: int
    end: int
    message: int


def chat_template() -> str:
    """The Jinja twin of ``render`` (shipped with every saved tokenizer)."""
    return resources.files("cascade_rl.chat").joinpath("cascade2.jinja").read_text(encoding="utf-8")


def generation_prompt(enable_thinking: bool = True) -> str:
    """Thinking mode opens a ``<think>`` block; non-thinking mode closes an empty one."""
    return f"{IM_START}assistant\n" + ("<think>\n" if enable_thinking else EMPTY_THINK)


def _jinja_str(value: Any) -> str:
    """Jinja's ``string`` filter is Python ``str``: None -> 'None', True -> 'True', lists -> repr."""
    return value if isinstance(value, str) else str(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _is_list_like(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _extra_keys(obj: Any, handled: tuple[str, ...]) -> str:
    """Schema keys the format has no slot for are kept as ``<key>value</key>`` lines."""
    if not isinstance(obj, Mapping):
        return ""
    out = []
    for key, value in obj.items():
        if key in handled:
            continue
        text = _json(value) if isinstance(value, Mapping) or _is_list_like(value) else _jinja_str(value)
        out.append(f"\n<{key}>{text}</{key}>")
    return "".join(out)


def _render_tool(tool: Mapping[str, Any]) -> str:
    fn = tool.get("function", tool)
    parts = [f"\n<function>\n<name>{fn.get('name')}</name>"]
    if "description" in fn:
        parts.append(f"\n<description>{_jinja_str(fn['description']).strip()}</description>")
    parts.append("\n<parameters>")
    params = fn.get("parameters")
    properties = params.get("properties") if isinstance(params, Mapping) else None
    if isinstance(properties, Mapping):
        for name, fields in properties.items():
            parts.append(f"\n<parameter>\n<name>{name}</name>")
            if "type" in fields:
                parts.append(f"\n<type>{_jinja_str(fields['type'])}</type>")
            if "description" in fields:
                parts.append(f"\n<description>{_jinja_str(fields['description']).strip()}</description>")
            parts.append(_extra_keys(fields, ("name", "type", "description")))
            parts.append("\n</parameter>")
    parts.append(_extra_keys(params, ("type", "properties", "required")))
    if isinstance(params, Mapping) and "required" in params:
        parts.append(f"\n<required>{_json(params['required'])}</required>")
    parts.append("\n</parameters>")
    parts.append(_extra_keys(fn, ("type", "name", "description", "parameters")))
    parts.append("\n</function>")
    return "".join(parts)


def render_system(system: str, tools: Sequence[Mapping[str, Any]] | None) -> str:
    """The system block, always emitted (empty without a system message), with the tool list."""
    out = f"{IM_START}system\n{system}"
    if tools:
        if system:
            out += "\n\n"
        out += TOOLS_HEADER
        out += "".join(_render_tool(tool) for tool in tools)
        out += "\n</tools>" + TOOL_INSTRUCTIONS
    return out + f"{IM_END}\n"


def normalize_tool_call(call: Any, where: str) -> tuple[str, dict[str, Any] | None]:
    """(name, arguments) from the OpenAI shape or the bare ``{"name", "arguments"}`` shape.

    Arguments may be a mapping or a JSON-object string (the OpenAI wire form).
    """
    if not isinstance(call, Mapping):
        raise ChatFormatError(f"{where}: a tool call must be a mapping, got {type(call).__name__}")
    fn = call.get("function", call)
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ChatFormatError(f"{where}: tool call has no function name")
    if "arguments" not in fn:
        return name, None
    args = fn["arguments"]
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise ChatFormatError(f"{where}: arguments of {name!r} are not valid JSON ({exc})") from exc
    if not isinstance(args, Mapping):
        raise ChatFormatError(
            f"{where}: arguments of {name!r} must be a dict or a JSON-object string, got {type(args).__name__}"
        )
    return name, dict(args)


def _render_tool_calls(calls: Sequence[Any], where: str) -> str:
    out = []
    for j, call in enumerate(calls):
        name, args = normalize_tool_call(call, f"{where}, tool call {j}")
        out.append(f"<tool_call>\n<function={name}>\n")
        for key, value in (args or {}).items():
            text = _json(value) if isinstance(value, Mapping) or _is_list_like(value) else _jinja_str(value)
            out.append(f"<parameter={key}>\n{text}\n</parameter>\n")
        out.append("</function>\n</tool_call>\n")
    return "".join(out)


def _assistant_body(message: Mapping[str, Any]) -> Any:
    """Content with reasoning folded in as a ``<think>`` block; a turn without one gets an empty block."""
    reasoning = message.get("reasoning_content")
    content = message.get("content") or ""
    if isinstance(reasoning, str) and reasoning.strip():
        return f"<think>\n{reasoning}\n</think>\n{_jinja_str(content)}"
    if isinstance(content, str) and "<think>" not in content and "</think>" not in content:
        return EMPTY_THINK + content
    return content


def _drop_history_thinking(body: str, has_tool_calls: bool) -> str:
    """An earlier turn keeps only what follows its last ``</think>``, behind an empty think block."""
    if has_tool_calls:
        if "</think>" in body:
            body = body.split("</think>")[-1]
        elif "<think>" in body:
            body = body.split("<think>")[0]
        return EMPTY_THINK + body.strip()
    if "<think>" in body and "</think>" in body:
        body = EMPTY_THINK + body.split("</think>")[-1]
    return body.strip()


def _assistant_turn(message: Mapping[str, Any], keep_thinking: bool, where: str) -> tuple[str, str]:
    """(header, body) of one assistant turn; the body is what the model produces, ``<|im_end|>`` included."""
    body = _assistant_body(message)
    calls = message.get("tool_calls") or []
    if calls:
        if isinstance(body, str) and body.strip():
            text = body.strip() if keep_thinking else _drop_history_thinking(body, True)
            text += "\n"
        else:
            text = EMPTY_THINK
        return f"{IM_START}assistant\n", text + _render_tool_calls(calls, where) + IM_END
    body = _jinja_str(body)
    text = body.strip() if keep_thinking else _drop_history_thinking(body, False)
    return f"{IM_START}assistant\n", text + IM_END


def _check_message(message: Any, i: int) -> None:
    # A missing 'content' is not an error: the Jinja template reads it as '' for every role
    # (``m.content if m.content else ''``, ``Undefined | string``), and render must match it.
    if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
        raise ChatFormatError(f"message {i}: expected a mapping with a 'role' string, got {message!r}")
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list | tuple):
        raise ChatFormatError(f"message {i}: 'tool_calls' must be a list, got {type(calls).__name__}")


def render_with_spans(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = False,
    enable_thinking: bool = True,
    truncate_history_thinking: bool = True,
) -> tuple[str, list[Span]]:
    """``render`` plus the character span of every assistant turn's body (what training supervises)."""
    for i, message in enumerate(messages):
        _check_message(message, i)
    offset = 1 if messages and messages[0]["role"] == "system" else 0
    system = _jinja_str(messages[0].get("content", "")) if offset else ""
    loop = list(messages[offset:])
    last_user = max((j for j, m in enumerate(loop) if m["role"] == "user"), default=-1)

    out = [render_system(system, tools)]
    length = len(out[0])
    spans: list[Span] = []
    for j, message in enumerate(loop):
        role, index = message["role"], j + offset
        if role == "assistant":
            keep = not (truncate_history_thinking and j < last_user)
            header, body = _assistant_turn(message, keep, f"message {index}")
            spans.append(Span(length + len(header), length + len(header) + len(body), index))
            piece = header + body + "\n"
        elif role == "tool":
            opens = j > 0 and loop[j - 1]["role"] != "tool"
            closes = j == len(loop) - 1 or loop[j + 1]["role"] != "tool"
            piece = (
                (f"{IM_START}user\n" if opens else "")
                + f"<tool_response>\n{_jinja_str(message.get('content', ''))}\n</tool_response>\n"
                + (f"{IM_END}\n" if closes else "")
            )
        else:
            piece = f"{IM_START}{role}\n{_jinja_str(message.get('content', ''))}{IM_END}\n"
        out.append(piece)
        length += len(piece)
    if add_generation_prompt:
        out.append(generation_prompt(enable_thinking))
    return "".join(out), spans


def render(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = False,
    enable_thinking: bool = True,
    truncate_history_thinking: bool = True,
) -> str:
    """Render an OpenAI-shaped conversation in the Cascade-2 format.

    Args:
        messages: ``{"role", "content"?, "reasoning_content"?, "tool_calls"?}`` mappings (a missing
            ``content`` renders as empty, as in the Jinja template); a first system message becomes
            the system block; ``tool`` messages become ``<tool_response>`` blocks inside a user turn.
        tools: OpenAI function schemas, listed in the system block as XML.
        add_generation_prompt: end with the assistant header (and ``<think>`` opener).
        enable_thinking: the generation prompt opens a ``<think>`` block (else closes an empty one).
        truncate_history_thinking: drop reasoning of assistant turns before the last user message.
    """
    text, _ = render_with_spans(
        messages,
        tools,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        truncate_history_thinking=truncate_history_thinking,
    )
    return text


_TURN_END = f"{IM_END}\n"


def render_continuation(messages: Sequence[Mapping[str, Any]], *, enable_thinking: bool = True) -> str:
    """What follows a finished assistant turn when ``messages`` (tool responses, a user message) come
    next, up to and including the next generation prompt.

    Rendered by ``render`` itself (after a placeholder assistant turn, whose text is cut off), so it is
    byte for byte what the template writes there: the newline after the turn's ``<|im_end|>``, tool
    responses grouped into one user turn, then the generation prompt of the thinking mode.
    """
    placeholder = [{"role": "user", "content": "."}, {"role": "assistant", "content": "."}]
    text = render([*placeholder, *messages], add_generation_prompt=True, enable_thinking=enable_thinking)
    head = render(placeholder, enable_thinking=enable_thinking)
    assert text.startswith(head) and head.endswith(_TURN_END)
    return "\n" + text[len(head) :]

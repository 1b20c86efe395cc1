"""The Nemotron-Cascade-2 chat format: render, tokenize with an assistant mask, parse."""

from cascade_rl.chat.parse import ParsedCompletion, parse_completion
from cascade_rl.chat.template import (
    ChatFormatError,
    chat_template,
    generation_prompt,
    render,
    render_continuation,
    render_with_spans,
)
from cascade_rl.chat.tokenize import encode_prompt, tokenize_conversation

__all__ = [
    "ChatFormatError",
    "ParsedCompletion",
    "chat_template",
    "encode_prompt",
    "generation_prompt",
    "parse_completion",
    "render",
    "render_continuation",
    "render_with_spans",
    "tokenize_conversation",
]

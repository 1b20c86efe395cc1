"""The Nemotron-Cascade-2 chat format: render, tokenize with an assistant mask, parse."""

from cascade_rl.chat.parse import ParsedCompletion, parse_completion

__all__ = ["ParsedCompletion", "parse_completion"]

"""Token ids plus a loss mask for training, and prompt ids for generation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cascade_rl.chat.template import IM_START, Span, generation_prompt, render, render_with_spans

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    enable_thinking: bool = True,
    truncate_history_thinking: bool = True,
    last_turn_only: bool = False,
) -> tuple[list[int], list[int]]:
    """``(input_ids, loss_mask)`` for a full conversation.

    The mask is 1 exactly on what the model itself writes in each assistant turn, closing
    ``<|im_end|>`` included (so the model learns to stop). The generation prompt is given at
    inference, never generated, so it is not supervised: the ``<|im_start|>assistant\\n`` header, and
    a turn's leading ``<think>\\n`` (thinking mode) or empty ``<think></think>`` (non-thinking mode).
    System, user and tool turns are not supervised either. With ``last_turn_only`` only the final
    assistant turn is.

    The whole text is tokenized at once and spans are mapped through character offsets, so the ids
    are exactly what ``tokenizer(render(...))`` gives (no drift from per-segment tokenization).
    """
    text, spans = render_with_spans(
        messages, tools, enable_thinking=enable_thinking, truncate_history_thinking=truncate_history_thinking
    )
    if last_turn_only:
        spans = spans[-1:]
    spans = [_after_generation_prompt(text, s) for s in spans]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    mask = [0] * len(ids)
    k = 0
    for i, (start, _end) in enumerate(encoded["offset_mapping"]):
        while k < len(spans) and start >= spans[k].end:
            k += 1
        if k < len(spans) and spans[k].start <= start < spans[k].end:
            mask[i] = 1
    return ids, mask


GIVEN_OPENERS = tuple(generation_prompt(mode).removeprefix(f"{IM_START}assistant\n") for mode in (True, False))


def _after_generation_prompt(text: str, span: Span) -> Span:
    """The span without the think opener that either mode's generation prompt already supplies."""
    for opener in GIVEN_OPENERS:
        if text.startswith(opener, span.start):
            return replace(span, start=span.start + len(opener))
    return span


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    enable_thinking: bool = True,
) -> list[int]:
    """Prompt ids ending with the generation prompt of the chosen thinking mode."""
    text = render(messages, tools, add_generation_prompt=True, enable_thinking=enable_thinking)
    return tokenizer(text, add_special_tokens=False)["input_ids"]

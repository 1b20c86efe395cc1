"""Training tokenization: the loss mask covers exactly the assistant turns."""

from __future__ import annotations

import pytest

from cascade_rl.chat import encode_prompt, render, tokenize_conversation
from tests.conftest import load_vectors

CONVERSATION = [
    {"role": "system", "content": "You add numbers."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "The answer is 5.", "reasoning_content": "2 + 3 = 5."},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "The answer is 8.", "reasoning_content": "4 + 4 = 8."},
]


def _masked_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])


def test_ids_equal_plain_tokenization(tokenizer):
    ids, mask = tokenize_conversation(tokenizer, CONVERSATION)
    assert ids == tokenizer(render(CONVERSATION), add_special_tokens=False)["input_ids"]
    assert len(mask) == len(ids)


def test_mask_decodes_to_exactly_what_the_model_writes(tokenizer):
    ids, mask = tokenize_conversation(tokenizer, CONVERSATION)
    # The first turn lost its reasoning (history truncation) and keeps an empty think block; the last
    # keeps its reasoning after the "<think>\n" that the thinking generation prompt supplies.
    expected = "\nThe answer is 5.<|im_end|>" + "4 + 4 = 8.\n</think>\nThe answer is 8.<|im_end|>"
    assert _masked_text(tokenizer, ids, mask) == expected


@pytest.mark.parametrize("thinking", [True, False])
def test_prompt_plus_supervised_tokens_is_the_conversation(tokenizer, thinking):
    """At inference the model gets the generation prompt and writes the rest: exactly the masked tokens."""
    messages = (
        CONVERSATION if thinking else [{k: v for k, v in m.items() if k != "reasoning_content"} for m in CONVERSATION]
    )
    ids, mask = tokenize_conversation(tokenizer, messages, enable_thinking=thinking, last_turn_only=True)
    prompt = render(messages[:-1], add_generation_prompt=True, enable_thinking=thinking)
    assert prompt + _masked_text(tokenizer, ids, mask) + "\n" == render(messages, enable_thinking=thinking)
    assert not _masked_text(tokenizer, ids, mask).startswith("<think>")


def test_last_turn_only(tokenizer):
    ids, mask = tokenize_conversation(tokenizer, CONVERSATION, last_turn_only=True)
    assert _masked_text(tokenizer, ids, mask) == "4 + 4 = 8.\n</think>\nThe answer is 8.<|im_end|>"


def test_mask_is_one_run_per_assistant_turn_on_golden_vectors(tokenizer):
    for vector in load_vectors():
        if vector["kwargs"].get("add_generation_prompt"):
            continue
        kwargs = {k: v for k, v in vector["kwargs"].items() if k != "add_generation_prompt"}
        ids, mask = tokenize_conversation(tokenizer, vector["messages"], vector["tools"], **kwargs)
        assert tokenizer.decode(ids) == vector["text"], vector["id"]
        runs = sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))
        n_assistant = sum(m["role"] == "assistant" for m in vector["messages"])
        assert runs == n_assistant, vector["id"]
        # Every supervised run ends on <|im_end|>.
        ends = [ids[i] for i, m in enumerate(mask) if m and (i + 1 == len(mask) or not mask[i + 1])]
        assert set(ends) <= {tokenizer.convert_tokens_to_ids("<|im_end|>")}, vector["id"]


def test_encode_prompt_modes(tokenizer):
    messages = [{"role": "user", "content": "What is 1 + 1?"}]
    thinking = tokenizer.decode(encode_prompt(tokenizer, messages, enable_thinking=True))
    plain = tokenizer.decode(encode_prompt(tokenizer, messages, enable_thinking=False))
    assert thinking.endswith("<|im_start|>assistant\n<think>\n")
    assert plain.endswith("<|im_start|>assistant\n<think></think>")

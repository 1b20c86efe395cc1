"""The Cascade-2 format: every golden vector, byte for byte, through render and through transformers."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from cascade_rl.chat import ChatFormatError, chat_template, generation_prompt, render
from tests.conftest import load_vectors

VECTORS = load_vectors()


def test_vector_file_is_complete():
    assert len(VECTORS) == 47
    assert len({v["id"] for v in VECTORS}) == len(VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_render_matches_golden(vector):
    assert render(vector["messages"], vector["tools"], **vector["kwargs"]) == vector["text"]


@pytest.fixture(scope="module")
def hf_tokenizer() -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")))
    tok.chat_template = chat_template()
    return tok


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_jinja_template_matches_golden(vector, hf_tokenizer):
    text = hf_tokenizer.apply_chat_template(
        vector["messages"], tools=vector["tools"], tokenize=False, **vector["kwargs"]
    )
    assert text == vector["text"]


def test_generation_prompts():
    assert generation_prompt(True) == "<|im_start|>assistant\n<think>\n"
    assert generation_prompt(False) == "<|im_start|>assistant\n<think></think>"


def test_json_string_arguments_render_as_dict():
    as_dict = {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {"a": 1, "b": [1, 2]}}]}
    as_json = {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": '{"a": 1, "b": [1, 2]}'}]}
    user = {"role": "user", "content": "go"}
    assert render([user, as_json]) == render([user, as_dict])
    assert "<parameter=b>\n[1, 2]\n</parameter>" in render([user, as_dict])


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        (
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]}],
            "message 1, tool call 0: tool call has no function name",
        ),
        (
            [{"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "[1, 2]"}]}],
            "message 0, tool call 0: arguments of 'f' must be a dict or a JSON-object string, got list",
        ),
        (
            [{"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{oops"}]}],
            "arguments of 'f' are not valid JSON",
        ),
        (
            [{"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": 3}]}],
            "must be a dict or a JSON-object string, got int",
        ),
        (["hello"], "message 0: expected a mapping with a 'role' string, got 'hello'"),
        ([{"content": "no role"}], "message 0: expected a mapping with a 'role' string"),
    ],
)
def test_unrenderable_input_names_message_and_reason(messages, needle):
    with pytest.raises(ChatFormatError) as info:
        render(messages)
    assert needle in str(info.value)


EMPTY_SYSTEM = "<|im_start|>system\n<|im_end|>\n"
HI = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            [HI, {"role": "assistant"}],
            EMPTY_SYSTEM + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think></think><|im_end|>\n",
        ),
        (
            [HI, {"role": "assistant"}, {"role": "user", "content": "more"}, {"role": "assistant"}],
            EMPTY_SYSTEM
            + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think></think><|im_end|>\n"
            + "<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n<think></think><|im_end|>\n",
        ),
        (
            [HI, {"role": "assistant", "tool_calls": [{"name": "f", "arguments": {"a": 1}}]}],
            EMPTY_SYSTEM
            + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think></think>\n"
            + "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</function>\n</tool_call>\n<|im_end|>\n",
        ),
        ([{"role": "user"}], EMPTY_SYSTEM + "<|im_start|>user\n<|im_end|>\n"),
        ([{"role": "system"}, HI], EMPTY_SYSTEM + "<|im_start|>user\nhi<|im_end|>\n"),
        (
            [HI, {"role": "assistant", "content": "y"}, {"role": "tool"}],
            EMPTY_SYSTEM
            + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think></think>y<|im_end|>\n"
            + "<|im_start|>user\n<tool_response>\n\n</tool_response>\n<|im_end|>\n",
        ),
    ],
    ids=["assistant", "assistant-in-history", "assistant-tool-calls-only", "user", "system", "tool"],
)
def test_missing_content_renders_like_the_jinja_template(messages, expected, tokenizer):
    # The template reads a missing ``content`` as empty (``m.content if m.content else ''`` for the
    # assistant, ``Undefined | string`` == '' elsewhere); the renderer must agree byte for byte.
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    assert render(messages) == expected

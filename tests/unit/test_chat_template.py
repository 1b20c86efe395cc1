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
        (["hello"], "message 0: expected a mapping with a 'role' string and 'content'"),
        ([{"content": "no role"}], "message 0: expected a mapping with a 'role' string"),
        ([{"role": "user"}], "message 0 (user): missing 'content'"),
    ],
)
def test_unrenderable_input_names_message_and_reason(messages, needle):
    with pytest.raises(ChatFormatError) as info:
        render(messages)
    assert needle in str(info.value)

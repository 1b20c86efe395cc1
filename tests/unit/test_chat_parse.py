"""parse_completion: never raises, flags malformed output, and inverts render."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_rl.chat import parse_completion, render_with_spans
from cascade_rl.chat.parse import parse_value

CALL = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>\n"


def test_thinking_completion():
    parsed = parse_completion("2 + 3 = 5.\n</think>\nThe answer is 5.<|im_end|>", thinking=True)
    assert parsed.reasoning_content == "2 + 3 = 5."
    assert parsed.content == "The answer is 5."
    assert not (parsed.truncated or parsed.unclosed_think or parsed.malformed_tool_call)


def test_non_thinking_completion_with_tool_call():
    parsed = parse_completion("Let me check.\n" + CALL + "<|im_end|>")
    assert parsed.reasoning_content is None
    assert parsed.content == "Let me check."
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("get_weather", {"city": "Paris"})]


def test_truncated_and_unclosed_think():
    parsed = parse_completion("still thinking about it", thinking=True)
    assert parsed.truncated and parsed.unclosed_think
    assert parsed.reasoning_content == "still thinking about it"
    assert parsed.content == ""


def test_explicit_open_think_without_close():
    parsed = parse_completion("<think>\nhmm<|im_end|>")
    assert parsed.unclosed_think and not parsed.truncated
    assert parsed.reasoning_content == "hmm"


def test_broken_tool_call_xml_is_flagged_and_dropped():
    broken = "<tool_call>\n<function=f>\n<parameter=a>\n1\n</function>\n</tool_call>"
    parsed = parse_completion("ok " + broken + "<|im_end|>")
    assert parsed.malformed_tool_call and parsed.tool_calls == ()
    assert parsed.content == "ok"
    unclosed = parse_completion("text <tool_call>\n<function=f>\n")
    assert unclosed.malformed_tool_call and unclosed.content == "text"


def test_argument_values_invert_the_template_encoding():
    assert parse_value("3") == 3
    assert parse_value("12.5") == 12.5
    assert parse_value("True") is True
    assert parse_value("None") is None
    assert parse_value('{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_value("Paris") == "Paris"
    assert parse_value("{not json") == "{not json"


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_never_raises(text):
    for thinking in (False, True):
        parse_completion(text, thinking=thinking)
        parse_completion(text + "<|im_end|>", thinking=thinking)


_WORD = st.text(alphabet=string.ascii_letters + " .,!?'", min_size=1, max_size=30).map(str.strip).filter(bool)
_NAME = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)
_VALUE = st.one_of(
    _WORD.filter(lambda s: s not in ("True", "False", "None", "true", "false", "null")),
    st.integers(-1000, 1000),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(_NAME, st.integers(0, 9), max_size=2),
)
_CALL = st.builds(
    lambda n, a: {"type": "function", "function": {"name": n, "arguments": a}},
    _NAME,
    st.dictionaries(_NAME, _VALUE, max_size=3),
)


@given(content=st.one_of(st.just(""), _WORD), reasoning=st.one_of(st.none(), _WORD), calls=st.lists(_CALL, max_size=2))
@settings(max_examples=200, deadline=None)
def test_render_then_parse_round_trips(content, reasoning, calls):
    message = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    text, spans = render_with_spans([{"role": "user", "content": "hi"}, message])
    parsed = parse_completion(text[spans[-1].start : spans[-1].end])
    assert parsed.to_message() == message
    assert not (parsed.truncated or parsed.unclosed_think or parsed.malformed_tool_call)

"""parse_completion: never raises, flags malformed output, and inverts render."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_rl.chat import parse_completion, render_with_spans
from cascade_rl.chat.parse import parse_value
from cascade_rl.rewards import verify

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


def test_several_functions_in_one_tool_call_block_parse_in_order():
    # vLLM's qwen3_coder parser runs its <function=...> findall inside every <tool_call> block.
    two = (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n"
        "<function=get_time>\n<parameter=zone>\nCET\n</parameter>\n</function>\n</tool_call>\n"
    )
    parsed = parse_completion("Both.\n" + two + CALL.replace("Paris", "Rome") + "<|im_end|>")
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET"}),
        ("get_weather", {"city": "Rome"}),
    ]
    assert (parsed.content, parsed.errors, parsed.malformed_tool_call) == ("Both.", (), False)


def test_a_broken_function_fails_its_whole_block():
    block = "<tool_call>\n<function=a>\n</function>\n<function=b>\noops\n</function>\n</tool_call>"
    parsed = parse_completion(block + "<|im_end|>")
    assert parsed.tool_calls == () and parsed.malformed_tool_call
    assert parsed.errors == ("unparseable tool call: '<function=a>\\n</function>\\n<function=b>\\noops\\n</function>'",)


def test_stray_think_in_reasoning_is_dropped_like_vllm():
    for thinking in (True, False):
        parsed = parse_completion("abc <think> def</think>ans<|im_end|>", thinking=thinking)
        assert (parsed.reasoning_content, parsed.content, parsed.errors) == ("def", "ans", ())
    unclosed = parse_completion("abc <think> def", thinking=True)
    assert (unclosed.reasoning_content, unclosed.content) == ("def", "")
    assert unclosed.unclosed_think and unclosed.truncated
    # vLLM partitions on the first <think> only, so a second one stays in the reasoning.
    twice = parse_completion("a<think>b<think>c</think>d<|im_end|>", thinking=True)
    assert (twice.reasoning_content, twice.content) == ("b<think>c", "d")
    # A <think> after </think> is content, as before.
    late = parse_completion("r</think>x <think> y<|im_end|>", thinking=True)
    assert (late.reasoning_content, late.content) == ("r", "x <think> y")


def test_parameter_names_are_taken_raw():
    body = (
        "<parameter=my city>\nParis\n</parameter>\n<parameter=>\n3\n</parameter>\n"
        "<parameter= padded >\nx\n</parameter>\n<parameter=v>\n\n two lines \n\n</parameter>\n"
    )
    parsed = parse_completion(f"<tool_call>\n<function=f>\n{body}</function>\n</tool_call><|im_end|>")
    assert parsed.errors == ()
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("f", {"my city": "Paris", "": 3, " padded ": "x", "v": "\n two lines \n"})
    ]


def test_text_after_the_tool_calls_is_dropped_and_counted():
    # vLLM's qwen3_coder returns only the text before the first <tool_call> as content.
    parsed = parse_completion("Checking.\n" + CALL + "Done, it is sunny.<|im_end|>")
    assert parsed.content == "Checking."
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert parsed.errors == ("text after the tool calls dropped: 'Done, it is sunny.'",)
    assert not parsed.malformed_tool_call
    between = parse_completion("A\n" + CALL + "mid\n" + CALL + "x" * 100 + "<|im_end|>")
    assert (between.content, len(between.tool_calls)) == ("A", 2)
    dropped = ("mid\n" + "x" * 100)[:80]
    assert between.errors == (f"text after the tool calls dropped: {dropped!r}",)
    assert not between.malformed_tool_call
    unclosed = parse_completion(CALL + "<tool_call>\n<function=f>\n<|im_end|>")
    assert (unclosed.content, len(unclosed.tool_calls), unclosed.malformed_tool_call) == ("", 1, True)
    assert unclosed.errors == ("unclosed <tool_call>: '<tool_call>\\n<function=f>\\n'",)
    spec = {"type": "tool_call", "expected": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    result = verify(CALL + "Done.<|im_end|>", spec)
    assert (result.score, result.info["parse_errors"]) == (1.0, ["text after the tool calls dropped: 'Done.'"])


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_never_raises(text):
    for thinking in (False, True):
        parse_completion(text, thinking=thinking)
        parse_completion(text + "<|im_end|>", thinking=thinking)


_FRAGMENTS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<function=f>", "</function>"]
_FRAGMENTS += ["<parameter=", "<parameter=a>", "</parameter>", ">", "<", "\n", " ", "x", "3", "<|im_end|>"]


@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map("".join))
@settings(max_examples=300, deadline=None)
def test_never_raises_on_tag_soup(text):
    # Plain st.text almost never forms the tags the parser splits on; this does.
    for thinking in (False, True):
        parsed = parse_completion(text, thinking=thinking)
        assert "</think>" not in (parsed.reasoning_content or "") and "<tool_call>" not in parsed.content
        broken = [e for e in parsed.errors if e.startswith(("unparseable tool call", "unclosed <tool_call>"))]
        assert parsed.malformed_tool_call == bool(broken)


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

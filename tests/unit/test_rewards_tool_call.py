"""Tool-call verifier: count, names, type-tolerant arguments, order, no-call prompts."""

from __future__ import annotations

import pytest

from cascade_rl.rewards import SpecError, verify
from cascade_rl.rewards.tool_call import canonical


def call(name: str, **params: object) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>\n"


WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "metric": True}}
EMAIL = {"name": "send_email", "arguments": {"to": ["a@x.org"], "subject": "Hi"}}


def spec(*expected: dict, ordered: bool = False) -> dict:
    return {"type": "tool_call", "expected": list(expected), "ordered": ordered}


@pytest.mark.parametrize(
    ("text", "expected", "reason"),
    [
        (call("get_weather", city="Paris", days=3, metric="True"), 1.0, "match"),
        (call("get_weather", city="Paris", days="3.0", metric="true"), 1.0, "match"),
        ("Let me check." + call("get_weather", metric=True, days=3, city=" Paris "), 1.0, "match"),
        (call("get_weather", city="Paris", days=4, metric=True), 0.0, "call_mismatch"),
        (call("get_weather", city="paris", days=3, metric=True), 0.0, "call_mismatch"),
        (call("get_weather", city="Paris", days=3, metric=1), 0.0, "call_mismatch"),
        (call("get_weather", city="Paris", days=3), 0.0, "call_mismatch"),
        (call("get_forecast", city="Paris", days=3, metric=True), 0.0, "call_mismatch"),
        ("It is sunny in Paris.", 0.0, "count_mismatch"),
        (call("get_weather", city="Paris", days=3, metric=True) * 2, 0.0, "count_mismatch"),
        ("<tool_call>\n<function=get_weather>\noops\n</function>\n</tool_call>", 0.0, "malformed_tool_call"),
    ],
)
def test_single_call(text, expected, reason):
    result = verify(text + "<|im_end|>", spec(WEATHER))
    assert (result.score, result.info["reason"]) == (expected, reason)


def test_mismatch_info_names_the_argument():
    result = verify(call("get_weather", city="Paris", days=4, metric=True), spec(WEATHER))
    assert result.info["missing"] == ["get_weather"] and result.info["unexpected"] == ["get_weather"]
    assert result.info["argument_diffs"] == {"get_weather": {"days": {"expected": 3, "got": 4}}}


def test_order_matters_only_when_asked():
    text = call("send_email", to='["a@x.org"]', subject="Hi") + call("get_weather", city="Paris", days=3, metric=1 == 1)
    assert verify(text, spec(WEATHER, EMAIL)).score == 1.0
    ordered = verify(text, spec(WEATHER, EMAIL, ordered=True))
    assert (ordered.score, ordered.info["reason"]) == (0.0, "wrong_order")


def test_empty_expected_means_no_call():
    assert verify("Paris is sunny.<|im_end|>", spec()).score == 1.0
    assert verify(call("get_weather", city="Paris"), spec()).score == 0.0


def test_canonical_type_tolerance():
    assert canonical(3) == canonical("3") == canonical(3.0) == canonical(" 3 ")
    assert canonical("True") == canonical(True) != canonical(1)
    assert canonical("null") == canonical(None)
    assert canonical('{"a": [1, "2"]}') == canonical({"a": ["1", 2.0]})
    assert canonical("abc") != canonical("ABC")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"type": "tool_call"}, "missing field 'expected'"),
        (
            {"type": "tool_call", "expected": [{"arguments": {}}]},
            r"expected\[0\] must be an object with a string 'name'",
        ),
        ({"type": "tool_call", "expected": [{"name": "f", "arguments": "x=1"}]}, r"expected\[0\].arguments"),
        ({"type": "tool_call", "expected": [], "ordered": "yes"}, "ordered"),
    ],
)
def test_bad_specs(bad, message):
    with pytest.raises(SpecError, match=message):
        verify("x", bad)

"""Code verifier: code extraction, stdin/stdout cases, HumanEval-style tests."""

from __future__ import annotations

import pytest

from cascade_rl.rewards import SpecError, verify
from cascade_rl.rewards.code import extract_code

ADD_CASES = {
    "type": "code",
    "cases": [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "10 -4", "output": "6"},
        {"input": "0 0\n", "output": "0\n\n"},
    ],
    "timeout": 10,  # generous: a loaded machine starts the sandboxed interpreter slowly
}
HE = {
    "type": "code",
    "test": "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n",
    "entry_point": "total",
    "timeout": 10,  # generous: a loaded machine starts the sandboxed interpreter slowly
}


def fenced(code: str, lang: str = "python") -> str:
    return f"Here is my solution.\n```{lang}\n{code}\n```\nIt reads two ints.<|im_end|>"


def test_extract_code_prefers_last_python_block():
    text = "```python\nold()\n```\n```text\nnot code\n```\n```python\nnew()\n```"
    assert extract_code(text) == "new()\n"
    assert extract_code("```\nplain()\n```") == "plain()\n"
    assert extract_code("print(1)") == "print(1)"


def test_stdio_all_cases_pass():
    result = verify(fenced("a, b = map(int, input().split())\nprint(a + b)"), ADD_CASES)
    assert result.score == 1.0
    assert [t["verdict"] for t in result.info["tests"]] == ["ok", "ok", "ok"]


def test_stdio_stops_at_first_wrong_answer():
    code = "a, b = map(int, input().split())\nprint(a + b if a != 10 else 0)"
    result = verify(fenced(code), ADD_CASES)
    assert result.score == 0.0
    assert [t["verdict"] for t in result.info["tests"]] == ["ok", "wrong_answer"]
    assert result.info["skipped"] == 1


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        ("raise SystemExit(3)", "runtime_error"),
        ("print(1/0)", "runtime_error"),
        ("import time\ntime.sleep(10)", "timeout"),
    ],
)
def test_stdio_failures(code, verdict):
    spec = {**ADD_CASES, "timeout": 1}
    result = verify(fenced(code), spec)
    assert result.score == 0.0 and result.info["tests"][0]["verdict"] == verdict


def test_humaneval_pass_and_fail():
    assert verify(fenced("def total(xs):\n    return sum(xs)"), HE).score == 1.0
    wrong = verify(fenced("def total(xs):\n    return sum(xs) + 1"), HE)
    assert wrong.score == 0.0
    assert "AssertionError" in wrong.info["tests"][0]["error"]


def test_humaneval_prompt_completes_body_only_answers():
    spec = {**HE, "prompt": "def total(xs):\n    '''Sum.'''\n"}
    assert verify("```python\n    return sum(xs)\n```", spec).score == 1.0
    assert verify(fenced("def total(xs):\n    return sum(xs)"), spec).score == 1.0


def test_reasoning_code_is_ignored():
    text = "<think>```python\ndef total(xs):\n    return sum(xs)\n```</think>I cannot solve it.<|im_end|>"
    assert verify(text, HE).score == 0.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "code"}, "exactly one of"),
        ({**HE, "cases": ADD_CASES["cases"]}, "exactly one of"),
        ({"type": "code", "test": "def check(c): pass"}, "entry_point"),
        ({**HE, "entry_point": "not valid"}, "identifier"),
        ({"type": "code", "cases": []}, "non-empty"),
        ({"type": "code", "cases": [{"input": "1"}]}, r"cases\[0\]"),
        ({**HE, "timeout": 0}, "timeout"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(SpecError, match=message):
        verify("x", spec)

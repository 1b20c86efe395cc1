"""Math verifier: answer extraction and equivalence, on hand-made completions."""

from __future__ import annotations

import pytest

from cascade_rl.rewards import SpecError, verify
from cascade_rl.rewards.math import as_rational, extract_answer

END = "<|im_end|>"


def score(text: str, answer: str, **kw) -> float:
    return verify(text + END, {"type": "math", "answer": answer}, **kw).score


@pytest.mark.parametrize(
    ("text", "gold", "expected"),
    [
        ("So the total is \\boxed{42}.", "42", 1.0),
        ("So the total is \\boxed{41}.", "42", 0.0),
        ("We get 1,000 in total.", "1000", 1.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("\\boxed{\\dfrac{3}{4}}", "3/4", 1.0),
        ("\\boxed{0.50001}", "1/2", 0.0),
        ("\\boxed{-\\frac{2}{4}}", "-0.5", 1.0),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", 1.0),
        ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
        ("\\boxed{(x+1)^3}", "x^2+2x+1", 0.0),
        ("\\boxed{[0, 1)}", "[0,1)", 1.0),
        ("\\boxed{[0, 1]}", "[0,1)", 0.0),
        ("The angle is \\boxed{30^\\circ}", "30", 1.0),
        ("first \\boxed{1} then corrected: \\boxed{2}", "2", 1.0),
        ("first \\boxed{1} then corrected: \\boxed{2}", "1", 0.0),
        ("3 apples and 5 pears", "3", 0.0),
        ("no number here", "3", 0.0),
        ("<think>I guess \\boxed{7}</think>The answer is \\boxed{8}", "8", 1.0),
        ("<think>I guess \\boxed{7}</think>The answer is \\boxed{8}", "7", 0.0),
        ("<think>still thinking \\boxed{7}", "7", 0.0),
    ],
)
def test_math_scores(text, gold, expected):
    assert score(text, gold) == expected


def test_extraction_and_rationals():
    assert extract_answer("x \\boxed{\\frac{a}{\\sqrt{b}}} y") == "\\frac{a}{\\sqrt{b}}"
    assert extract_answer("values 1.5 then -2/3.") == "-2/3"
    assert extract_answer("\\boxed{unclosed") is None
    assert as_rational("1,234.5") == as_rational("2469/2")
    assert as_rational("\\frac{1}{0}") is None and as_rational("x+1") is None


def test_info_reports_method_and_reason():
    info = verify("\\boxed{1/2}" + END, {"type": "math", "answer": "0.5"}).info
    assert (info["pred"], info["method"]) == ("1/2", "numeric")
    assert verify("nothing" + END, {"type": "math", "answer": "1"}).info["reason"] == "no_answer"


def test_truncated_scores_zero_unless_opted_in():
    spec = {"type": "math", "answer": "4"}
    assert verify("\\boxed{4}", spec, truncated=True).info == {"reason": "truncated"}
    assert verify("\\boxed{4}", spec, truncated=True).score == 0.0
    assert verify("\\boxed{4}", {**spec, "score_truncated": True}, truncated=True).score == 1.0


@pytest.mark.parametrize("spec", [{"type": "math"}, {"type": "math", "answer": ""}, {"type": "math", "answer": None}])
def test_bad_specs(spec):
    with pytest.raises(SpecError, match="answer"):
        verify("\\boxed{1}", spec)

"""Multiple-choice verifier: letter extraction, hedging, option text."""

from __future__ import annotations

import pytest

from cascade_rl.rewards import SpecError, verify
from cascade_rl.rewards.mcqa import extract_choice

OPTIONS = ["London", "Paris", "Rome", "Berlin"]
SPEC = {"type": "mcqa", "answer": "B", "options": OPTIONS}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", 1.0),
        ("(B)", 1.0),
        ("Answer: B", 1.0),
        ("The answer is \\boxed{B}.", 1.0),
        ("\\boxed{\\text{(B)}}", 1.0),
        ("The final answer is **B**.", 1.0),
        ("Option B is correct.", 1.0),
        ("I think the answer is (B), I believe.", 1.0),
        ("A is tempting, but\nAnswer: B. Because A is wrong.", 1.0),
        ("Paris", 1.0),
        ("answer: b", 1.0),
        ("Answer: C", 0.0),
        ("Answer: A or B", 0.0),
        ("\\boxed{A, B}", 0.0),
        ("It is either B or C", 0.0),
        ("Answer: E", 0.0),
        ("I have no idea.", 0.0),
        ("<think>The answer is B</think>Answer: D", 0.0),
    ],
)
def test_mcqa_scores(text, expected):
    assert verify(text + "<|im_end|>", SPEC).score == expected


def test_extract_choice_reports_how():
    assert extract_choice("Answer: A or C") == (None, "ambiguous:assertion:AC")
    assert extract_choice("Let me look at A and B.\nSo: B") == ("B", "final_line")
    assert extract_choice("A good choice is B") == ("B", "assertion")
    assert extract_choice("Option D looks odd.\nHmm, hard to say.") == ("D", "last_letter")


def test_out_of_range_letter_and_no_options():
    assert verify("Answer: E", SPEC).info["reason"] == "letter_out_of_range"
    assert verify("Answer: J", {"type": "mcqa", "answer": "J"}).score == 1.0


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "mcqa"}, "answer"),
        ({"type": "mcqa", "answer": "K"}, "answer"),
        ({"type": "mcqa", "answer": "AB"}, "answer"),
        ({"type": "mcqa", "answer": "E", "options": OPTIONS}, "beyond"),
        ({"type": "mcqa", "answer": "A", "options": "ABCD"}, "options"),
    ],
)
def test_bad_specs(spec, field):
    with pytest.raises(SpecError, match=field):
        verify("A", spec)

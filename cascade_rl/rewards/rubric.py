"""The hidden quality rubric of the ``chat`` domain: answered, within length, format followed.

Spec::

    {"type": "rubric", "answers": ["blue", "eight"], "max_words": 12, "format": "dash"}

Score = the mean of three parts, each 0 or 1 except the first:

* **answered**: the fraction of ``answers`` that occur in the response as whole words, ignoring case
  (a word is a run of ASCII letters, digits and apostrophes, so "eight." and "Eight" count, "eighty" does not).
* **within length**: ``1 <= words <= max_words``, where a word is a run of ASCII letters (and apostrophes):
  list markers ("-", "1.") are not words, and an empty response is not within length.
* **format** (``format``), on the response with surrounding whitespace stripped:

  - ``dash``: exactly ``len(answers)`` non-empty lines, each starting with ``"- "`` and a letter or digit after it;
  - ``numbered``: exactly ``len(answers)`` non-empty lines, line ``i`` (from 1) starting with ``"{i}. "``
    and a letter or digit after it;
  - ``lowercase``: at least one letter and no uppercase letter;
  - ``uppercase``: at least one letter and no lowercase letter;
  - ``one_line``: non-empty and without a line break.

So the reference answer scores 1; an empty answer scores 0. ``info`` holds every part
(``answered``, ``words``, ``within_length``, ``format_ok``, ``missing``) so a reward-hacking analysis can
see which part a policy gave up. The rubric is "hidden" in the sense of RLHF: the policy never sees it,
only a reward model trained on pairs that it ordered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cascade_rl.chat import ParsedCompletion
from cascade_rl.rewards._util import require
from cascade_rl.rewards.base import RewardResult, SpecError, register

FORMATS = ("dash", "numbered", "lowercase", "uppercase", "one_line")
_ANSWER_RE = re.compile(r"[A-Za-z0-9']+")
_LENGTH_WORD_RE = re.compile(r"[A-Za-z']+")
_ANSWER_WORD = re.compile(r"^[A-Za-z0-9']+$")
_MARKED_RE = re.compile(r"^(?:- |(\d+)\. )[A-Za-z0-9]")


def count_words(text: str) -> int:
    """Words as the length rule counts them: runs of ASCII letters (markers and numbering do not count)."""
    return len(_LENGTH_WORD_RE.findall(text))


def format_ok(text: str, fmt: str, items: int) -> bool:
    """Whether ``text`` follows format rule ``fmt`` for ``items`` sub-questions (see the module docstring)."""
    text = text.strip()
    letters = [c for c in text if c.isascii() and c.isalpha()]
    if fmt == "lowercase":
        return bool(letters) and not any(c.isupper() for c in letters)
    if fmt == "uppercase":
        return bool(letters) and not any(c.islower() for c in letters)
    if fmt == "one_line":
        return bool(text) and "\n" not in text and "\r" not in text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != items:
        return False
    for i, line in enumerate(lines, start=1):
        match = _MARKED_RE.match(line)
        if match is None or (fmt == "dash") != (match.group(1) is None):
            return False
        if fmt == "numbered" and int(match.group(1)) != i:
            return False
    return True


def rubric_parts(text: str, answers: Sequence[str], max_words: int, fmt: str) -> dict[str, Any]:
    """Every part of the rubric for one response, and the score (their mean)."""
    present = {w.lower() for w in _ANSWER_RE.findall(text)}
    missing = [a for a in answers if a.lower() not in present]
    answered = 1.0 - len(missing) / len(answers)
    words = count_words(text)
    within = 1 <= words <= max_words
    followed = format_ok(text, fmt, len(answers))
    score = (answered + float(within) + float(followed)) / 3.0
    return {
        "score": score,
        "answered": answered,
        "missing": missing,
        "words": words,
        "within_length": within,
        "format_ok": followed,
    }


def rubric_score(text: str, spec: Mapping[str, Any]) -> float:
    """The rubric score of a plain response text (what the ``chat`` task orders its pairs by)."""
    check_rubric_spec(spec)
    return rubric_parts(text, spec["answers"], spec["max_words"], spec["format"])["score"]


def check_rubric_spec(spec: Mapping[str, Any]) -> None:
    answers = require(spec, "answers", list, "a non-empty list of single words")
    if not answers or not all(isinstance(a, str) and _ANSWER_WORD.match(a) for a in answers):
        raise SpecError(f"rubric spec: field 'answers' must be a non-empty list of single words, got {answers!r:.200}")
    max_words = require(spec, "max_words", int, "a positive integer")
    if max_words < 1:
        raise SpecError(f"rubric spec: field 'max_words' must be >= 1, got {max_words}")
    fmt = require(spec, "format", str, f"one of {', '.join(FORMATS)}")
    if fmt not in FORMATS:
        raise SpecError(f"rubric spec: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


@register("rubric")
class RubricVerifier:
    """See the module docstring."""

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        check_rubric_spec(spec)

    def __call__(self, completion: ParsedCompletion, spec: Mapping[str, Any]) -> RewardResult:
        parts = rubric_parts(completion.content, spec["answers"], spec["max_words"], spec["format"])
        score = parts.pop("score")
        return RewardResult(min(1.0, max(0.0, score)), parts)

"""Multiple-choice QA verifier.

Spec: ``{"type": "mcqa", "answer": "B", "options": ["...", ...]}`` (``options`` optional; when
given, letters beyond the option count are invalid and an answer may be given as option text).

The chosen letter (A-J) is read from the content, in order of precedence:

1. the last ``\\boxed{...}`` (``\\boxed{B}``, ``\\boxed{\\text{(B)}}``);
2. the last explicit assertion: ``Answer: B``, ``the answer is (B)``, ``correct option is B``,
   ``Option B is correct``;
3. the final non-empty line, else the last standalone letter anywhere ("B", "(B)", "B.").

Hedging is wrong: several different letters asserted together (``Answer: A or C``,
``\\boxed{A, C}``, a final line naming two letters) score 0. Bare ``A`` / ``I`` followed by a
lowercase word are read as English ("A good choice", "I think"), not as choices.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from cascade_rl.chat import ParsedCompletion
from cascade_rl.rewards._util import last_boxed, optional, require
from cascade_rl.rewards.base import RewardResult, SpecError, register

LETTERS = "ABCDEFGHIJ"
_LETTER = r"(?<![\w\\])(\()?([A-J])(\))?(?![\w'’])"
_LETTER_RE = re.compile(_LETTER)
# A further listed letter; bare A / I before a lowercase word is English ("C, I believe").
_SEP = r"\s*(?:,|/|&|\bor\b|\band\b)\s*(?:\([A-J]\)|[B-HJ](?![\w'’])|[AI](?![\w'’])(?!\s+[a-z]))"
_LIST_RE = re.compile(r"\(?([A-J])\)?(?![\w'’])((?:" + _SEP + r")*)")
_ASSERT_RE = re.compile(
    r"(?i:\b(?:final\s+|correct\s+|right\s+|best\s+)?(?:answer|option|choice)s?\s*(?:is|:|=|would\s+be|should\s+be)"
    r"|\b(?:answer|choose|select|pick)\b)[\s:*]*(?:(?i:option|choice)\s*)?"
)
_LOWER_RE = re.compile(r"\(?([a-j])\)?\.?[ \t]*$", re.M)  # "answer: b" at the end of a line
_IS_CORRECT_RE = re.compile(r"(?i:option|choice)\s*\(?([A-J])\)?\s+(?i:is\s+(?:the\s+)?(?:correct|right|answer))")
_MARKUP_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")


def _clean(text: str) -> str:
    text = _MARKUP_RE.sub(r"\1", text)
    return text.replace("**", "").replace("__", "").replace("`", "").replace("$", "")


def _letters(text: str) -> list[str]:
    """Standalone letters, skipping bare ``A`` / ``I`` used as English words."""
    found = []
    for m in _LETTER_RE.finditer(text):
        bare = m.group(1) is None and m.group(3) is None
        if bare and m.group(2) in "AI" and re.match(r"\s+[a-z]", text[m.end() :]):
            continue
        found.append(m.group(2))
    return found


def _decide(letters: list[str], source: str) -> tuple[str | None, str]:
    distinct = sorted(set(letters))
    if len(distinct) > 1:
        return None, f"ambiguous:{source}:{''.join(distinct)}"
    return (distinct[0], source) if distinct else (None, "no_answer")


def _from_options(text: str, options: list[str] | None) -> str | None:
    """Letter of the option whose text equals ``text`` (case / punctuation-insensitive)."""
    if not options:
        return None

    def norm(s: str) -> str:
        return " ".join(s.lower().translate(str.maketrans("", "", string.punctuation)).split())

    hits = [LETTERS[i] for i, opt in enumerate(options) if norm(opt) and norm(opt) == norm(text)]
    return hits[0] if len(hits) == 1 else None


def extract_choice(content: str, options: list[str] | None = None) -> tuple[str | None, str]:
    """(letter or None, how it was found / why none was)."""
    text = _clean(content)
    boxed = last_boxed(text)
    if boxed is not None:
        letter = _from_options(boxed, options)
        return (letter, "boxed_option_text") if letter else _decide(_letters(boxed), "boxed")
    claims: list[tuple[int, list[str]]] = []  # (position, letters asserted there)
    for m in _ASSERT_RE.finditer(text):
        listed = _LIST_RE.match(text, m.end())
        if listed:
            claims.append((m.start(), [listed.group(1), *re.findall(r"[A-J]", listed.group(2))]))
        elif lower := _LOWER_RE.match(text, m.end()):
            claims.append((m.start(), [lower.group(1).upper()]))
    claims.extend((m.start(), [m.group(1)]) for m in _IS_CORRECT_RE.finditer(text))
    if claims:
        return _decide(max(claims)[1], "assertion")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None, "empty"
    last = lines[-1].strip()
    letter = _from_options(last, options)
    if letter:
        return letter, "option_text"
    letter, how = _decide(_letters(last), "final_line")
    if letter is not None or how.startswith("ambiguous"):
        return letter, how
    anywhere = _letters(text)
    return (anywhere[-1], "last_letter") if anywhere else (None, "no_answer")


@register("mcqa")
class MCQAVerifier:
    """See the module docstring."""

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        answer = require(spec, "answer", str, "a single letter A-J")
        options = optional(spec, "options", list, "a list of option strings")
        if answer.strip().upper() not in LETTERS or len(answer.strip()) != 1:
            raise SpecError(f"mcqa spec: field 'answer' must be a single letter A-J, got {answer!r}")
        if options is not None:
            if not 2 <= len(options) <= len(LETTERS) or not all(isinstance(o, str) for o in options):
                raise SpecError(f"mcqa spec: field 'options' must be 2-10 strings, got {options!r:.200}")
            if LETTERS.index(answer.strip().upper()) >= len(options):
                raise SpecError(f"mcqa spec: answer {answer!r} is beyond the {len(options)} options")

    def __call__(self, completion: ParsedCompletion, spec: Mapping[str, Any]) -> RewardResult:
        gold = spec["answer"].strip().upper()
        options = spec.get("options")
        letter, how = extract_choice(completion.content, options)
        info: dict[str, Any] = {"pred": letter, "gold": gold, "method": how}
        if letter is not None and options is not None and LETTERS.index(letter) >= len(options):
            info["reason"] = "letter_out_of_range"
            return RewardResult(0.0, info)
        return RewardResult(float(letter == gold), info)

"""Math final-answer verifier.

Spec: ``{"type": "math", "answer": "42"}`` (``answer``: LaTeX or plain text; a number is accepted).

The model's answer is the last ``\\boxed{...}`` in the content (nested braces respected), else the
last number in the content. Equivalence: a fast path first (identical after light LaTeX
normalisation, or both exact rationals: ``1/2 == 0.5 == \\frac{1}{2}``, ``1,000 == 1000``), then
``math_verify`` (symbolic / numeric comparison via sympy) for everything else.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from cascade_rl.chat import ParsedCompletion
from cascade_rl.rewards._util import last_boxed, require
from cascade_rl.rewards.base import RewardResult, SpecError, register

_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_FRAC_RE = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
MAX_SYMBOLIC_CHARS = 1000
_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "^{\\circ}", "^\\circ", "\\%", "%", "$")


def extract_answer(content: str) -> str | None:
    """Last ``\\boxed{}`` contents, else the last number in ``content``, else ``None``."""
    boxed = last_boxed(content)
    if boxed is not None:
        return boxed.strip()
    numbers = _NUMBER_RE.findall(content)
    return numbers[-1] if numbers else None


def normalize(answer: str) -> str:
    """Cosmetic LaTeX differences removed (spacing, ``\\left``, ``\\text{}``, ``$``, ``%``, ``°``)."""
    s = _TEXT_RE.sub(r"\1", answer)
    for token in _DROP:
        s = s.replace(token, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def as_rational(answer: str) -> Fraction | None:
    """Exact value of a plain number (``-3``, ``0.25``, ``1,000``, ``3/4``, ``\\frac{3}{4}``), else None."""
    s = normalize(answer)
    frac = _FRAC_RE.match(s)
    if frac:
        sign, num, den = frac.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign else value
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if not re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)(/\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _math_verify_equal(gold: str, pred: str) -> bool:
    from math_verify import parse
    from math_verify import verify as mv_verify

    # math_verify times out with SIGALRM, which only works on the main thread.
    on_main = threading.current_thread() is threading.main_thread()
    limit = 5 if on_main else None
    gold_parsed = parse(f"${gold}$", parsing_timeout=limit)  # type: ignore[arg-type]
    pred_parsed = parse(f"${pred}$", parsing_timeout=limit)  # type: ignore[arg-type]
    if not gold_parsed or not pred_parsed:
        return False
    return bool(mv_verify(gold_parsed, pred_parsed, timeout_seconds=limit))


def answers_match(gold: str, pred: str) -> tuple[bool, str]:
    """(equal, method) where method is ``exact`` / ``numeric`` / ``math_verify``."""
    if normalize(gold) == normalize(pred):
        return True, "exact"
    g, p = as_rational(gold), as_rational(pred)
    if g is not None and p is not None:
        return g == p, "numeric"
    if len(pred) > MAX_SYMBOLIC_CHARS:
        return False, "too_long"  # sympy on huge expressions can take minutes
    try:
        return _math_verify_equal(gold, pred), "math_verify"
    except Exception:  # sympy / parser failures on odd model output count as "not equal"
        return False, "math_verify"


@register("math")
class MathVerifier:
    """See the module docstring."""

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        answer = require(spec, "answer", (str, int, float), "the reference answer as a string")
        if not str(answer).strip():
            raise SpecError(f"math spec: field 'answer' must be a non-empty string, got {answer!r}")

    def __call__(self, completion: ParsedCompletion, spec: Mapping[str, Any]) -> RewardResult:
        gold = str(spec["answer"]).strip()
        pred = extract_answer(completion.content)
        if pred is None:
            return RewardResult(0.0, {"reason": "no_answer", "gold": gold})
        equal, method = answers_match(gold, pred)
        return RewardResult(float(equal), {"pred": pred[:200], "gold": gold, "method": method})

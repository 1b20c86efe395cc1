"""Math word problems with integer answers.

Difficulty 0: one operation on single digits (a number-fact lookup, no multi-digit carries,
which MINIATURE.md shows a tiny model cannot learn in minutes). Difficulty 1: two or three
steps on two-digit numbers. Difficulty 2: three to five steps (money, averages, rates, teams).
The final content always ends with the answer ("The answer is 12.") because the verifier
reads the last number.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from cascade_rl.data.tasks.base import Problem, make_problem
from cascade_rl.data.tasks.vocab import NAMES, NOUNS

Draft = tuple[str, int, str]  # (user text, answer, reasoning)


def _fact(rng: random.Random) -> Draft:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}."
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", a - b, f"{a} - {b} = {a - b}."


def _gets_more(rng: random.Random) -> Draft:
    name, noun = rng.choice(NAMES), rng.choice(NOUNS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    user = f"{name} has {a} {noun} and gets {b} more. How many {noun} does {name} have?"
    return user, a + b, f"{a} + {b} = {a + b}."


def _gives_away(rng: random.Random) -> Draft:
    name, noun = rng.choice(NAMES), rng.choice(NOUNS)
    a = rng.randint(2, 9)
    b = rng.randint(1, a - 1)
    user = f"{name} has {a} {noun} and gives {b} away. How many {noun} does {name} have?"
    return user, a - b, f"{a} - {b} = {a - b}."


def _in_all(rng: random.Random) -> Draft:
    first, second = rng.sample(NAMES, 2)
    noun = rng.choice(NOUNS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    user = f"{first} has {a} {noun}. {second} has {b} {noun}. How many {noun} in all?"
    return user, a + b, f"{a} + {b} = {a + b}."


def _packs(rng: random.Random) -> Draft:
    name, noun = rng.choice(NAMES), rng.choice(NOUNS)
    a, k, m = rng.randint(10, 40), rng.randint(2, 5), rng.randint(2, 9)
    total = a + k * m
    c = rng.randint(1, total - 1)
    user = (
        f"{name} has {a} {noun}, buys {k} packs of {m} {noun} and then gives away {c}. "
        f"How many {noun} does {name} have now?"
    )
    trace = f"{k} * {m} = {k * m}. {a} + {k * m} = {total}. {total} - {c} = {total - c}."
    return user, total - c, trace


def _boxes(rng: random.Random) -> Draft:
    name, noun = rng.choice(NAMES), rng.choice(NOUNS)
    m, k = rng.randint(3, 12), rng.randint(2, 9)
    r = rng.randint(1, m - 1)
    user = f"A box holds {m} {noun}. {name} fills {k} boxes and has {r} {noun} left. How many {noun} in all?"
    return user, k * m + r, f"{k} * {m} = {k * m}. {k * m} + {r} = {k * m + r}."


def _times_as_many(rng: random.Random) -> Draft:
    first, second = rng.sample(NAMES, 2)
    noun = rng.choice(NOUNS)
    a, k = rng.randint(2, 20), rng.randint(2, 5)
    user = f"{first} has {a} {noun}. {second} has {k} times as many. How many {noun} do they have together?"
    return user, a + k * a, f"{k} * {a} = {k * a}. {a} + {k * a} = {a + k * a}."


def _pages(rng: random.Random) -> Draft:
    name = rng.choice(NAMES)
    p, d, q = rng.randint(5, 25), rng.randint(2, 7), rng.randint(3, 30)
    user = f"{name} reads {p} pages a day for {d} days, then {q} more pages. How many pages in total?"
    return user, p * d + q, f"{p} * {d} = {p * d}. {p * d} + {q} = {p * d + q}."


def _bags(rng: random.Random) -> Draft:
    name, noun = rng.choice(NAMES), rng.choice(NOUNS)
    k, m, c = rng.randint(2, 6), rng.randint(3, 12), rng.randint(1, 9)
    user = (
        f"{name} splits {k * m} {noun} equally into {k} bags, then adds {c} to one bag. "
        f"How many {noun} are in that bag?"
    )
    return user, m + c, f"{k * m} / {k} = {m}. {m} + {c} = {m + c}."


def _change(rng: random.Random) -> Draft:
    name = rng.choice(NAMES)
    item_a, item_b = rng.sample(NOUNS, 2)
    p, q, x, y = rng.randint(2, 15), rng.randint(2, 15), rng.randint(2, 6), rng.randint(2, 6)
    total = p * x + q * y
    bill = next(b for b in (50, 100, 200, 500) if b >= total)
    user = (
        f"{item_a.capitalize()} cost {p} dollars each and {item_b} cost {q} dollars each. "
        f"{name} buys {x} {item_a} and {y} {item_b} and pays with {bill} dollars. How much change?"
    )
    trace = f"{x} * {p} = {p * x}. {y} * {q} = {q * y}. {p * x} + {q * y} = {total}. {bill} - {total} = {bill - total}."
    return user, bill - total, trace


def _average(rng: random.Random) -> Draft:
    name = rng.choice(NAMES)
    s1, s2 = rng.randint(50, 100), rng.randint(50, 100)
    # the third score makes the sum divisible by 3 so the average is an integer
    s3 = rng.choice([s for s in range(50, 101) if (s1 + s2 + s) % 3 == 0])
    total = s1 + s2 + s3
    user = f"{name} scores {s1}, {s2} and {s3} on three tests. What is the average score?"
    trace = f"{s1} + {s2} + {s3} = {total}. {total} / 3 = {total // 3}."
    return user, total // 3, trace


def _half(rng: random.Random) -> Draft:
    name = rng.choice(NAMES)
    a = 2 * rng.randint(20, 150)
    c = rng.randint(5, a // 2 - 1)
    e = rng.randint(10, 99)
    left = a // 2 - c + e
    user = (
        f"{name} has {a} dollars, spends half on books, then {c} dollars on lunch, "
        f"then earns {e} dollars. How many dollars does {name} have now?"
    )
    trace = f"{a} / 2 = {a // 2}. {a // 2} - {c} = {a // 2 - c}. {a // 2 - c} + {e} = {left}."
    return user, left, trace


def _pool(rng: random.Random) -> Draft:
    a, r, t = rng.randint(100, 900), rng.randint(5, 40), rng.randint(3, 12)
    lost = rng.randint(10, a + r * t - 1)
    end = a + r * t - lost
    user = (
        f"A pool has {a} liters. It gains {r} liters a minute for {t} minutes, "
        f"then loses {lost} liters. How many liters are in the pool?"
    )
    trace = f"{r} * {t} = {r * t}. {a} + {r * t} = {a + r * t}. {a + r * t} - {lost} = {end}."
    return user, end, trace


def _teams(rng: random.Random) -> Draft:
    k, m, t = rng.randint(2, 6), rng.randint(15, 35), rng.randint(3, 8)
    students = k * m
    absent = students % t + t * rng.randint(0, 2)  # keeps the rest divisible into full teams
    if absent >= students:
        absent = students % t
    rest = students - absent
    user = (
        f"{k} classes have {m} students each. {absent} students are absent and the rest "
        f"form teams of {t}. How many teams are there?"
    )
    trace = f"{k} * {m} = {students}. {students} - {absent} = {rest}. {rest} / {t} = {rest // t}."
    return user, rest // t, trace


LEVELS: tuple[tuple[Callable[[random.Random], Draft], ...], ...] = (
    (_fact, _gets_more, _gives_away, _in_all),
    (_packs, _boxes, _times_as_many, _pages, _bags),
    (_change, _average, _half, _pool, _teams),
)


class MathTask:
    """Integer word problems; spec ``{"type": "math", "answer": "<int>"}``."""

    name = "math"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        level = LEVELS[min(difficulty, len(LEVELS) - 1)]
        user, value, trace = rng.choice(level)(rng)
        return make_problem(
            self.name,
            difficulty,
            user=user,
            spec={"type": "math", "answer": str(value)},
            answer=f"The answer is {value}.",
            reasoning=trace,
        )

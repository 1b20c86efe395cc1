"""Multiple-choice questions answerable from the prompt alone.

Difficulty 0 (3 options): largest / smallest of three small numbers, a one-digit sum, and a
single comparison between two people. Difficulty 1 (4 options): two-step comparison chains,
two-digit sums and differences, alphabetical order, parity. Difficulty 2 (5 options): three-step
chains with mixed directions, products, multiples and short word problems.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

from cascade_rl.data.tasks.base import Problem, make_problem
from cascade_rl.data.tasks.vocab import NAMES, NOUNS, WORDS

LETTERS = "ABCDEFGH"
OPTION_COUNT = (3, 4, 5)

# (adjective for "more", adjective for "less", superlative more, superlative less)
COMPARATIVES = (
    ("older", "younger", "oldest", "youngest"),
    ("taller", "shorter", "tallest", "shortest"),
    ("faster", "slower", "fastest", "slowest"),
    ("stronger", "weaker", "strongest", "weakest"),
)

# (question, correct option, distractors, reasoning); the options are shuffled afterwards.
Draft = tuple[str, str, list[str], str]


def _distinct_numbers(rng: random.Random, k: int, lo: int, hi: int) -> list[int]:
    return rng.sample(range(lo, hi + 1), k)


def _near_misses(rng: random.Random, value: int, k: int, spread: int) -> list[str]:
    """k wrong numeric options close to the answer (what a careless sum would give)."""
    pool = [value + d for d in range(-spread, spread + 1) if d != 0 and value + d >= 0]
    return [str(v) for v in rng.sample(pool, k)]


def _extreme(rng: random.Random, k: int, hi: int) -> Draft:
    numbers = _distinct_numbers(rng, k, 1, hi)
    largest = rng.random() < 0.5
    best = max(numbers) if largest else min(numbers)
    word = "largest" if largest else "smallest"
    rest = [str(n) for n in numbers if n != best]
    return f"Which number is {word}?", str(best), rest, f"The {word} of {', '.join(map(str, numbers))} is {best}."


def _sum(rng: random.Random, k: int, lo: int, hi: int) -> Draft:
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    if rng.random() < 0.5 or a == b:
        value, question, trace = a + b, f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
    else:
        a, b = max(a, b), min(a, b)
        value, question, trace = a - b, f"What is {a} - {b}?", f"{a} - {b} = {a - b}."
    return question, str(value), _near_misses(rng, value, k - 1, max(3, k)), trace


def _compare_pair(rng: random.Random, k: int) -> Draft:
    more, less, _, _ = rng.choice(COMPARATIVES)
    people = rng.sample(NAMES, k)
    first, second = people[0], people[1]
    ask_more = rng.random() < 0.5
    answer = first if ask_more else second
    question = f"{first} is {more} than {second}. Who is {more if ask_more else less}?"
    trace = f"{first} is {more}, so {second} is {less}."
    return question, answer, [p for p in people if p != answer], trace


def _chain(rng: random.Random, k: int, steps: int) -> Draft:
    """A line of people ordered by one quality; facts given pairwise, in random order and wording."""
    more, less, most, least = rng.choice(COMPARATIVES)
    people = rng.sample(NAMES, max(k, steps + 1))
    line = people[: steps + 1]  # line[0] has the most of the quality
    facts = []
    for upper, lower in itertools.pairwise(line):
        if rng.random() < 0.5:
            facts.append(f"{upper} is {more} than {lower}.")
        else:
            facts.append(f"{lower} is {less} than {upper}.")
    rng.shuffle(facts)
    ask_most = rng.random() < 0.5
    answer = line[0] if ask_most else line[-1]
    distractors = [p for p in people if p != answer]
    question = " ".join(facts) + f" Who is {most if ask_most else least}?"
    trace = f"From {most} to {least}: {', '.join(line)}. The answer is {answer}."
    return question, answer, distractors[: k - 1], trace


def _alphabet(rng: random.Random, k: int) -> Draft:
    words = rng.sample(list(WORDS), k)
    while len({w[0] for w in words}) < k:  # distinct first letters keep it a one-letter comparison
        words = rng.sample(list(WORDS), k)
    first = min(words)
    rest = [w for w in words if w != first]
    return "Which word comes first in ABC order?", first, rest, f"Sorted: {', '.join(sorted(words))}."


def _parity(rng: random.Random, k: int) -> Draft:
    want_even = rng.random() < 0.5
    target = rng.choice([n for n in range(10, 100) if (n % 2 == 0) == want_even])
    others = rng.sample([n for n in range(10, 100) if (n % 2 == 0) != want_even], k - 1)
    word = "even" if want_even else "odd"
    return f"Which number is {word}?", str(target), [str(n) for n in others], f"{target} is {word}."


def _product(rng: random.Random, k: int) -> Draft:
    a, b = rng.randint(11, 49), rng.randint(2, 9)
    value = a * b
    wrong = {value + d for d in (-b, b, -10, 10, -1, 1, 2 * b) if value + d > 0}
    distractors = [str(v) for v in rng.sample(sorted(wrong - {value}), k - 1)]
    trace = f"{a} * {b} = {a - a % 10} * {b} + {a % 10} * {b} = {value}."
    return f"What is {a} * {b}?", str(value), distractors, trace


def _multiple(rng: random.Random, k: int) -> Draft:
    d = rng.randint(3, 9)
    target = d * rng.randint(3, 11)
    pool = [n for n in range(10, 100) if n % d != 0]
    others = [str(n) for n in rng.sample(pool, k - 1)]
    return f"Which number is a multiple of {d}?", str(target), others, f"{target} = {d} * {target // d}."


def _word_problem(rng: random.Random, k: int) -> Draft:
    name, noun = rng.choice(NAMES), rng.choice(NOUNS)
    a, b, c = rng.randint(10, 60), rng.randint(2, 9), rng.randint(2, 9)
    value = a + b * c
    question = f"{name} has {a} {noun} and buys {b} bags of {c} {noun}. How many {noun} does {name} have?"
    trace = f"{b} * {c} = {b * c}. {a} + {b * c} = {value}."
    return question, str(value), _near_misses(rng, value, k - 1, 9), trace


LEVELS: tuple[tuple[Callable[[random.Random, int], Draft], ...], ...] = (
    (lambda r, k: _extreme(r, k, 9), lambda r, k: _sum(r, k, 1, 9), _compare_pair),
    (lambda r, k: _chain(r, k, 2), lambda r, k: _sum(r, k, 10, 60), _alphabet, _parity,
     lambda r, k: _extreme(r, k, 99)),
    (lambda r, k: _chain(r, k, 3), _product, _multiple, _word_problem, lambda r, k: _sum(r, k, 100, 500)),
)  # fmt: skip


class McqaTask:
    """Lettered options on separate lines; spec ``{"type": "mcqa", "answer", "options"}``."""

    name = "mcqa"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        level = min(difficulty, len(LEVELS) - 1)
        k = OPTION_COUNT[level]
        question, correct, distractors, trace = rng.choice(LEVELS[level])(rng, k)
        options = [correct, *distractors[: k - 1]]
        rng.shuffle(options)
        letter = LETTERS[options.index(correct)]
        lines = "\n".join(f"{LETTERS[i]}) {opt}" for i, opt in enumerate(options))
        return make_problem(
            self.name,
            difficulty,
            user=f"{question}\n{lines}",
            spec={"type": "mcqa", "answer": letter, "options": options},
            answer=f"Answer: {letter}",
            reasoning=f"{trace} That is option {letter}.",
        )

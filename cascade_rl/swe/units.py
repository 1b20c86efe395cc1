"""The building blocks of procedural repositories: small functions, each with bugs that can be injected.

A ``Unit`` is the source of one public function (sometimes with a private helper), written with
``$fn`` / ``$h`` for the names drawn per repository, plus the ways it can be broken: each ``Bug``
replaces one exact snippet of the correct source (``good``) by a wrong one (``bad``). ``cases``
draws argument tuples to call the function with; the generator keeps those on which the correct
and the broken code agree (tests that pass either way) and those on which they differ (the tests
the fix must make pass). Every unit is self-contained, so a module is just units one after another.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

Cases = Callable[[random.Random], list[tuple[object, ...]]]
KINDS = ("off_by_one", "wrong_operator", "missing_case", "swapped_arguments", "wrong_default")


@dataclass(frozen=True)
class Bug:
    kind: str  # one of KINDS
    good: str  # exact snippet of the correct source ($fn / $h not yet substituted)
    bad: str  # what replaces it in the broken repository
    note: str  # what is wrong, in the fixer's words (the reference's reasoning)


@dataclass(frozen=True)
class Unit:
    key: str
    names: tuple[str, ...]  # names the public function can take
    source: str
    bugs: tuple[Bug, ...]
    cases: Cases
    helpers: tuple[str, ...] = ()  # names the private helper can take (when the source has $h)


def _ints(rng: random.Random, n: int, lo: int = -5, hi: int = 9) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def _chunk_cases(rng: random.Random) -> list[tuple[object, ...]]:
    return [(_ints(rng, rng.randint(0, 7), 0, 9), rng.randint(1, 4)) for _ in range(12)]


def _window_cases(rng: random.Random) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for _ in range(12):
        values = _ints(rng, rng.randint(1, 6), 0, 12)
        out.append((values, rng.randint(1, len(values))))
    return out


def _price_cases(rng: random.Random) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = [(rng.choice((20, 40, 80, 200)),)]
    for _ in range(10):
        price = rng.choice((10, 20, 40, 50, 80, 100, 120, 200))
        out.append((price,) if rng.random() < 0.3 else (price, rng.choice((0, 5, 20, 25, 50))))
    return out


def _score_cases(rng: random.Random) -> list[tuple[object, ...]]:
    return [(s,) for s in (90, 80, 70, rng.randint(91, 100), rng.randint(81, 89), rng.randint(71, 79), 55)]


def _divide_cases(rng: random.Random) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = [(rng.randint(1, 9), 0), (rng.randint(1, 9), 0, -1)]
    out += [(rng.randint(0, 20), rng.choice((1, 2, 4, 5))) for _ in range(6)]
    return out


def _progress_cases(rng: random.Random) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = [(0, 0), (0, rng.randint(2, 9)), (4, 4)]
    for _ in range(6):
        total = rng.randint(1, 9)
        out.append((rng.randint(1, total), total))
    return out


WORDS = ("cat", "river", "lamp", "stone", "ox", "garden", "mint", "sky", "tea", "owl")


def _pad_cases(rng: random.Random) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for _ in range(10):
        word = rng.choice(WORDS)
        width = rng.randint(len(word) - 1, len(word) + 4)
        out.append((word, width) if rng.random() < 0.5 else (word, width, rng.choice("*-.")))
    return out


def _unique_cases(rng: random.Random) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = [([rng.randint(1, 3)] * 3,), ([],)]
    for _ in range(8):
        values = _ints(rng, rng.randint(2, 6), 0, 5)
        out.append((values,) if rng.random() < 0.5 else (values, rng.random() < 0.5))
    return out


def _list_cases(rng: random.Random) -> list[tuple[object, ...]]:
    return [([],), ([rng.randint(1, 9)],)] + [(_ints(rng, rng.randint(2, 6)),) for _ in range(8)]


def _power_cases(rng: random.Random) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = [([2],), ([],), ([2, 2], 2)]
    for _ in range(8):
        values = _ints(rng, rng.randint(1, 4), 0, 5)
        out.append((values,) if rng.random() < 0.4 else (values, rng.randint(0, 3)))
    return out


def _range_cases(rng: random.Random) -> list[tuple[object, ...]]:
    low = rng.randint(0, 5)
    high = low + rng.randint(2, 6)
    return [(low, low, high), (high, low, high), (low - 1, low, high), (high + 1, low, high), (low + 1, low, high)]


def _word_cases(rng: random.Random) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for _ in range(8):
        words = [rng.choice(WORDS[:4]) for _ in range(rng.randint(1, 6))]
        words = [w.capitalize() if rng.random() < 0.3 else w for w in words]
        out.append((" ".join(words), rng.choice(WORDS[:4])))
    return out


def _number_cases(rng: random.Random) -> list[tuple[object, ...]]:
    return [(n,) for n in (15, 30, 3, 5, 7, 9, 10, 1, rng.randint(1, 60), rng.randint(1, 60))]


def _day_cases(rng: random.Random) -> list[tuple[object, ...]]:
    return [(d, d) for d in (rng.randint(1, 300),)] + [(rng.randint(1, 200), rng.randint(1, 365)) for _ in range(6)]


def _cut_cases(rng: random.Random) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for _ in range(10):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        limit = rng.randint(3, len(text) + 2)
        out.append((text, limit) if rng.random() < 0.6 else (text, limit, rng.choice(("~", "!"))))
    out.append((rng.choice(WORDS[:4]), 3))
    return out


UNITS: tuple[Unit, ...] = (
    Unit("chunk", ("chunk", "batches", "split_every", "groups_of"),
         '''def $fn(items, size):
    """Split items into consecutive lists of at most size items."""
    out = []
    for start in range(0, len(items), size):
        out.append(items[start:start + size])
    return out
''',
         (Bug("off_by_one", "items[start:start + size]", "items[start:start + size - 1]",
              "The slice stops one item short of size."),
          Bug("off_by_one", "range(0, len(items), size)", "range(0, len(items) - 1, size)",
              "The loop stops before a last chunk of one item.")),
         _chunk_cases),
    Unit("window", ("moving_average", "rolling_mean", "window_means", "sliding_average"),
         '''def $fn(values, window):
    """The mean of every run of window consecutive values."""
    return [sum(values[i:i + window]) / window for i in range(len(values) - window + 1)]
''',
         (Bug("off_by_one", "range(len(values) - window + 1)", "range(len(values) - window)",
              "The range leaves out the last window."),),
         _window_cases),
    Unit("discount", ("apply_discount", "discounted", "sale_price", "price_after"),
         '''def $fn(price, percent=10):
    """The price after taking percent off (10 percent unless told otherwise), rounded to cents."""
    return round(price * (100 - percent) / 100, 2)
''',
         (Bug("wrong_default", "percent=10", "percent=15", "The default discount is 15, the docs say 10."),
          Bug("wrong_operator", "(100 - percent)", "(100 + percent)", "The percentage is added instead of taken off.")),
         _price_cases),
    Unit("grade", ("letter_grade", "grade_for", "to_grade", "score_letter"),
         '''def $fn(score):
    """Letter grade of a score: A from 90, B from 80, C from 70, else F."""
    if score >= 90:
        return "A"
    if score >= 80:
        return "B"
    if score >= 70:
        return "C"
    return "F"
''',
         (Bug("wrong_operator", "score >= 90", "score > 90", "A score of exactly 90 must be an A: >= not >."),
          Bug("missing_case", '    if score >= 80:\n        return "B"\n', "", "The B band is missing.")),
         _score_cases),
    Unit("divide", ("safe_divide", "divide_or", "quotient", "checked_div"),
         '''def $fn(numerator, denominator, default=0):
    """numerator / denominator, or default (0 unless given) when denominator is zero."""
    if denominator == 0:
        return default
    return numerator / denominator
''',
         (Bug("missing_case", "    if denominator == 0:\n        return default\n", "",
              "A zero denominator is not handled."),
          Bug("wrong_default", "default=0", "default=1", "The default is 1, the docs say 0.")),
         _divide_cases),
    Unit("progress", ("completion", "percent_done", "progress", "done_share"),
         '''def $h(part, whole):
    return part / whole


def $fn(done, total):
    """Percentage of tasks done, rounded to one decimal; 0.0 when there are no tasks."""
    if total == 0:
        return 0.0
    return round(100 * $h(done, total), 1)
''',
         (Bug("swapped_arguments", "$h(done, total)", "$h(total, done)", "The helper gets its arguments swapped."),
          Bug("missing_case", "    if total == 0:\n        return 0.0\n", "", "No tasks at all is not handled.")),
         _progress_cases, ("_ratio", "_fraction", "_share")),
    Unit("pad", ("pad_left", "right_align", "left_fill", "justify"),
         '''def $fn(text, width, fill=" "):
    """text right-aligned in width characters, padded on the left with fill (a space by default)."""
    if len(text) >= width:
        return text
    return fill * (width - len(text)) + text
''',
         (Bug("off_by_one", "(width - len(text))", "(width - len(text) - 1)", "The padding is one character short."),
          Bug("wrong_default", 'fill=" "', 'fill="0"', "The default fill is '0', the docs say a space.")),
         _pad_cases),
    Unit("unique", ("unique_sorted", "distinct", "sorted_set", "dedupe_sorted"),
         '''def $fn(items, descending=False):
    """The distinct items, smallest first (largest first when descending is true)."""
    return sorted(set(items), reverse=descending)
''',
         (Bug("wrong_default", "descending=False", "descending=True", "The default order is descending."),),
         _unique_cases),
    Unit("runmax", ("running_max", "best_so_far", "peak_trace", "prefix_max"),
         '''def $fn(values):
    """For each position, the largest value seen so far."""
    out = []
    best = None
    for value in values:
        if best is None or value > best:
            best = value
        out.append(best)
    return out
''',
         (Bug("wrong_operator", "value > best", "value < best", "It keeps the smallest value, not the largest."),
          Bug("missing_case", "if best is None or value > best", "if value > best",
              "The first value (nothing seen yet) is not handled.")),
         _list_cases),
    Unit("power", ("power_all", "raise_each", "powers", "lift"),
         '''def $h(base, exponent):
    result = 1
    for _ in range(exponent):
        result *= base
    return result


def $fn(values, exponent=2):
    """Each value raised to exponent (squares by default)."""
    return [$h(value, exponent) for value in values]
''',
         (Bug("swapped_arguments", "$h(value, exponent)", "$h(exponent, value)", "Base and exponent are swapped."),
          Bug("wrong_default", "exponent=2", "exponent=3", "The default exponent is 3, the docs say squares.")),
         _power_cases, ("_power", "_pow", "_raise")),
    Unit("between", ("in_range", "between", "within", "is_inside"),
         '''def $fn(value, low, high):
    """True when low <= value <= high (both ends included)."""
    return low <= value <= high
''',
         (Bug("wrong_operator", "low <= value <= high", "low < value <= high", "The low end is excluded."),
          Bug("wrong_operator", "low <= value <= high", "low <= value < high", "The high end is excluded.")),
         _range_cases),
    Unit("count", ("count_word", "word_count", "occurrences", "tally_word"),
         '''def $fn(text, word):
    """How many words of text equal word, ignoring case."""
    target = word.lower()
    return sum(1 for token in text.split() if token.lower() == target)
''',
         (Bug("missing_case", "token.lower() == target", "token == target", "Capitalised words are not counted."),),
         _word_cases),
    Unit("fizz", ("fizzbuzz", "label", "fizz_label", "game_word"),
         '''def $fn(n):
    """"FizzBuzz" for multiples of 15, "Fizz" for multiples of 3, "Buzz" for multiples of 5, else str(n)."""
    if n % 15 == 0:
        return "FizzBuzz"
    if n % 3 == 0:
        return "Fizz"
    if n % 5 == 0:
        return "Buzz"
    return str(n)
''',
         (Bug("missing_case", '    if n % 15 == 0:\n        return "FizzBuzz"\n', "",
              "Multiples of 15 are not handled."),
          Bug("wrong_operator", "n % 5 == 0", "n % 5 == 1", "The test for multiples of 5 compares with 1.")),
         _number_cases),
    Unit("days", ("days_between", "day_span", "elapsed_days", "gap_days"),
         '''def $h(start, end):
    return end - start


def $fn(start_day, end_day):
    """Days from start_day to end_day (negative when end_day comes first)."""
    return $h(start_day, end_day)
''',
         (Bug("swapped_arguments", "$h(start_day, end_day)", "$h(end_day, start_day)",
              "The helper gets start and end swapped."),),
         _day_cases, ("_diff", "_delta", "_span")),
    Unit("cut", ("truncate", "shorten", "clip_text", "ellipsize"),
         '''def $fn(text, limit, suffix="..."):
    """text cut to at most limit characters, ending in suffix when it had to be cut."""
    if len(text) <= limit:
        return text
    return text[:limit - len(suffix)] + suffix
''',
         (Bug("off_by_one", "len(text) <= limit", "len(text) < limit", "A text of exactly limit characters is cut."),
          Bug("wrong_default", 'suffix="..."', 'suffix=".."', "The default suffix is '..', the docs say '...'.")),
         _cut_cases),
)  # fmt: skip

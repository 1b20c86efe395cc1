"""Python function writing, checked by HumanEval-style ``check(candidate)`` tests.

Difficulty 0: one-line functions (arithmetic on one or two arguments, string case / reverse /
length, list length / sum / max / min) with varied function and argument names and small
constants. Difficulty 1: short loops and conditions. Difficulty 2: classic small algorithms
(gcd, primes, run-length encoding, Fibonacci, ...) and, for some, stdin -> stdout programs
judged on input / output cases. Test inputs are drawn per problem and the
expected values come from a Python reference, so every test is consistent with the answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from math import gcd
from typing import Any

from cascade_rl.data.tasks.base import Problem, make_problem
from cascade_rl.data.tasks.code_stdin import program_problem

Inputs = Callable[[random.Random], tuple[Any, ...]]


@dataclass(frozen=True)
class Family:
    """One kind of function; ``{0}``, ``{1}``, ... in ``desc`` / ``body`` are the argument names."""

    names: tuple[str, ...]
    params: tuple[tuple[str, ...], ...]
    desc: str  # completes "that returns ..."
    body: str  # indented function body
    ref: Callable[..., Any]  # reference implementation; receives k=... when ``consts`` is set
    inputs: Inputs
    hint: str
    consts: tuple[int, ...] = ()


PAIRS = (("a", "b"), ("x", "y"), ("m", "n"), ("p", "q"), ("u", "v"), ("i", "j"))
ONE_NUM = (("x",), ("n",), ("k",), ("v",), ("num",), ("y",))
ONE_STR = (("s",), ("text",), ("word",), ("w",), ("name",), ("line",))
ONE_LIST = (("xs",), ("nums",), ("items",), ("values",), ("lst",), ("data",))


def _ints(lo: int, hi: int, count: int) -> Inputs:
    return lambda r: tuple(r.randint(lo, hi) for _ in range(count))


def _word(r: random.Random) -> tuple[Any, ...]:
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return ("".join(r.choice(letters) for _ in range(r.randint(1, 8))),)


def _lower_word(r: random.Random) -> tuple[Any, ...]:
    return ("".join(r.choice("abcdeiou") for _ in range(r.randint(0, 9))),)


def _num_list(r: random.Random) -> tuple[Any, ...]:
    return ([r.randint(-20, 50) for _ in range(r.randint(1, 6))],)


LEVEL0 = (
    Family(("add", "plus", "total", "combine", "add_two"), PAIRS, "{0} plus {1}", "return {0} + {1}",
           lambda a, b: a + b, _ints(-20, 50, 2), "Add the two numbers."),
    Family(("subtract", "minus", "diff", "take", "less"), PAIRS, "{0} minus {1}", "return {0} - {1}",
           lambda a, b: a - b, _ints(-20, 50, 2), "Subtract the second from the first."),
    Family(("multiply", "times", "product", "mul", "prod"), PAIRS, "{0} times {1}", "return {0} * {1}",
           lambda a, b: a * b, _ints(-9, 12, 2), "Multiply the two numbers."),
    Family(("larger", "bigger", "max_of", "top", "max2"), PAIRS, "the larger of {0} and {1}", "return max({0}, {1})",
           max, _ints(-20, 50, 2), "Use max."),
    Family(("add_k", "shift", "bump", "up"), ONE_NUM, "{0} plus {k}", "return {0} + {k}",
           lambda x, k: x + k, _ints(-20, 50, 1), "Add the constant.", tuple(range(1, 10))),
    Family(("scale", "mult_k", "grow", "boost"), ONE_NUM, "{0} times {k}", "return {0} * {k}",
           lambda x, k: x * k, _ints(-9, 20, 1), "Multiply by the constant.", tuple(range(2, 10))),
    Family(("minus_k", "lower_by", "drop", "down"), ONE_NUM, "{0} minus {k}", "return {0} - {k}",
           lambda x, k: x - k, _ints(-20, 50, 1), "Subtract the constant.", tuple(range(1, 10))),
    Family(("mod_k", "remainder", "rem", "leftover"), ONE_NUM, "the remainder of {0} divided by {k}",
           "return {0} % {k}", lambda x, k: x % k, _ints(0, 99, 1), "Use %.", tuple(range(2, 10))),
    Family(("square", "sq", "squared", "self_mul"), ONE_NUM, "{0} squared", "return {0} * {0}",
           lambda x: x * x, _ints(-12, 12, 1), "Multiply the number by itself."),
    Family(("shout", "to_upper", "upper_case", "caps"), ONE_STR, "{0} in upper case", "return {0}.upper()",
           str.upper, _word, "Use str.upper."),
    Family(("whisper", "to_lower", "lower_case", "small"), ONE_STR, "{0} in lower case", "return {0}.lower()",
           str.lower, _word, "Use str.lower."),
    Family(("reverse", "flip", "backwards", "mirror"), ONE_STR, "{0} reversed", "return {0}[::-1]",
           lambda s: s[::-1], _word, "Slice with step -1."),
    Family(("first", "first_char", "head", "initial"), ONE_STR, "the first character of {0}",
           "return {0}[0]", lambda s: s[0], _word, "Index 0."),
    Family(("twice", "double_str", "echo", "repeat2"), ONE_STR, "{0} written twice", "return {0} + {0}",
           lambda s: s + s, _word, "Concatenate the string with itself."),
    Family(("length", "size", "count_chars", "str_len"), ONE_STR, "the length of {0}", "return len({0})",
           len, _word, "Use len."),
    Family(("count", "list_len", "how_many", "n_items"), ONE_LIST, "the number of items in {0}",
           "return len({0})", len, _num_list, "Use len."),
    Family(("sum_all", "list_sum", "add_up", "total_of"), ONE_LIST, "the sum of {0}", "return sum({0})",
           sum, _num_list, "Use sum."),
    Family(("biggest", "list_max", "peak", "highest"), ONE_LIST, "the largest number in {0}",
           "return max({0})", max, _num_list, "Use max."),
    Family(("smallest", "list_min", "lowest", "least"), ONE_LIST, "the smallest number in {0}",
           "return min({0})", min, _num_list, "Use min."),
    Family(("last", "last_item", "tail", "final"), ONE_LIST, "the last item of {0}",
           "return {0}[-1]", lambda xs: xs[-1], _num_list, "Index -1."),
)  # fmt: skip


def _factorial(n: int) -> int:
    out = 1
    for i in range(2, n + 1):
        out *= i
    return out


def _pair_char(r: random.Random) -> tuple[Any, ...]:
    (s,) = _lower_word(r)
    return s, r.choice("abcde")


LEVEL1 = (
    Family(("count_char", "occurrences", "tally", "char_count"), (("s", "c"), ("text", "ch"), ("word", "letter")),
           "how many times {1} appears in {0}",
           "n = 0\n    for ch_ in {0}:\n        if ch_ == {1}:\n            n += 1\n    return n",
           lambda s, c: s.count(c), _pair_char, "Loop over the string and count matches."),
    Family(("sum_evens", "even_total", "add_evens"), ONE_LIST, "the sum of the even numbers in {0}",
           "total = 0\n    for v_ in {0}:\n        if v_ % 2 == 0:\n            total += v_\n    return total",
           lambda xs: sum(v for v in xs if v % 2 == 0), _num_list, "Add only numbers divisible by 2."),
    Family(("factorial", "fact", "prod_to"), ONE_NUM, "the product of 1 to {0} (1 when {0} is 0)",
           "out = 1\n    for i in range(2, {0} + 1):\n        out *= i\n    return out",
           _factorial, _ints(0, 10, 1), "Multiply 1..n in a loop."),
    Family(("is_even", "even", "check_even"), ONE_NUM, "True if {0} is even, else False",
           "return {0} % 2 == 0", lambda n: n % 2 == 0, _ints(-50, 50, 1), "Check the remainder by 2."),
    Family(("sign", "signum", "sign_of"), ONE_NUM, "1 if {0} is positive, -1 if negative and 0 if zero",
           "if {0} > 0:\n        return 1\n    if {0} < 0:\n        return -1\n    return 0",
           lambda x: (x > 0) - (x < 0), _ints(-9, 9, 1), "Compare with zero."),
    Family(("count_vowels", "vowels", "n_vowels"), ONE_STR, "the number of vowels (aeiou) in {0}",
           "return sum(1 for ch_ in {0} if ch_ in 'aeiou')",
           lambda s: sum(1 for c in s if c in "aeiou"), _lower_word, "Count letters in 'aeiou'."),
    Family(("positives", "keep_positive", "only_pos"), ONE_LIST, "a list of the positive numbers in {0}",
           "return [v_ for v_ in {0} if v_ > 0]", lambda xs: [v for v in xs if v > 0], _num_list,
           "Filter with a comprehension."),
    Family(("countdown", "count_down", "down_from"), ONE_NUM, "the list [{0}, {0}-1, ..., 1]",
           "return list(range({0}, 0, -1))", lambda n: list(range(n, 0, -1)), _ints(0, 9, 1),
           "Use range with step -1."),
    Family(("sum_above", "total_over", "add_big", "big_sum"), ONE_LIST,
           "the sum of the numbers in {0} greater than {k}",
           "total = 0\n    for v_ in {0}:\n        if v_ > {k}:\n            total += v_\n    return total",
           lambda xs, k: sum(v for v in xs if v > k), _num_list, "Loop and add the big ones.", tuple(range(0, 10))),
    Family(("multiples", "divisible", "keep_mult", "only_mult"), ONE_LIST,
           "a list of the numbers in {0} divisible by {k}", "return [v_ for v_ in {0} if v_ % {k} == 0]",
           lambda xs, k: [v for v in xs if v % k == 0], _num_list, "Filter by remainder.", tuple(range(2, 8))),
    Family(("count_below", "n_small", "under", "how_many_low"), ONE_LIST,
           "how many numbers in {0} are less than {k}",
           "n_ = 0\n    for v_ in {0}:\n        if v_ < {k}:\n            n_ += 1\n    return n_",
           lambda xs, k: sum(1 for v in xs if v < k), _num_list, "Count with a loop.", tuple(range(0, 10))),
    Family(("squares", "square_list", "sq_upto", "powers2"), ONE_NUM, "a list of the squares of 1 to {0}",
           "return [i * i for i in range(1, {0} + 1)]", lambda n: [i * i for i in range(1, n + 1)],
           _ints(0, 9, 1), "Square each of 1..n."),
    Family(("all_positive", "all_pos", "no_negatives", "positive_only"), ONE_LIST,
           "True if every number in {0} is positive, else False", "return all(v_ > 0 for v_ in {0})",
           lambda xs: all(v > 0 for v in xs), lambda r: ([r.randint(-3, 30) for _ in range(r.randint(1, 5))],),
           "Use all()."),
    Family(("fizz", "fizz_word", "say"), ONE_NUM, "'Fizz' if {0} is divisible by 3, else str({0})",
           "if {0} % 3 == 0:\n        return 'Fizz'\n    return str({0})",
           lambda n: "Fizz" if n % 3 == 0 else str(n), _ints(1, 30, 1), "Check n % 3."),
)  # fmt: skip


def _rle(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(f"{s[i]}{j - i}")
        i = j
    return "".join(out)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def _runs(r: random.Random) -> tuple[Any, ...]:
    return ("".join(r.choice("ab") * r.randint(1, 3) for _ in range(r.randint(0, 4))),)


def _two_plus(r: random.Random) -> tuple[Any, ...]:
    return (r.sample(range(-30, 60), r.randint(2, 6)),)


LEVEL2 = (
    Family(("gcd", "common_divisor", "hcf", "greatest_div"), PAIRS,
           "the greatest common divisor of {0} and {1} (both > 0)",
           "while {1}:\n        {0}, {1} = {1}, {0} % {1}\n    return {0}",
           gcd, _ints(1, 200, 2), "Euclid: replace (a, b) by (b, a % b) until b is 0."),
    Family(("is_prime", "prime", "check_prime", "prime_test"), ONE_NUM, "True if {0} is a prime number, else False",
           "if {0} < 2:\n        return False\n    d = 2\n    while d * d <= {0}:\n"
           "        if {0} % d == 0:\n            return False\n        d += 1\n    return True",
           _is_prime, _ints(0, 120, 1), "Trial division up to the square root."),
    Family(("rle", "run_length", "encode_runs", "squeeze"), ONE_STR,
           "the run-length encoding of {0}, e.g. 'aab' -> 'a2b1'",
           "out = ''\n    i = 0\n    while i < len({0}):\n        j = i\n"
           "        while j < len({0}) and {0}[j] == {0}[i]:\n            j += 1\n"
           "        out += {0}[i] + str(j - i)\n        i = j\n    return out",
           _rle, _runs, "Walk the string, measuring each run of equal letters."),
    Family(("fib", "fibonacci", "nth_fib", "fib_num"), ONE_NUM, "the {0}-th Fibonacci number (fib(0)=0, fib(1)=1)",
           "a_, b_ = 0, 1\n    for _ in range({0}):\n        a_, b_ = b_, a_ + b_\n    return a_",
           _fib, _ints(0, 25, 1), "Iterate the pair (a, b) -> (b, a + b)."),
    Family(("second_largest", "runner_up", "second_max", "next_best"), ONE_LIST,
           "the second largest value in {0} (distinct numbers, at least two)",
           "return sorted({0})[-2]", lambda xs: sorted(xs)[-2], _two_plus, "Sort and take the one before last."),
    Family(("digit_sum", "sum_digits", "add_digits", "digits_total"), ONE_NUM,
           "the sum of the decimal digits of {0} (>= 0)",
           "return sum(int(d) for d in str({0}))", lambda n: sum(int(d) for d in str(n)), _ints(0, 99999, 1),
           "Sum the digits of str(n)."),
    Family(("is_palindrome", "palindrome", "reads_same", "symmetric"), ONE_STR,
           "True if {0} reads the same backwards ignoring case, else False",
           "t = {0}.lower()\n    return t == t[::-1]", lambda s: s.lower() == s.lower()[::-1],
           lambda r: (r.choice(["Abba", "level", "Noon", "abc", "radar", "ab", "", "x", "Racecar", "top"]),),
           "Compare the lowercased string with its reverse."),
    Family(("spread", "value_range", "max_gap", "span"), ONE_LIST, "the largest minus the smallest number in {0}",
           "return max({0}) - min({0})", lambda xs: max(xs) - min(xs), _num_list, "max minus min."),
    Family(("running_sum", "prefix_sums", "cumulative", "totals"), ONE_LIST,
           "a list of running totals of {0}, e.g. [1, 2, 3] -> [1, 3, 6]",
           "out, acc = [], 0\n    for v_ in {0}:\n        acc += v_\n        out.append(acc)\n    return out",
           lambda xs: [sum(xs[: i + 1]) for i in range(len(xs))], _num_list, "Keep a running total."),
    Family(("unique", "dedupe", "distinct", "first_seen"), ONE_LIST,
           "the items of {0} without repeats, in first-seen order",
           "out = []\n    for v_ in {0}:\n        if v_ not in out:\n            out.append(v_)\n    return out",
           lambda xs: list(dict.fromkeys(xs)), lambda r: ([r.randint(0, 5) for _ in range(r.randint(0, 8))],),
           "Append items not seen before."),
    Family(("word_count", "count_words", "n_words", "words_in"), ONE_STR, "the number of words in {0}",
           "return len({0}.split())", lambda s: len(s.split()),
           lambda r: (" ".join(r.choice(("a", "an", "cat", "sat", "up")) for _ in range(r.randint(0, 6))),),
           "Split on whitespace and count."),
)  # fmt: skip

LEVELS = (LEVEL0, LEVEL1, LEVEL2)
TEST_CASES = 4
PROGRAM_SHARE = 0.3  # of difficulty-2 problems are stdin -> stdout programs


def _test(family: Family, rng: random.Random, k: int | None) -> str:
    lines = ["def check(candidate):"]
    seen: set[str] = set()
    for _ in range(TEST_CASES * 3):
        args = family.inputs(rng)
        call = ", ".join(repr(a) for a in args)
        if call in seen:
            continue
        seen.add(call)
        expected = family.ref(*args, k=k) if k is not None else family.ref(*args)
        lines.append(f"    assert candidate({call}) == {expected!r}")
        if len(seen) == TEST_CASES:
            break
    return "\n".join(lines) + "\n"


class CodeTask:
    """Write one Python function; spec ``{"type": "code", "test", "entry_point"}``."""

    name = "code"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        if difficulty >= 2 and rng.random() < PROGRAM_SHARE:
            return program_problem(rng, difficulty)
        family = rng.choice(LEVELS[min(difficulty, len(LEVELS) - 1)])
        entry, params = rng.choice(family.names), rng.choice(family.params)
        k = rng.choice(family.consts) if family.consts else None
        fmt: dict[str, Any] = {"k": k} if k is not None else {}
        signature = ", ".join(params)
        user = f"Write a Python function {entry}({signature}) that returns {family.desc.format(*params, **fmt)}."
        code = f"def {entry}({signature}):\n    {family.body.format(*params, **fmt)}\n"
        return make_problem(
            self.name,
            difficulty,
            user=user,
            spec={"type": "code", "test": _test(family, rng, k), "entry_point": entry},
            answer=f"```python\n{code}```",
            reasoning=family.hint,
        )

"""Domain registry and deterministic, disjoint train / eval splits.

Split rule: a problem belongs to eval iff a stable hash (sha256) of its domain and user text
falls in one of ``EVAL_BUCKETS`` buckets, so the same prompt text can never be in both splits,
whatever the seed, size or generation order. ``make_split`` draws problems from one seeded
stream and keeps those of the requested split.

Dedupe: within a split, a prompt text is not repeated while fresh ones keep coming. Small
spaces (a difficulty-0 domain has a few thousand distinct prompts, its eval share a fifth of
that) can run out; after ``MAX_DUPLICATE_RUN`` consecutive repeats the space counts as exhausted
and repeats are accepted from then on, so large training sets still fill. Both rules depend only
on the draw sequence, so a split of size n is a prefix of the same split of size m > n.
"""

from __future__ import annotations

import random
from typing import Literal

from cascade_rl.data.tasks.base import Problem, Task, stable_hash
from cascade_rl.data.tasks.code import CodeTask
from cascade_rl.data.tasks.instruct import InstructTask
from cascade_rl.data.tasks.json_schema import JsonSchemaTask
from cascade_rl.data.tasks.math_problems import MathTask
from cascade_rl.data.tasks.mcqa import McqaTask
from cascade_rl.data.tasks.tool_call import ToolCallTask

Split = Literal["train", "eval"]

EVAL_BUCKETS = 5  # one prompt text in five is reserved for evaluation
EVAL_SALT = "cascade-rl/eval-split/v1"
MAX_DUPLICATE_RUN = 200
MAX_DRAWS_PER_PROBLEM = 2000  # a generator that never reaches a split is a bug, not a slow draw

TASKS: dict[str, Task] = {
    task.name: task for task in (MathTask(), InstructTask(), McqaTask(), ToolCallTask(), JsonSchemaTask(), CodeTask())
}


def get_task(name: str) -> Task:
    """The task generator of a domain; raises KeyError naming the known domains."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task domain {name!r}; known: {sorted(TASKS)}") from None


def is_eval_prompt(domain: str, user_text: str) -> bool:
    """Whether a prompt text is reserved for the eval split of its domain."""
    return stable_hash(f"{EVAL_SALT}\x00{domain}\x00{user_text}") % EVAL_BUCKETS == 0


def make_split(domain: str, split: Split, n: int, *, seed: int = 0, difficulty: int = 0) -> list[Problem]:
    """n problems of one domain, split and difficulty; deterministic in all arguments.

    Train and eval never share a user prompt text (see the module docstring for the rule and
    for how repeats are handled once a small space is exhausted).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if n < 0 or difficulty < 0:
        raise ValueError(f"n and difficulty must be >= 0, got n={n}, difficulty={difficulty}")
    task = get_task(domain)
    want_eval = split == "eval"
    rng = random.Random(f"cascade-rl/{domain}/{split}/{seed}/{difficulty}")
    out: list[Problem] = []
    seen: set[str] = set()
    duplicate_run, exhausted, draws = 0, False, 0
    while len(out) < n:
        draws += 1
        if draws > MAX_DRAWS_PER_PROBLEM * (n + 1):
            raise RuntimeError(f"{domain} d{difficulty}: could not draw {n} {split} problems")
        problem = task.generate(rng, difficulty)
        text = problem.user_text
        if is_eval_prompt(domain, text) != want_eval:
            continue
        if text in seen and not exhausted:
            duplicate_run += 1
            exhausted = duplicate_run >= MAX_DUPLICATE_RUN
            if not exhausted:
                continue
        duplicate_run = 0
        seen.add(text)
        out.append(problem)
    return out

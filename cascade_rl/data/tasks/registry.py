"""Domain registry and deterministic, disjoint splits of every domain's prompt space.

Split rule: a stable hash (sha256) of a problem's domain and user text picks one of 20 buckets:
four (20%) hold the ``test`` split (the held-out sets the ledger reports), one (5%) the ``validation``
split (what MOPD teachers are chosen on), four (20%) the ``rl`` split (RL and MOPD prompts) and the
other eleven (55%) the ``sft`` split. ``train`` is ``sft`` and ``rl`` together. So the same prompt
text is in one split only, whatever the seed, size or generation order: SFT never trains on an RL
prompt, teachers are never chosen on the numbers that are reported, and nothing trained on is
evaluated. ``make_split`` draws problems from one seeded stream and keeps those of the requested split.

Dedupe: within a split, a prompt text is not repeated while fresh ones keep coming. Small
spaces (a difficulty-0 domain has a few thousand distinct prompts, its test share a fifth of
that) can run out; after ``MAX_DUPLICATE_RUN`` consecutive repeats the space counts as exhausted
and repeats are accepted from then on, so large training sets still fill. Both rules depend only
on the draw sequence, so a split of size n is a prefix of the same split of size m > n.
"""

from __future__ import annotations

import inspect
import random
from typing import Any, Literal

from cascade_rl.data.tasks.base import Problem, Task, stable_hash
from cascade_rl.data.tasks.chat import ChatTask
from cascade_rl.data.tasks.code import CodeTask
from cascade_rl.data.tasks.instruct import InstructTask
from cascade_rl.data.tasks.json_schema import JsonSchemaTask
from cascade_rl.data.tasks.long_context import LongContextTask
from cascade_rl.data.tasks.math_problems import MathTask
from cascade_rl.data.tasks.mcqa import McqaTask
from cascade_rl.data.tasks.swe import SweAgenticTask, SweAgentlessTask
from cascade_rl.data.tasks.tir import CodeToolTask, TirMathTask
from cascade_rl.data.tasks.tool_call import ToolCallTask
from cascade_rl.data.tasks.workplace import WorkplaceTask

Split = Literal["sft", "rl", "train", "validation", "test"]
SPLITS: tuple[str, ...] = ("sft", "rl", "train", "validation", "test")

BUCKETS = 20
SPLIT_SALT = "cascade-rl/eval-split/v1"  # as when there were two splits: the test split stayed the same
_BUCKET_SPLIT = {
    bucket: "test" if bucket % 5 == 0 else "validation" if bucket == 1 else "rl" if bucket in (2, 3, 4, 6) else "sft"
    for bucket in range(BUCKETS)
}
MAX_DUPLICATE_RUN = 200
MAX_DRAWS_PER_PROBLEM = 2000  # a generator that never reaches a split is a bug, not a slow draw

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        MathTask(),
        InstructTask(),
        McqaTask(),
        ToolCallTask(),
        JsonSchemaTask(),
        CodeTask(),
        WorkplaceTask(),
        TirMathTask(),
        CodeToolTask(),
        ChatTask(),
        LongContextTask(),
        SweAgentlessTask(),
        SweAgenticTask(),
    )
}


def get_task(name: str) -> Task:
    """The task generator of a domain; raises KeyError naming the known domains."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task domain {name!r}; known: {sorted(TASKS)}") from None


def split_of(domain: str, user_text: str) -> str:
    """The split (sft, rl, validation or test) a prompt text belongs to in its domain."""
    return _BUCKET_SPLIT[stable_hash(f"{SPLIT_SALT}\x00{domain}\x00{user_text}") % BUCKETS]


def in_split(domain: str, user_text: str, split: str) -> bool:
    part = split_of(domain, user_text)
    return part == split or (split == "train" and part in ("sft", "rl"))


def make_split(
    domain: str, split: Split, n: int, *, seed: int = 0, difficulty: int = 0, **options: Any
) -> list[Problem]:
    """n problems of one domain, split and difficulty; deterministic in all arguments.

    ``options`` go to the task's ``generate`` (e.g. ``context_length`` of long-context tasks); a task
    that takes none of them is an error. The splits never share a user prompt text (see the module
    docstring for the rule and for how repeats are handled once a small space is exhausted).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if n < 0 or difficulty < 0:
        raise ValueError(f"n and difficulty must be >= 0, got n={n}, difficulty={difficulty}")
    task = get_task(domain)
    unknown = set(options) - set(inspect.signature(task.generate).parameters)
    if unknown:
        raise ValueError(f"task {domain!r} takes no {', '.join(sorted(unknown))}")
    suffix = "".join(f"/{k}={v}" for k, v in sorted(options.items()))
    rng = random.Random(f"cascade-rl/{domain}/{split}/{seed}/{difficulty}{suffix}")
    out: list[Problem] = []
    seen: set[str] = set()
    duplicate_run, exhausted, draws = 0, False, 0
    while len(out) < n:
        draws += 1
        if draws > MAX_DRAWS_PER_PROBLEM * (n + 1):
            raise RuntimeError(f"{domain} d{difficulty}: could not draw {n} {split} problems")
        problem = task.generate(rng, difficulty, **options)
        text = problem.user_text
        if not in_split(*(problem.split_key or (domain, text)), split):
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

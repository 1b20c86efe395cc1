"""SWE tasks on procedural repositories (``cascade_rl.swe.procedural``): agentless and agentic.

``swe_agentless``: the prompt holds the issue and the relevant source file(s) (difficulty 0: the
buggy module; 1: it and one other module; 2: every module of the package); the answer is one
search/replace edit block, judged by the ``swe`` verifier (hidden tests run in the sandbox).

``swe_agentic``: the prompt holds the issue and the repository tools (``envs.repo``); the episode
runs in ``swe_agentic``, which grades the repository with the hidden tests when it ends. The
reference episode explores, views, edits, tests and submits: list_files, search for the function,
view its module, replace the buggy lines, run the visible tests, submit. Its tool responses are
computed with the environment's own ``Repository`` (the test report with ``format_report`` for the
passing visible tests), so replaying the trace in the environment gives the same responses.

Both domains split by the issue text under one key (``("swe", issue)``), so an instance is never
trained in one mode and tested in the other. ``agentless_prompt`` / ``agentic_prompt`` build the
same prompts for instances read from JSONL (``cascade_rl.swe.instance.read_instances``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from cascade_rl.data.tasks.base import Problem, make_problem, stable_hash
from cascade_rl.envs.repo import TOOLS, Repository
from cascade_rl.swe.harness import TestRun, format_report
from cascade_rl.swe.instance import SweInstance
from cascade_rl.swe.patch import diff_paths, format_edit_block
from cascade_rl.swe.procedural import Generated, generate
from cascade_rl.types import Prompt

SPLIT_DOMAIN = "swe"
TOOL_ORDER = ("list_files", "view_file", "search", "replace", "run_tests", "submit")
EDIT_FORMAT = """path/to/file.py
<<<<<<< SEARCH
the lines to change, copied exactly from the file
=======
the lines that replace them
>>>>>>> REPLACE"""


def agentless_prompt(instance: SweInstance, paths: Sequence[str]) -> str:
    """The agentless user text: the issue, the files at ``paths``, and the answer format."""
    text = instance.snapshot().text
    shown = "\n\n".join(f"[{p}]\n```python\n{text[p].rstrip()}\n```" for p in paths)
    return (
        "Fix the issue below by editing the repository's code.\n\n"
        f"<issue>\n{instance.problem_statement.strip()}\n</issue>\n\n"
        f"Relevant files:\n\n{shown}\n\n"
        "Answer with one search/replace edit block per change, in this format:\n\n"
        f"{EDIT_FORMAT}"
    )


def agentic_prompt(instance: SweInstance) -> str:
    """The agentic user text: the issue and what to do with the tools."""
    return (
        "The repository is checked out for you. Use the tools to find the cause of the issue below, "
        "fix it, run the tests, then submit.\n\n"
        f"<issue>\n{instance.problem_statement.strip()}\n</issue>"
    )


def relevant_files(instance: SweInstance) -> list[str]:
    """Files to show an agentless prompt of a JSONL instance: those the gold patch changes, else none."""
    tests = set(instance.test_files)
    return sorted({p for p in diff_paths(instance.patch)} - tests) if instance.patch else []


def instance_prompt(instance: SweInstance, mode: str, *, domain: str = "swe") -> Prompt:
    """An RL / evaluation prompt for an instance (``mode``: "agentless" or "agentic")."""
    spec = {"type": "swe", "instance": instance.to_dict()}
    if mode == "agentless":
        user = agentless_prompt(instance, relevant_files(instance))
        return Prompt(({"role": "user", "content": user},), spec, domain, uid=instance.instance_id)
    if mode == "agentic":
        messages = ({"role": "user", "content": agentic_prompt(instance)},)
        tools = tuple(TOOLS[n] for n in TOOL_ORDER)
        return Prompt(messages, spec, domain, tools, uid=instance.instance_id, env="swe_agentic")
    raise ValueError(f"mode must be 'agentless' or 'agentic', got {mode!r}")


def _uid(problem: Problem, spec: dict[str, Any], difficulty: int) -> str:
    """The same issue text can recur over different repositories: the uid covers the repository too."""
    canonical = json.dumps([list(problem.messages), spec], sort_keys=True)
    return f"{problem.domain}-{difficulty}-{stable_hash(canonical):016x}"


def _shown_files(rng: random.Random, made: Generated, difficulty: int) -> list[str]:
    package = made.path.split("/", 1)[0]
    modules = sorted(p for p in made.instance.files or {} if p.startswith(package + "/") and "__init__" not in p)
    if difficulty <= 0:
        return [made.path]
    if difficulty == 1:
        others = [p for p in modules if p != made.path]
        shown = [made.path, rng.choice(others)] if others else [made.path]
        rng.shuffle(shown)
        return shown
    return modules


class SweAgentlessTask:
    """Issue + relevant files -> one edit block; spec ``{"type": "swe", "instance", "format": "edit_blocks"}``."""

    name = "swe_agentless"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        made = generate(rng, difficulty)
        spec = {"type": "swe", "instance": made.instance.to_dict(), "format": "edit_blocks"}
        user = agentless_prompt(made.instance, _shown_files(rng, made, difficulty))
        reasoning = f"The bug is in {made.function} in {made.path}. {made.bug.note}"
        problem = make_problem(
            self.name, difficulty, user=user, spec=spec, answer=format_edit_block(made.gold), reasoning=reasoning
        )
        key = (SPLIT_DOMAIN, made.instance.problem_statement)
        return replace(problem, uid=_uid(problem, spec, difficulty), split_key=key)


def _turn(reasoning: str, name: str, **arguments: Any) -> dict[str, Any]:
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": "", "reasoning": reasoning, "tool_calls": [call]}


def oracle_trace(made: Generated) -> tuple[dict[str, Any], ...]:
    """The reference episode: explore, view, edit, test, submit (tool responses as the environment gives them)."""
    repo = Repository(made.instance, timeout=30.0, per_test_timeout=5.0)
    old, new = "\n".join(made.gold.search), "\n".join(made.gold.replace)
    steps = [
        (_turn("Look at the repository layout first.", "list_files"), repo.list_files()),
        (_turn(f"Find where {made.function} is defined.", "search", pattern=f"def {made.function}("),
         repo.search(f"def {made.function}(")),
        (_turn(f"Read {made.path}.", "view_file", path=made.path), repo.view_file(made.path)),
        (_turn(f"{made.bug.note} Fix that line.", "replace", path=made.path, old=old, new=new),
         repo.replace(made.path, old, new)),
    ]  # fmt: skip
    if made.visible_tests:
        report = format_report(TestRun({tid: True for tid in made.visible_tests}))
        steps.append((_turn("Run the tests to check that nothing else broke.", "run_tests"), report))
    trace: list[dict[str, Any]] = []
    for message, response in steps:
        trace += [message, {"role": "tool", "content": response}]
    trace.append(_turn("The fix is in and the tests pass; submit.", "submit"))
    return tuple(trace)


class SweAgenticTask:
    """Issue + repository tools, multi-turn in ``swe_agentic``; graded by the hidden tests at the end."""

    name = "swe_agentic"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        made = generate(rng, difficulty)
        spec = {"type": "swe", "instance": made.instance.to_dict()}
        trace = oracle_trace(made)
        problem = make_problem(
            self.name,
            difficulty,
            user=agentic_prompt(made.instance),
            spec=spec,
            answer="",
            reasoning=trace[0]["reasoning"],
            tools=[TOOLS[n] for n in TOOL_ORDER],
        )
        key = (SPLIT_DOMAIN, made.instance.problem_statement)
        return replace(problem, uid=_uid(problem, spec, difficulty), env="swe_agentic", trace=trace, split_key=key)

"""Procedural SWE instances, the agentless and agentic tasks, their oracle SFT records, the repository env."""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import Any

import pytest

from cascade_rl.chat import ParsedCompletion, parse_completion, render, render_with_spans
from cascade_rl.chat.tokenize import GIVEN_OPENERS
from cascade_rl.data.tasks import TASKS, Problem, assistant_text, make_split, split_of
from cascade_rl.engines.base import SamplingParams
from cascade_rl.envs import ENVS, make_env
from cascade_rl.envs.repo import RepoEnv
from cascade_rl.loops.episodes import Budget, EpisodeRunner
from cascade_rl.loops.rollout import PromptEncoder
from cascade_rl.rewards import verify
from cascade_rl.swe.harness import evaluate_diff, evaluate_edits
from cascade_rl.swe.patch import apply_diff, apply_edits
from cascade_rl.swe.procedural import generate
from cascade_rl.swe.units import KINDS, UNITS
from cascade_rl.types import Completion, ToolCall

DIFFICULTIES = (0, 1, 2)


@functools.cache
def problems(domain: str, split: str, difficulty: int, n: int = 3) -> tuple[Problem, ...]:
    return tuple(make_split(domain, split, n, seed=0, difficulty=difficulty))  # type: ignore[arg-type]


def test_the_tasks_and_the_env_are_registered():
    assert {"swe_agentless", "swe_agentic"} <= set(TASKS)
    assert ENVS["swe_agentic"] is RepoEnv and RepoEnv.rewards_itself is True


def test_every_bug_kind_and_unit_is_reachable_and_documented():
    seen_kinds, seen_units = set(), set()
    for seed in range(300):
        made = generate(random.Random(seed), seed % 3)
        seen_kinds.add(made.bug.kind)
        seen_units.add(made.function)
        instance = made.instance
        assert instance.fail_to_pass and set(instance.fail_to_pass).isdisjoint(instance.pass_to_pass)
        assert f"`{made.function}(" in instance.problem_statement  # the symptom, quoted as a call
        lines = sum(text.count("\n") for path, text in instance.files.items() if path.endswith(".py"))
        assert 10 <= lines <= 250
        by_edit, by_diff = dict(instance.files), dict(instance.files)
        apply_edits(by_edit, [made.gold])
        apply_diff(by_diff, instance.patch)
        assert by_edit == by_diff != instance.files  # the oracle's edit block is the gold patch
    assert seen_kinds == set(KINDS)
    assert len(seen_units) >= len(UNITS)


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_hidden_tests_fail_on_the_bug_and_pass_on_the_fix(difficulty):
    for seed in range(3):
        made = generate(random.Random(f"hidden/{seed}"), difficulty)
        gold = evaluate_diff(made.instance, made.instance.patch)
        assert gold.score == 1.0, gold.info
        assert evaluate_edits(made.instance, [made.gold]).score == 1.0
        empty = evaluate_diff(made.instance, "")
        total = len(made.instance.fail_to_pass)
        assert empty.score == 0.0 and empty.info["fail_to_pass"] == f"0/{total}", empty.info
        assert empty.info["pass_to_pass"] == f"{len(made.instance.pass_to_pass)}/{len(made.instance.pass_to_pass)}"


def test_splits_are_disjoint_and_shared_by_both_modes():
    for difficulty in DIFFICULTIES:
        texts = {}
        for split in ("sft", "rl", "test"):
            for domain in ("swe_agentless", "swe_agentic"):
                for p in problems(domain, split, difficulty):
                    issue = p.spec["instance"]["problem_statement"]
                    assert split_of("swe", issue) == split
                    texts.setdefault(issue, set()).add(split)
        assert all(len(s) == 1 for s in texts.values())


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("thinking", [True, False])
def test_agentless_oracle_records_score_one(difficulty, thinking):
    for problem in problems("swe_agentless", "sft", difficulty, 2):
        assert problem.env == "single_turn" and problem.spec["format"] == "edit_blocks"
        assert problem.spec["instance"]["instance_id"].split("__")[0] + "/" in problem.user_text
        record = problem.sft_record(thinking)
        assert record["messages"][-1]["content"] == problem.answer
        result = verify(assistant_text(problem, thinking), problem.spec, thinking=thinking)
        assert result.score == 1.0, result.info


def replay(problem: Problem, thinking: bool) -> tuple[list[str], Any]:
    """Each rendered assistant turn of the SFT record, parsed as the model's completion, steps a fresh env."""
    record = problem.sft_record(thinking)
    text, spans = render_with_spans(record["messages"], record["tools"], enable_thinking=thinking)
    env = make_env("swe_agentic", problem.to_prompt())
    responses, result = [], None
    for span in spans:
        body = text[span.start : span.end]
        opener = next(o for o in GIVEN_OPENERS if body.startswith(o))
        parsed = parse_completion(body[len(opener) :], thinking=thinking)
        assert not parsed.errors and parsed.tool_calls, parsed.errors
        assert result is None or not result.done
        result = env.step(parsed)
        responses += [m["content"] for m in result.messages]
    assert result is not None and result.done
    return responses, result


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_agentic_oracle_trace_replays_exactly_and_scores_one(difficulty):
    (problem,) = problems("swe_agentic", "sft", difficulty, 1)
    names = [m["tool_calls"][0]["function"]["name"] for m in problem.trace if m["role"] == "assistant"]
    assert names == ["list_files", "search", "view_file", "replace", "run_tests", "submit"]
    responses, result = replay(problem, thinking=difficulty % 2 == 0)
    assert responses == [m["content"] for m in problem.trace if m["role"] == "tool"]  # run_tests ran for real
    assert result.reward == 1.0 and result.info["ended_by"] == "submit", result.info
    assert result.info["tool_errors"] == 0 and result.info["tool_calls"] == 5


def step(env: RepoEnv, name: str, **arguments: Any):
    return env.step(ParsedCompletion(content="", tool_calls=(ToolCall(name, arguments),)))


def test_tool_errors_are_responses_and_budgets_end_the_episode():
    (problem,) = problems("swe_agentic", "sft", 0, 1)
    env = RepoEnv(problem.to_prompt(), max_turns=4)
    errors = [
        step(env, "view_file", path="../../etc/passwd").messages[0]["content"],
        step(env, "replace", path="missing.py", old="x", new="y").messages[0]["content"],
        step(env, "run_tests", path="README.md").messages[0]["content"],
    ]
    assert errors[0].startswith("error: path '../../etc/passwd' leaves the repository")
    assert errors[1].startswith("error: no file 'missing.py'")
    assert errors[2].startswith("error: no test files there")
    last = step(env, "list_files")
    assert last.done and last.reward == 0.0 and last.info["ended_by"] == "max_turns"
    assert last.info["tool_errors"] == 3 and last.info["fail_to_pass"].startswith("0/")


class Replayer:
    """A generator that writes the k-th reference turn after k tool responses (for every row)."""

    def __init__(self, tokenizer: Any, turns: Sequence[str]) -> None:
        self.tokenizer, self.turns = tokenizer, list(turns)
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        out = []
        for ids in prompts:
            k = self.tokenizer.decode(ids).count("<tool_response>")
            tokens = self.tokenizer(self.turns[k], add_special_tokens=False)["input_ids"] + [self.im_end]
            out.append([Completion(tuple(tokens), tuple(-0.5 for _ in tokens), "stop") for _ in range(params.n)])
        return out

    def sync(self, policy: Any, version: int) -> None:
        pass


def test_the_oracle_episode_through_the_runner_is_token_consistent_and_scores_one(tokenizer):
    (problem,) = problems("swe_agentic", "sft", 0, 1)
    record = problem.sft_record(False)
    text, spans = render_with_spans(record["messages"], record["tools"], enable_thinking=False)
    turns = [text[s.start : s.end].removeprefix(GIVEN_OPENERS[1]).removesuffix("<|im_end|>") for s in spans]
    runner = EpisodeRunner(Replayer(tokenizer, turns), tokenizer, False, Budget(max_turns=10))
    (group,) = runner.run([problem.to_prompt()], PromptEncoder(tokenizer), SamplingParams(n=1, max_new_tokens=4096))
    (trajectory,) = group.trajectories
    assert trajectory.reward == 1.0 and not trajectory.truncated and not trajectory.failed, trajectory.info
    assert len(trajectory.turns) == len(turns)
    full = render(record["messages"], record["tools"], truncate_history_thinking=False)
    assert list(trajectory.tokens) == tokenizer(full.removesuffix("\n"), add_special_tokens=False)["input_ids"]

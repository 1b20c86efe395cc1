"""Procedural task domains: determinism, disjoint splits, record shapes and self-consistency."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from cascade_rl.chat import parse_completion
from cascade_rl.data.tasks import SPLITS, TASKS, Problem, Task, assistant_text, get_task, make_split, split_of
from cascade_rl.data.tasks.base import argument_text
from cascade_rl.data.tasks.instruct import ADVANCED

DOMAINS = ("math", "instruct", "mcqa", "tool_call", "json_schema", "code")  # single-turn, judged by a verifier
AGENTIC = ("workplace", "tir_math", "code_tool")  # multi-turn episodes with tools (their own test files)
OTHERS = ("chat", "long_context")  # a hidden rubric with preference pairs; long inputs (their own test files)
SWE = ("swe_agentless", "swe_agentic")  # repository fixes graded by sandboxed tests (their own test files)
DIFFICULTIES = (0, 1, 2)


def _texts(problems: list[Problem]) -> set[str]:
    return {p.user_text for p in problems}


def test_registry_has_every_domain():
    assert set(TASKS) == set(DOMAINS) | set(AGENTIC) | set(OTHERS) | set(SWE)
    for name in (*DOMAINS, *AGENTIC, *OTHERS, *SWE):
        task = get_task(name)
        assert isinstance(task, Task)
        assert task.name == name
    with pytest.raises(KeyError, match="unknown task domain"):
        get_task("poetry")


@pytest.mark.parametrize("domain", DOMAINS)
def test_splits_are_deterministic_and_seeded(domain):
    first = make_split(domain, "train", 20, seed=0)
    assert first == make_split(domain, "train", 20, seed=0)
    assert [p.uid for p in first] != [p.uid for p in make_split(domain, "train", 20, seed=1)]
    # a smaller split is a prefix of a larger one with the same seed
    assert make_split(domain, "test", 5, seed=3) == make_split(domain, "test", 12, seed=3)[:5]


@pytest.mark.parametrize("domain", DOMAINS + AGENTIC)
@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_splits_are_disjoint(domain, difficulty):
    """SFT, RL, validation and test never share a prompt text; train is sft and rl together."""
    n = 40 if domain in AGENTIC else 150  # multi-turn problems are played through their environment: slower
    texts = {s: _texts(make_split(domain, s, n, seed=0, difficulty=difficulty)) for s in SPLITS}
    parts = ("sft", "rl", "validation", "test")
    key = "code" if domain == "code_tool" else domain  # a code_tool problem splits with its code problem
    texts = {
        s: {t.removesuffix(" You can run Python to test it before you answer.") for t in ts} for s, ts in texts.items()
    }
    for i, a in enumerate(parts):
        assert all(split_of(key, t) == a for t in texts[a])
        for b in parts[i + 1 :]:
            assert not texts[a] & texts[b], (a, b)
    assert {split_of(key, t) for t in texts["train"]} <= {"sft", "rl"}
    # different seeds draw different problems but can never cross a split
    assert not _texts(make_split(domain, "train", 200, seed=7, difficulty=difficulty)) & texts["test"]


def test_split_shares():
    """20 hash buckets: test 4 (the two-way split's eval set, unchanged), validation 1, rl 4, sft 11."""
    from cascade_rl.data.tasks.registry import _BUCKET_SPLIT

    counts = {s: list(_BUCKET_SPLIT.values()).count(s) for s in ("sft", "rl", "validation", "test")}
    assert counts == {"sft": 11, "rl": 4, "validation": 1, "test": 4}
    with pytest.raises(ValueError, match="split must be one of"):
        make_split("math", "eval", 1)


@pytest.mark.parametrize("domain", DOMAINS)
def test_splits_dedupe_prompts(domain):
    problems = make_split(domain, "train", 60, seed=0)
    assert len(_texts(problems)) == len(problems)


def test_small_space_falls_back_to_repeats():
    # difficulty-0 tool calls have under a thousand distinct prompts; a larger set still fills
    problems = make_split("tool_call", "test", 300, seed=0)
    assert len(problems) == 300
    assert len(_texts(problems)) < 300


@pytest.mark.parametrize("domain", DOMAINS)
def test_difficulty_changes_the_problems(domain):
    levels = [make_split(domain, "train", 40, seed=0, difficulty=d) for d in DIFFICULTIES]
    uids = [{p.uid for p in problems} for problems in levels]
    assert not uids[0] & uids[1] and not uids[1] & uids[2]
    by_level = [_texts(problems) for problems in levels]
    mean = [sum(map(len, texts)) / len(texts) for texts in by_level]
    assert mean[0] < mean[2]


@pytest.mark.parametrize("domain", DOMAINS)
def test_sft_record_shapes(domain):
    for problem in make_split(domain, "train", 10, seed=0, difficulty=1):
        thinking, plain = problem.sft_record(thinking=True), problem.sft_record(thinking=False)
        for record in (thinking, plain):
            assert record["domain"] == domain
            assert record["messages"][:-1] == list(problem.messages)
            assert record["messages"][-1]["role"] == "assistant"
            assert record["messages"][-1]["content"] == problem.answer
            json.dumps(record)  # JSON-able, ready for a JSONL file
        assert thinking["messages"][-1]["reasoning_content"] == problem.reasoning
        assert "reasoning_content" not in plain["messages"][-1]
        assert problem.messages[-1]["role"] == "user"
        assert problem.uid.startswith(f"{domain}-1-")
        if domain == "tool_call":
            assert thinking["tools"] and all(t["type"] == "function" for t in thinking["tools"])
            calls = thinking["messages"][-1].get("tool_calls", [])
            assert [c["function"]["name"] for c in calls] == [c["name"] for c in problem.tool_calls]
            assert all(c["type"] == "function" and isinstance(c["function"]["arguments"], dict) for c in calls)
        else:
            assert thinking["tools"] is None and "tool_calls" not in thinking["messages"][-1]


def test_uids_are_stable_across_runs():
    problem = get_task("math").generate(random.Random("fixed"), 0)
    again = get_task("math").generate(random.Random("fixed"), 0)
    assert problem.uid == again.uid and problem.uid.startswith("math-0-")


@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("domain", DOMAINS)
def test_assistant_text_matches_the_chat_template(domain, thinking):
    template = pytest.importorskip("cascade_rl.chat.template")
    for problem in make_split(domain, "train", 8, seed=0, difficulty=1):
        record = problem.sft_record(thinking)
        full = template.render(record["messages"], record["tools"])
        prompt = template.render(
            list(problem.messages), record["tools"], add_generation_prompt=True, enable_thinking=thinking
        )
        assert full == prompt + assistant_text(problem, thinking) + "\n"


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_tool_calls_round_trip_through_the_parser(difficulty):
    for problem in make_split("tool_call", "train", 30, seed=0, difficulty=difficulty):
        for thinking in (True, False):
            parsed = parse_completion(assistant_text(problem, thinking))
            assert not parsed.errors
            got = [{"name": c.name, "arguments": c.arguments} for c in parsed.tool_calls]
            assert got == problem.spec["expected"] == list(problem.tool_calls)
            assert parsed.content == problem.answer


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_reference_answers_are_self_consistent(difficulty):
    """Checks that need no verifier: schemas validate, code passes its own tests, answers match specs."""
    for problem in make_split("json_schema", "train", 30, seed=0, difficulty=difficulty):
        jsonschema.validate(json.loads(problem.answer), problem.spec["schema"])
    for problem in make_split("math", "train", 30, seed=0, difficulty=difficulty):
        assert problem.answer.endswith(f" {problem.spec['answer']}.")
        assert int(problem.spec["answer"]) >= 0
    for problem in make_split("mcqa", "train", 30, seed=0, difficulty=difficulty):
        letter, options = problem.spec["answer"], problem.spec["options"]
        assert problem.answer == f"Answer: {letter}"
        assert len(set(options)) == len(options) == difficulty + 3
        assert f"\n{letter}) {options['ABCDE'.index(letter)]}" in problem.user_text
    for problem in make_split("instruct", "train", 30, seed=0, difficulty=difficulty):
        ids = problem.spec["instruction_id_list"]
        assert len(ids) == difficulty + 1 and len(problem.spec["kwargs"]) == len(ids)
        assert set(ids) <= set(ADVANCED)
    for problem in make_split("code", "train", 30, seed=0, difficulty=difficulty):
        if "cases" in problem.spec:
            continue  # stdin programs are run by the sandboxed verifier test
        source = problem.answer.removeprefix("```python\n").removesuffix("```")
        namespace: dict = {}
        exec(source + problem.spec["test"], namespace)
        namespace["check"](namespace[problem.spec["entry_point"]])


def _verify():
    rewards = pytest.importorskip("cascade_rl.rewards")
    if not hasattr(rewards, "verify"):
        pytest.skip("cascade_rl.rewards.verify is not available yet")
    return rewards.verify


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("domain", [d for d in DOMAINS if d != "code"])
def test_every_reference_answer_scores_one(domain, difficulty):
    verify = _verify()
    for i, problem in enumerate(make_split(domain, "train", 30, seed=0, difficulty=difficulty)):
        thinking = i % 2 == 0
        result = verify(assistant_text(problem, thinking), problem.spec)
        assert result.score == 1.0, (problem.user_text, problem.answer, result.info)


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_every_reference_program_scores_one(difficulty):
    verify = _verify()
    problems = make_split("code", "train", 10, seed=0, difficulty=difficulty)
    if difficulty == 2:  # make sure the stdin variant is exercised too
        extra = [p for p in make_split("code", "train", 40, seed=1, difficulty=2) if "cases" in p.spec]
        problems += extra[:2]
    for i, problem in enumerate(problems):
        result = verify(assistant_text(problem, i % 2 == 0), problem.spec)
        assert result.score == 1.0, (problem.user_text, problem.answer, result.info)


@pytest.mark.parametrize("domain", DOMAINS)
def test_difficulty_zero_stays_small(domain):
    """The miniature trains a ~1M-parameter model from scratch: short prompts, short answers."""
    problems = make_split(domain, "train", 200, seed=0, difficulty=0)
    prompt = sum(len(p.user_text) for p in problems) / len(problems)
    # for tool calls, count the argument values the model must produce (the XML around them is fixed)
    answer = sum(len(p.answer) + _argument_chars(p) for p in problems) / len(problems)
    assert prompt < 80
    assert answer < (60 if domain == "code" else 35)


def _argument_chars(problem: Problem) -> int:
    return sum(len(argument_text(v)) for call in problem.tool_calls for v in call["arguments"].values())


def test_eval_prompts_of_one_level_never_train_another():
    evals = _texts(make_split("tool_call", "test", 100, seed=0, difficulty=0))
    for difficulty in DIFFICULTIES:
        assert not evals & _texts(make_split("tool_call", "train", 300, seed=5, difficulty=difficulty))


def _naive_instruct_answer(user_text: str) -> str:
    """The content task done while ignoring every instruction."""
    sentence = user_text.split(". ")[0].rstrip(".")
    if sentence.startswith("List the words "):
        head, last = sentence.removeprefix("List the words ").rsplit(" and ", 1)
        return ", ".join([*head.split(", "), last])
    words = sentence.removeprefix("Write the word ").split()
    count = {"two": 2, "three": 3, "four": 4, "five": 5}.get(words[1], 1) if len(words) > 1 else 1
    return " ".join([words[0]] * count)


def _wrong_answer(problem: Problem) -> str:
    spec = problem.spec
    if problem.domain == "math":
        return f"The answer is {int(spec['answer']) + 1}."
    if problem.domain == "mcqa":
        return "Answer: " + next(letter for letter in "ABCDE" if letter != spec["answer"])
    if problem.domain == "json_schema":
        return "{}"
    if problem.domain == "instruct":
        return _naive_instruct_answer(problem.user_text)
    return "I cannot help with that."  # tool_call: no call at all


@pytest.mark.parametrize("domain", ["math", "mcqa", "json_schema", "tool_call", "instruct"])
def test_specs_reject_wrong_answers(domain):
    """The specs discriminate: a wrong answer (or the content task without the instruction) scores 0."""
    verify = _verify()
    for problem in make_split(domain, "train", 30, seed=0, difficulty=0):
        wrong = _wrong_answer(problem)
        assert verify(wrong + "<|im_end|>", problem.spec).score == 0.0, (problem.user_text, wrong)

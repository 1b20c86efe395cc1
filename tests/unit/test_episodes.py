"""Multi-turn episodes, token in / token out: the trained sequence is exactly what the generator saw and
produced, with mask 1 exactly on model-written tokens; tool responses and template tokens are never trained."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade_rl.chat import render, tokenize_conversation
from cascade_rl.engines.base import SamplingParams
from cascade_rl.envs import ENVS, StepResult
from cascade_rl.envs.tools import Tool, ToolEnv, ToolError, tool_schema
from cascade_rl.loops.episodes import Budget, EpisodeRunner
from cascade_rl.loops.rollout import PromptEncoder
from cascade_rl.types import Completion, Prompt

ADD = tool_schema("add", "Add two integers.", {"a": {"type": "integer"}, "b": {"type": "integer"}}, required=["a", "b"])


class CalcEnv(ToolEnv):
    """One tool; the answer is judged by the stage's reward function."""

    def __init__(self, prompt: Prompt) -> None:
        def add(a: int, b: int) -> str:
            if a < 0:
                raise ToolError("negative numbers are not supported")
            return str(a + b)

        super().__init__(prompt, [Tool(ADD, add)])


def _call(a: Any, b: Any) -> str:
    parameters = f"<parameter=a>\n{a}\n</parameter>\n<parameter=b>\n{b}\n</parameter>\n"
    return f"<tool_call>\n<function=add>\n{parameters}</function>\n</tool_call>\n"


class Scripted:
    """Each episode's k-th turn is ``turns[k]`` (chosen by how many tool responses its context holds)."""

    def __init__(self, tokenizer: Any, turns: Sequence[str]) -> None:
        self.tokenizer, self.turns = tokenizer, list(turns)
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.calls: list[tuple[int, int]] = []  # (rows, n) of every generate call
        self.emitted: list[list[int]] = []

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        self.calls.append((len(prompts), params.n))
        out = []
        for ids in prompts:
            k = self.tokenizer.decode(ids).count("<tool_response>")
            k = min(k, len(self.turns) - 1)
            tokens = self.tokenizer(self.turns[k], add_special_tokens=False)["input_ids"] + [self.im_end]
            self.emitted.append(tokens)
            logprobs = tuple(-0.01 * (i + 1) for i in range(len(tokens)))
            out.append([Completion(tuple(tokens), logprobs, "stop") for _ in range(params.n)])
        return out

    def sync(self, policy: Any, version: int) -> None:
        pass


@pytest.fixture(autouse=True)
def calc_env(monkeypatch):
    monkeypatch.setitem(ENVS, "calc", CalcEnv)


PROMPT = Prompt(({"role": "user", "content": "What is 2 + 3 + 7?"},), {"type": "math", "answer": "12"}, "calc", (ADD,))
PROMPT = Prompt(PROMPT.messages, PROMPT.spec, PROMPT.domain, PROMPT.tools, "p0", env="calc")


EIGHT_TURNS = Budget(max_turns=8)


def _episode(tokenizer, turns: list[str], thinking: bool, budget: Budget = EIGHT_TURNS, n: int = 2):
    generator = Scripted(tokenizer, turns)
    runner = EpisodeRunner(generator, tokenizer, thinking, budget)
    params = SamplingParams(n=n, max_new_tokens=64, seed=3)
    (group,) = runner.run([PROMPT], PromptEncoder(tokenizer), params)
    return group, generator


def _turn(content: str, calls: list[tuple[int, int]], thinking: bool) -> tuple[str, dict[str, Any]]:
    """(what the model writes after the generation prompt, the same turn as an OpenAI message), formatted
    as the chat template renders the message (so as SFT taught it)."""
    calls_text = "".join(_call(a, b) for a, b in calls)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [{"function": {"name": "add", "arguments": {"a": a, "b": b}}} for a, b in calls]
    if not thinking:  # after the generation prompt's <think></think>: content, then a newline before the calls
        return (content + "\n" + calls_text) if calls else content, message
    message["reasoning_content"] = "plan"  # after "<think>\n": the reasoning, its close, then the answer
    answer = (content + "\n" + calls_text if content else calls_text) if calls else content
    return "plan\n</think>\n" + answer, message


@pytest.mark.parametrize("thinking", [False, True])
def test_a_three_turn_episode_is_token_for_token_what_the_generator_saw(tokenizer, thinking):
    specs = [("", [(2, 3)]), ("Now the rest.", [(5, 7)]), ("\\boxed{12}", [])]
    turns, replies = zip(*(_turn(c, calls, thinking) for c, calls in specs), strict=True)
    group, generator = _episode(tokenizer, list(turns), thinking)
    assert generator.calls == [(1, 2), (2, 1), (2, 1)]  # one call per turn, all active episodes together
    trajectory = group.trajectories[0]
    assert len(trajectory.turns) == 3 and not trajectory.truncated and not trajectory.failed
    assert dict(trajectory.info)["tool_calls"] == 2 and dict(trajectory.info)["tool_errors"] == 0

    # the same conversation as the chat template renders it
    messages: list[dict[str, Any]] = [dict(m) for m in PROMPT.messages]
    for reply, response in zip(replies, ["5", "12", None], strict=True):
        messages.append(reply)
        if response is not None:
            messages.append({"role": "tool", "content": response})
    text = render(messages, list(PROMPT.tools), truncate_history_thinking=False)
    expected = tokenizer(text.removesuffix("\n"), add_special_tokens=False)["input_ids"]
    assert list(trajectory.tokens) == expected  # token in, token out: the template's own tokens, nothing re-encoded
    # mask 1 exactly on the tokens the generator produced, with their behaviour log-probs
    emitted = [generator.emitted[i] for i in (0, 2, 4)]  # episode 0's three turns
    for (start, end), tokens in zip(trajectory.turns, emitted, strict=True):
        assert list(trajectory.tokens[start:end]) == tokens
        assert trajectory.behaviour_logprobs[start:end] == tuple(-0.01 * (i + 1) for i in range(len(tokens)))
    in_turn = {j for start, end in trajectory.turns for j in range(start, end)}
    assert [j for j, m in enumerate(trajectory.loss_mask) if m] == sorted(in_turn)
    assert all(lp == 0.0 for j, lp in enumerate(trajectory.behaviour_logprobs) if j not in in_turn)
    # and it is exactly what SFT supervises on the same conversation
    _, sft_mask = tokenize_conversation(tokenizer, messages, list(PROMPT.tools), truncate_history_thinking=False)
    assert list(trajectory.loss_mask) == sft_mask[: len(trajectory.loss_mask)]


def test_tool_errors_are_answered_and_counted(tokenizer):
    group, _ = _episode(
        tokenizer,
        [_call(-1, 3), _call("x", 3), "<tool_call>\n<function=mul>\n</function>\n</tool_call>\n", "done"],
        False,
    )
    trajectory = group.trajectories[0]
    assert len(trajectory.turns) == 4 and dict(trajectory.info)["tool_errors"] == 3
    text = tokenizer.decode(list(trajectory.tokens))
    assert "error: negative numbers are not supported" in text
    assert "error: bad arguments for add: 'x' is not of type 'integer'" in text
    assert "error: unknown tool 'mul'; the tools are: add" in text


def test_budgets_end_episodes(tokenizer):
    looping = [_call(1, 1)]
    group, _ = _episode(tokenizer, looping, False, Budget(max_turns=3))
    assert all(len(t.turns) == 3 and t.truncated and t.info["ended"] == "max_turns" for t in group.trajectories)
    group, _ = _episode(tokenizer, looping, False, Budget(max_turns=50, max_context_tokens=700))
    assert all(t.truncated and t.info["ended"] == "context_tokens" and len(t.tokens) <= 700 for t in group.trajectories)


class Broken(ToolEnv):
    def __init__(self, prompt: Prompt) -> None:
        def add(a: int, b: int) -> str:
            raise RuntimeError("the database is down")

        super().__init__(prompt, [Tool(ADD, add)])


def test_an_environment_failure_marks_the_episode_not_the_batch(tokenizer, monkeypatch):
    monkeypatch.setitem(ENVS, "calc", Broken)
    group, _ = _episode(tokenizer, [_call(1, 2), "3"], False)
    assert all(t.failed and "database is down" in t.info["env_error"] for t in group.trajectories)


class Stop(ToolEnv):
    """Scores the episode itself."""

    def __init__(self, prompt: Prompt) -> None:
        super().__init__(prompt, [Tool(ADD, lambda a, b: str(a + b))])

    def finish(self, turn: Any) -> StepResult:
        return StepResult(done=True, reward=float(turn.content == "12"), info=self.counts())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(0, 99), st.integers(0, 99), st.text(alphabet="ab <>/=\n{}x1", max_size=12)),
        min_size=0,
        max_size=4,
    ),
    st.booleans(),
)
def test_no_tool_response_or_template_token_is_ever_trained(tokenizer, monkeypatch, calls, thinking):
    monkeypatch.setitem(ENVS, "calc", Stop)
    prefix = "ok</think>\n" if thinking else ""
    turns = [prefix + chatter + _call(a, b) for a, b, chatter in calls] + [prefix + "12"]
    group, generator = _episode(tokenizer, turns, thinking, n=1)
    (trajectory,) = group.trajectories
    # mask 1 exactly on the turns' tokens, which are exactly what the generator emitted, in order
    trained = [tok for tok, m in zip(trajectory.tokens, trajectory.loss_mask, strict=True) if m]
    emitted = [tok for turn in generator.emitted[: len(trajectory.turns)] for tok in turn]
    assert trained == emitted
    assert sum(trajectory.loss_mask) == sum(end - start for start, end in trajectory.turns)
    # every untrained stretch between turns is a rendered observation: tool responses and template only
    for (_, end), (start, _) in zip(trajectory.turns, trajectory.turns[1:], strict=False):
        gap = tokenizer.decode(list(trajectory.tokens[end:start]))
        assert gap.startswith("\n<|im_start|>user\n<tool_response>") and "<|im_start|>assistant\n" in gap


def test_mixed_thinking_gives_each_prompt_one_mode_and_half_the_prompts_each():
    from cascade_rl.loops.episodes import thinking_for

    prompts = [Prompt(PROMPT.messages, PROMPT.spec, "calc", uid=f"p{i}") for i in range(400)]
    modes = [thinking_for("mixed", p) for p in prompts]
    assert modes == [thinking_for("mixed", p) for p in prompts]  # fixed per prompt
    assert 160 < sum(modes) < 240  # about half (binomial: 200 +- 10)
    assert {thinking_for(True, p) for p in prompts} == {True} and {thinking_for(False, p) for p in prompts} == {False}

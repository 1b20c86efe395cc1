"""Tool-integrated reasoning tasks: their reference episodes replay through the real sandboxed Python tool."""

from __future__ import annotations

import random

import pytest

from cascade_rl.chat import parse_completion, render, tokenize_conversation
from cascade_rl.data.tasks import make_split
from cascade_rl.data.tasks.tir import CodeToolTask, TirMathTask
from cascade_rl.envs import make_env
from cascade_rl.rewards import verify
from cascade_rl.types import ToolCall


def _replay(problem) -> list[str]:
    """Run the reference episode's tool calls in a fresh environment; the responses it gives."""
    env = make_env(problem.env, problem.to_prompt())
    try:
        responses = []
        for message in problem.trace:
            for call in message.get("tool_calls", []):
                fn = call["function"]
                responses.append(env.run(ToolCall(fn["name"], fn["arguments"])))
        return responses
    finally:
        env.close()


@pytest.mark.parametrize("task", [TirMathTask(), CodeToolTask()], ids=lambda t: t.name)
@pytest.mark.parametrize("difficulty", [0, 1, 2])
def test_reference_episodes_replay_exactly_and_score_one(task, difficulty):
    rng = random.Random(difficulty)
    for _ in range(3):
        problem = task.generate(rng, difficulty)
        expected = [m["content"] for m in problem.trace if m["role"] == "tool"]
        assert _replay(problem) == expected
        final = problem.trace[-1]
        assert final["role"] == "assistant" and "tool_calls" not in final
        assert verify(final["content"] + "<|im_end|>", problem.spec).score == 1.0


def test_tir_math_needs_the_tool_value():
    problem = TirMathTask().generate(random.Random(0), 0)
    (a, b) = [int(x) for x in problem.user_text.removeprefix("Compute ").rstrip(".").split(" * ")]
    assert problem.spec == {"type": "math", "answer": str(a * b)} and problem.env == "python_tool"
    assert problem.trace[1] == {"role": "tool", "content": f"{a * b}\n"}


def test_code_tool_problems_split_with_their_code_problem():
    from cascade_rl.data.tasks import split_of

    for split in ("sft", "test"):
        for problem in make_split("code_tool", split, 20, seed=0):
            base_text = problem.user_text.removesuffix(CodeToolTask.SUFFIX)
            assert problem.split_key == ("code", base_text) and split_of("code", base_text) == split


def test_sft_records_train_the_calls_and_the_answer_not_the_tool_output(tokenizer):
    problem = TirMathTask().generate(random.Random(1), 0)
    for thinking in (False, True):
        record = problem.sft_record(thinking)
        ids, mask = tokenize_conversation(tokenizer, record["messages"], record["tools"])
        supervised = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
        value = problem.spec["answer"]
        assert "<function=stateful_python_code_exec>" in supervised and f"\\boxed{{{value}}}" in supervised
        # never the tool's output itself: the value is written only where the model writes it (its answer, and in
        # thinking mode the reasoning that reads it off)
        assert "<tool_response>" not in supervised and supervised.count(value) == (2 if thinking else 1)
        text = render(record["messages"], record["tools"])
        assert f"<tool_response>\n{value}\n\n</tool_response>" in text
        call_turn = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
        assert parse_completion(call_turn, thinking=False).tool_calls[0].name == "stateful_python_code_exec"

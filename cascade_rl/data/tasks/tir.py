"""Tool-integrated reasoning: problems where running Python helps, solved through ``stateful_python_code_exec``.

``tir_math``: exact arithmetic a model cannot do in its head but one line of Python can (difficulty 0:
3-digit products; 1: 4-digit products and powers; 2: binomial coefficients). The reference episode
calls the tool once, reads the printed value and answers ``\\boxed{value}``; the answer is judged by
the math verifier, so a model that answers without the tool is scored the same way.

``code_tool``: the ``code`` domain's function-writing problems, with the Python tool listed: the
reference episode runs the solution against its tests in the tool, reads that they pass, then gives
the solution. A ``code_tool`` problem splits with the ``code`` problem it extends, so no function is
trained in one of the two domains and tested in the other.

Tool responses in the references are exactly what ``envs.python_tool`` returns for the code (what
it prints), which ``tests/unit/test_tir.py`` replays through the real sandboxed tool.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import replace
from typing import Any

from cascade_rl.data.tasks.base import Problem, make_problem
from cascade_rl.data.tasks.code import CodeTask
from cascade_rl.envs.python_tool import TOOL

TOOL_NAME = TOOL["function"]["name"]
PASSED = "all tests passed"


def _call(code: str, reasoning: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": "",
        "reasoning": reasoning,
        "tool_calls": [{"type": "function", "function": {"name": TOOL_NAME, "arguments": {"code": code}}}],
    }


def _episode(code: str, printed: str, answer: str, plan: str, conclusion: str) -> tuple[dict[str, Any], ...]:
    return (
        _call(code, plan),
        {"role": "tool", "content": printed + "\n"},  # print() ends the line
        {"role": "assistant", "content": answer, "reasoning": conclusion},
    )


def _math_case(rng: random.Random, difficulty: int) -> tuple[str, str, int]:
    """(question, code, exact value)."""
    if difficulty == 0:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        return f"Compute {a} * {b}.", f"print({a} * {b})", a * b
    if difficulty == 1:
        if rng.random() < 0.5:
            a, b = rng.randint(1000, 9999), rng.randint(1000, 9999)
            return f"What is {a} times {b}? Give the exact product.", f"print({a} * {b})", a * b
        base, power = rng.randint(3, 12), rng.randint(12, 30)
        return f"What is {base} to the power {power}, exactly?", f"print({base} ** {power})", base**power
    n, k = rng.randint(20, 60), rng.randint(3, 10)
    question = f"In how many ways can {k} items be chosen from {n} distinct items?"
    return question, f"import math\nprint(math.comb({n}, {k}))", math.comb(n, k)


class TirMathTask:
    name = "tir_math"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        question, code, value = _math_case(rng, difficulty)
        answer = f"\\boxed{{{value}}}"
        problem = make_problem(
            self.name,
            difficulty,
            user=question,
            spec={"type": "math", "answer": str(value)},
            answer=answer,
            reasoning="Compute it exactly with Python.",
            tools=[TOOL],
        )
        trace = _episode(code, str(value), answer, "Compute it exactly with Python.", f"The tool printed {value}.")
        return replace(problem, env="python_tool", trace=trace)


_FENCE = re.compile(r"```python\n(.*?)```", re.S)


class CodeToolTask:
    """``code`` problems with the Python tool: test the function, then answer with it."""

    name = "code_tool"
    SUFFIX = " You can run Python to test it before you answer."

    def __init__(self) -> None:
        self.base = CodeTask()

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        while True:  # function problems only: stdin programs cannot be checked with a test call
            base = self.base.generate(rng, difficulty)
            if "entry_point" in base.spec:
                break
        solution = _FENCE.search(base.answer).group(1)  # type: ignore[union-attr]
        code = f"{solution}{base.spec['test']}\ncheck({base.spec['entry_point']})\nprint({PASSED!r})"
        problem = make_problem(
            self.name,
            difficulty,
            user=base.user_text + self.SUFFIX,
            spec=dict(base.spec),
            answer=base.answer,
            reasoning=base.reasoning,
            tools=[TOOL],
        )
        trace = _episode(code, PASSED, base.answer, "Test the function first.", "The tests pass.")
        return replace(problem, env="python_tool", trace=trace, split_key=("code", base.user_text))

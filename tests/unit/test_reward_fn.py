"""Group-level reward functions: the verifier wrapper, asynchronous functions, shape checks."""

from __future__ import annotations

import pytest

from cascade_rl.rewards import RewardResult, verify
from cascade_rl.rewards.reward_fn import REWARD_FNS, RewardContext, VerifierReward, build_reward, score_groups
from cascade_rl.types import Prompt, Trajectory, TrajectoryGroup


def _group(spec: dict, texts: list[str], thinking: bool = False, truncated: tuple[int, ...] = ()) -> TrajectoryGroup:
    prompt = Prompt(({"role": "user", "content": "q"},), spec, "math")
    trajectories = tuple(
        Trajectory((1, 2), (0, 1), (0.0, -1.0), ((1, 2),), (text,), i in truncated, "math")
        for i, text in enumerate(texts)
    )
    return TrajectoryGroup(prompt, trajectories, thinking=thinking)


def test_the_verifier_reward_scores_as_verify_does():
    math = {"type": "math", "answer": "4"}
    groups = [
        _group(math, ["\\boxed{4}<|im_end|>", "\\boxed{5}<|im_end|>", "\\boxed{4}"], truncated=(2,)),
        # thinking mode: the prompt opened <think>, so an unclosed block is reasoning, never the answer
        _group(math, ["4 is it<|im_end|>", "hmm</think>\\boxed{4}<|im_end|>"], thinking=True),
    ]
    results = build_reward("verifier", RewardContext())(groups)
    assert [[r.score for r in rs] for rs in results] == [[1.0, 0.0, 0.0], [0.0, 1.0]]
    assert results[0][2].info == {"reason": "truncated"}
    expected = [
        verify(t.final_text, g.prompt.spec, truncated=t.truncated, thinking=g.thinking)
        for g in groups
        for t in g.trajectories
    ]
    assert [r.score for rs in results for r in rs] == [r.score for r in expected]


def test_an_asynchronous_reward_function_is_awaited():
    class Judge:
        async def __call__(self, groups):
            return [[RewardResult(0.5) for _ in g.trajectories] for g in groups]

        def close(self) -> None:
            pass

    groups = [_group({"type": "math", "answer": "1"}, ["a", "b"])]
    assert [[r.score for r in rs] for rs in score_groups(Judge(), groups)] == [[0.5, 0.5]]


def test_a_reward_function_must_score_every_trajectory():
    groups = [_group({"type": "math", "answer": "1"}, ["a", "b"])]
    with pytest.raises(ValueError, match=r"returned \[1\] rewards per group, expected \[2\]"):
        score_groups(lambda gs: [[RewardResult(1.0)]], groups)


def test_reward_functions_are_registered_by_name():
    assert "verifier" in REWARD_FNS and isinstance(build_reward("verifier", RewardContext(workers=2)), VerifierReward)
    assert build_reward("verifier", RewardContext(workers=2)).workers == 2
    with pytest.raises(ValueError, match="unknown reward type 'no_such'; registered: "):
        build_reward("no_such", RewardContext())

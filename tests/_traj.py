"""Hand-built trajectories and groups for learner-side tests (what the rollout half would hand over)."""

from __future__ import annotations

from cascade_rl.types import Prompt, Trajectory, TrajectoryGroup


def trajectory(
    prompt: list[int],
    completion: list[int],
    logprobs: list[float] | None = None,
    *,
    reward: float = 0.0,
    domain: str = "math",
    truncated: bool = False,
) -> Trajectory:
    """A single-turn trajectory: prompt tokens (mask 0), then the model's completion (mask 1)."""
    logprobs = logprobs if logprobs is not None else [-1.0] * len(completion)
    n = len(prompt)
    return Trajectory(
        tokens=tuple(prompt + completion),
        loss_mask=(0,) * n + (1,) * len(completion),
        behaviour_logprobs=(0.0,) * n + tuple(logprobs),
        turns=((n, n + len(completion)),),
        texts=("",),
        truncated=truncated,
        domain=domain,
        reward=reward,
    )


def group(index: int, *trajectories: Trajectory, domain: str = "math") -> TrajectoryGroup:
    prompt = Prompt(messages=({"role": "user", "content": "q"},), spec={"type": "math", "answer": "1"}, domain=domain)
    return TrajectoryGroup(prompt, tuple(trajectories), index)


def rewards_group(
    index: int, rewards: list[float], domain: str = "math", truncated: tuple[int, ...] = ()
) -> TrajectoryGroup:
    """A group of 2-token completions after the prompt [5, 6], one per reward; ``truncated`` indices hit the limit."""
    return group(
        index,
        *(trajectory([5, 6], [7, 7], reward=r, domain=domain, truncated=i in truncated) for i, r in enumerate(rewards)),
        domain=domain,
    )

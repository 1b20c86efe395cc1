"""The rollout half of an RL step: prompts -> episodes -> scored ``TrajectoryGroup``s.

Everything that touches text lives here: prompts are rendered and tokenized once, every episode is
run in its environment (``envs``), completions are decoded and parsed for the environment and the
reward function, and the result is handed to the learner as token ids, masks and numbers only
(``types.Trajectory``). Token in, token out: a trajectory's tokens are exactly the ones the
generator was conditioned on and produced, never a re-tokenisation of decoded text.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from transformers import PreTrainedTokenizerBase

from cascade_rl.chat import encode_prompt
from cascade_rl.config import RLStage
from cascade_rl.engines.base import Generator, SamplingParams
from cascade_rl.envs import env_class
from cascade_rl.loops.curriculum import Curriculum
from cascade_rl.loops.episodes import Budget, EpisodeRunner
from cascade_rl.rewards.reward_fn import RewardFn, score_groups
from cascade_rl.types import Prompt, Trajectory, TrajectoryGroup


@dataclass
class PromptPool:
    """The stage's prompts by source, sampled by source weight; with a curriculum, only its active ones
    (all of them again, should every prompt have left)."""

    prompts: list[list[Prompt]]
    weights: list[float]
    curriculum: Curriculum | None = None

    def sample(self, count: int, rng: random.Random) -> list[Prompt]:
        sources, weights = self.prompts, self.weights
        if self.curriculum is not None:
            active = [[p for p in source if self.curriculum.is_active(p.uid)] for source in self.prompts]
            if any(active):
                sources, weights = active, [w if a else 0.0 for w, a in zip(self.weights, active, strict=True)]
        out = []
        for _ in range(count):
            s = rng.choices(range(len(sources)), weights=weights)[0]
            out.append(sources[s][rng.randrange(len(sources[s]))])
        return out

    def record(self, groups: Sequence[TrajectoryGroup]) -> dict[str, float]:
        """Every scored group's visit in the curriculum (kept or filtered alike); its counts as metrics."""
        if self.curriculum is None:
            return {}
        for group in groups:
            self.curriculum.record(group.prompt.uid, [t.reward for t in group.trajectories])
        return {f"curriculum/{k}": float(v) for k, v in self.curriculum.counts().items()}


@dataclass
class PromptEncoder:
    """Prompt ids (the rendered conversation plus the generation prompt), encoded once per prompt and mode."""

    tokenizer: PreTrainedTokenizerBase
    # keyed by object identity; the prompt is kept with its ids so that identity is never reused
    _ids: dict[tuple[int, bool], tuple[Prompt, list[int]]] = field(default_factory=dict)

    def __call__(self, prompt: Prompt, messages: Sequence[dict], thinking: bool) -> list[int]:
        key = (id(prompt), thinking)
        if key not in self._ids:
            ids = encode_prompt(self.tokenizer, list(messages), prompt.tools, enable_thinking=thinking)
            self._ids[key] = (prompt, ids)
        return self._ids[key][1]


def with_rewards(groups: Sequence[TrajectoryGroup], reward_fn: RewardFn) -> list[TrajectoryGroup]:
    """Groups with every trajectory's reward (and its verdict's info) from the stage's reward function.

    Groups of an environment that scores its own episodes (``rewards_itself``) keep the environment's
    rewards; an episode of theirs that ended on a budget, before the environment could score it, has 0.
    """
    pending = [i for i, g in enumerate(groups) if not getattr(env_class(g.prompt.env), "rewards_itself", False)]
    out = list(groups)
    for i, results in zip(pending, score_groups(reward_fn, [groups[i] for i in pending]), strict=True):
        scored = zip(groups[i].trajectories, results, strict=True)
        trajectories = tuple(replace(t, reward=r.score, info={**t.info, **r.info}) for t, r in scored)
        out[i] = replace(groups[i], trajectories=trajectories)
    return out


def counted(trajectory: Trajectory, overlong_filtering: bool) -> bool:
    """Whether a trajectory enters the loss and its group's statistics: a failed one never, a truncated one
    not under overlong filtering."""
    return not trajectory.failed and not (overlong_filtering and trajectory.truncated)


def has_signal(group: TrajectoryGroup, overlong_filtering: bool) -> bool:
    """At least two different rewards among the group's counted trajectories (else every advantage is 0)."""
    return len({t.reward for t in group.trajectories if counted(t, overlong_filtering)}) > 1


@dataclass
class Rollouts:
    """The rollout half of one stage: a full batch of scored groups per step, dynamic filtering included."""

    stage: RLStage
    pool: PromptPool
    generator: Generator
    tokenizer: PreTrainedTokenizerBase
    reward_fn: RewardFn
    filter_constant_groups: bool
    monitor: RewardFn | None = None  # scores every rollout for the metrics only (spec_reward)
    encode: PromptEncoder = field(init=False)
    episodes: EpisodeRunner = field(init=False)

    def __post_init__(self) -> None:
        self.encode = PromptEncoder(self.tokenizer)
        budget = Budget(self.stage.max_turns, self.stage.max_context_tokens)
        self.episodes = EpisodeRunner(self.generator, self.tokenizer, self.stage.thinking, budget, self.stage.envs)

    def params(self, rng: random.Random) -> SamplingParams:
        stage = self.stage
        return SamplingParams(
            n=stage.group_size,
            temperature=stage.temperature,
            max_new_tokens=stage.max_new_tokens,
            stop_token_ids=(self.tokenizer.eos_token_id,),
            seed=rng.randrange(1 << 62),
        )

    def collect(self, step: int) -> tuple[list[TrajectoryGroup], dict[str, float]]:
        """``prompts_per_step`` groups; groups without signal are dropped and refilled (dynamic filtering).

        Every random draw is seeded by (stage seed, step, sampling round), so a resumed run replays the
        same prompts and samples.
        """
        stage = self.stage
        filtering = stage.dynamic_filtering and self.filter_constant_groups
        kept: list[TrajectoryGroup] = []
        seen: list[Trajectory] = []
        dropped = rounds = produced = 0
        gen_time = 0.0
        curriculum: dict[str, float] = {}
        while len(kept) < stage.prompts_per_step and rounds < stage.max_sampling_rounds:
            rng = random.Random(f"{stage.seed}:{step}:{rounds}")
            prompts = self.pool.sample(stage.prompts_per_step - len(kept), rng)
            params = self.params(rng)
            t0 = time.perf_counter()
            groups = self.episodes.run(prompts, self.encode, params, first_index=produced)
            produced += len(groups)
            gen_time += time.perf_counter() - t0
            scored = with_rewards(groups, self.reward_fn)
            curriculum = self.pool.record(scored)
            for group in scored:
                seen.extend(group.trajectories)
                if filtering and not has_signal(group, stage.overlong_filtering):
                    dropped += 1
                else:
                    kept.append(group)
            rounds += 1
        stats = rollout_stats(seen) | curriculum
        if self.monitor is not None and seen:
            stats["spec_reward"] = self._monitored(kept)
        gen_tokens = sum(t.model_tokens for t in seen)
        stats |= {
            "dropped_groups": dropped,
            "sampling_rounds": rounds,
            "kept_groups": len(kept),
            "rollout_tokens_per_s": gen_tokens / max(gen_time, 1e-9),
            "generation_time": gen_time,
        }
        return kept[: stage.prompts_per_step], stats

    def _monitored(self, groups: Sequence[TrajectoryGroup]) -> float:
        """Mean score of the groups' rollouts under the monitor (the prompts' own verifiers)."""
        assert self.monitor is not None
        scores = [r.score for rs in score_groups(self.monitor, groups) for r in rs]
        return statistics.fmean(scores) if scores else 0.0


def rollout_stats(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Metrics over every sampled trajectory (kept or not): what the policy actually does."""
    if not trajectories:
        return {}
    out: dict[str, float] = {
        "reward": statistics.fmean(t.reward for t in trajectories),
        "pass_rate": statistics.fmean(t.reward >= 1.0 for t in trajectories),
        "response_length": statistics.fmean(t.model_tokens for t in trajectories),
        "truncation_rate": statistics.fmean(t.truncated for t in trajectories),
        "turns": statistics.fmean(len(t.turns) for t in trajectories),
        "tool_errors": statistics.fmean(float(t.info.get("tool_errors", 0)) for t in trajectories),
        "env_failures": float(sum(t.failed for t in trajectories)),
    }
    by_domain: dict[str, list[float]] = defaultdict(list)
    for t in trajectories:
        by_domain[t.domain].append(t.reward)
    for domain, rewards in by_domain.items():
        out[f"reward/{domain}"] = statistics.fmean(rewards)
        out[f"pass_rate/{domain}"] = statistics.fmean(x >= 1.0 for x in rewards)
    return out

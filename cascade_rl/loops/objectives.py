"""RL objectives: the learner half's first step, from scored trajectory groups to a training batch.

GRPO and MOPD share one loop; they differ only here. An objective turns ``TrajectoryGroup``s into
``TrainSequence``s carrying its per-token inputs (reward advantages, teacher log-probs) and names the
registered step loss (``algo.step_losses``) with its JSON-able settings, which the policy computes.
It reads token ids, masks, rewards and domains only; it never decodes text. A new variant is a new
registered class, never a branch in the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from cascade_rl.algo.advantages import ADVANTAGES
from cascade_rl.engines.base import Scorer, TrainSequence
from cascade_rl.logging import console
from cascade_rl.loops.rollout import counted
from cascade_rl.types import Trajectory, TrajectoryGroup


@dataclass(frozen=True)
class ObjectiveSettings:
    """What an objective needs from its stage."""

    icepop: tuple[float, float] | None
    kl_coef: float = 0.0
    overlong_filtering: bool = True
    temperature: float = 1.0  # the sampling temperature: teachers score at it too, as pi_train does
    reduction: str = "seq_mean"
    reward_weight: float = 0.0
    clip: tuple[float, float] = (0.2, 0.2)
    tis_cap: float = 2.0


class Objective(Protocol):
    loss: str  # the registered step loss the policy computes
    filters_constant_groups: ClassVar[bool]  # dynamic filtering applies (reward-driven objectives)

    def sequences(self, groups: Sequence[TrajectoryGroup]) -> list[TrainSequence]:
        """One sequence per trajectory (in group order) with the objective's per-token inputs."""
        ...

    def loss_config(self) -> dict[str, Any]:
        """The step loss's settings (plain data: they may travel to a remote policy)."""
        ...


@dataclass(frozen=True)
class ObjectiveEntry:
    factory: Callable[..., Objective]
    stage_type: str  # the stage type that runs it: "rl" (rewards) or "mopd" (teachers)


OBJECTIVES: dict[str, ObjectiveEntry] = {}


def register_objective(name: str, stage_type: str) -> Callable[[Callable[..., Objective]], Callable[..., Objective]]:
    def deco(factory: Callable[..., Objective]) -> Callable[..., Objective]:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        OBJECTIVES[name] = ObjectiveEntry(factory, stage_type)
        return factory

    return deco


def objectives_of(stage_type: str) -> list[str]:
    """The objectives a stage type may name."""
    return sorted(name for name, entry in OBJECTIVES.items() if entry.stage_type == stage_type)


def base_sequence(trajectory: Trajectory, group: int, overlong_filtering: bool) -> TrainSequence:
    """Tokens, loss mask (all 0 for a truncated trajectory under overlong filtering) and behaviour log-probs."""
    trained = counted(trajectory, overlong_filtering)
    return TrainSequence(
        tokens=list(trajectory.tokens),
        mask=list(trajectory.loss_mask) if trained else [0] * len(trajectory.tokens),
        values={"inf_logprobs": list(trajectory.behaviour_logprobs)},
        group=group,  # a group's rollouts share the prompt: the trainer may run it once
    )


def group_advantages(group: TrajectoryGroup, estimator: str, overlong_filtering: bool) -> list[float]:
    """Reward advantages of a group's trajectories, normalised over the counted ones only.

    Under overlong filtering a truncated rollout leaves the loss, so it must leave the group mean and
    std too: otherwise its reward (0) would still push the finished ones up, which is exactly the
    length penalty overlong filtering exists to remove. Trajectories left out get advantage 0.
    """
    members = [i for i, t in enumerate(group.trajectories) if counted(t, overlong_filtering)]
    out = [0.0] * len(group.trajectories)
    if members:
        rewards_G = torch.tensor([group.trajectories[i].reward for i in members], dtype=torch.float32)
        for i, a in zip(members, ADVANTAGES[estimator](rewards_G).tolist(), strict=True):
            out[i] = a
    return out


def _with_advantages(
    seqs: list[TrainSequence], groups: Sequence[TrajectoryGroup], estimator: str, overlong: bool
) -> None:
    flat = [a for g in groups for a in group_advantages(g, estimator, overlong)]
    for seq, adv in zip(seqs, flat, strict=True):
        seq.values["advantages"] = [adv * m for m in seq.mask]


class GRPO:
    """Token-level GRPO on group-normalised rewards (strictly on-policy: one update per batch, ratio 1)."""

    filters_constant_groups: ClassVar[bool] = True

    def __init__(self, settings: ObjectiveSettings, *, loss: str = "grpo", estimator: str = "grpo", **_: Any) -> None:
        self.settings, self.loss, self.estimator = settings, loss, estimator

    def sequences(self, groups: Sequence[TrajectoryGroup]) -> list[TrainSequence]:
        overlong = self.settings.overlong_filtering
        seqs = [base_sequence(t, g.index, overlong) for g in groups for t in g.trajectories]
        _with_advantages(seqs, groups, self.estimator, overlong)
        return seqs

    def loss_config(self) -> dict[str, Any]:
        s = self.settings
        return {"icepop": s.icepop, "kl_coef": s.kl_coef, "clip": s.clip, "tis_cap": s.tis_cap}


register_objective("grpo", "rl")(lambda settings, **kw: GRPO(settings))
register_objective("grpo_no_std", "rl")(lambda settings, **kw: GRPO(settings, estimator="grpo_no_std"))
register_objective("grpo_clip", "rl")(lambda settings, **kw: GRPO(settings, loss="grpo_clip"))
register_objective("tis", "rl")(lambda settings, **kw: GRPO(settings, loss="tis"))


@register_objective("mopd", "mopd")
class MOPD:
    """Multi-domain on-policy distillation: dense advantage log pi_teacher - log pi_train (SPEC section 5)."""

    filters_constant_groups: ClassVar[bool] = False
    loss = "mopd"

    def __init__(self, settings: ObjectiveSettings, teachers: TeacherRouter | None = None, **_: Any) -> None:
        if teachers is None:
            raise ValueError("the mopd objective needs teachers (a domain -> checkpoint map)")
        self.settings, self.teachers = settings, teachers

    def sequences(self, groups: Sequence[TrajectoryGroup]) -> list[TrainSequence]:
        overlong = self.settings.overlong_filtering
        seqs = [base_sequence(t, g.index, overlong) for g in groups for t in g.trajectories]
        domains = [t.domain for g in groups for t in g.trajectories]
        # teachers score the model-written tokens only (the mask), at the student's sampling temperature
        for seq, lp in zip(seqs, self.teachers.logprobs(seqs, domains, self.settings.temperature), strict=True):
            seq.values["teacher_logprobs"] = lp
        if self.settings.reward_weight:
            _with_advantages(seqs, groups, "grpo", overlong)
        return seqs

    def loss_config(self) -> dict[str, Any]:
        s = self.settings
        return {"icepop": s.icepop, "kl_coef": s.kl_coef, "reduction": s.reduction, "reward_weight": s.reward_weight}


def per_domain_means(metrics: Mapping[str, float], domains: Sequence[str]) -> dict[str, float]:
    """``name_sum@id`` / ``tokens@id`` -> ``name/<domain>``; other metrics pass through."""
    out = {k: v for k, v in metrics.items() if "@" not in k}
    for key, value in metrics.items():
        name, _, index = key.partition("@")
        if index and not name.startswith("tokens"):
            tokens = metrics[f"tokens@{index}"]
            out[f"{name.removesuffix('_sum')}/{domains[int(index)]}"] = value / max(tokens, 1.0)
    return out


class TeacherRouter:
    """One teacher per domain (no ensembling); domains without a teacher use the default one (said once)."""

    def __init__(self, scorers: Mapping[str, Scorer], default: str | None = None) -> None:
        self._scorers = dict(scorers)
        self.default = default
        self.defaulted: set[str] = set()  # domains sent to the default teacher so far

    def teacher_for(self, domain: str) -> str:
        if domain in self._scorers:
            return domain
        if self.default is None:
            raise KeyError(
                f"no teacher for domain {domain!r} and no default teacher; teachers: {sorted(self._scorers)}"
            )
        own = ", ".join(sorted(set(self._scorers) - {self.default}))
        if own and domain not in self.defaulted:  # a router with only the default teacher has nothing to say
            self.defaulted.add(domain)
            console.print(
                f"[yellow]MOPD:[/yellow] prompts of domain {domain!r} have no teacher of their own "
                f"(teachers: {own}); the default teacher scores them",
                highlight=False,
            )
        return self.default

    def logprobs(
        self, seqs: Sequence[TrainSequence], domains: Sequence[str], temperature: float = 1.0
    ) -> list[list[float]]:
        """Each sequence's token log-probs under its domain's teacher, at the student's sampling temperature."""
        by_teacher: dict[str, list[int]] = {}
        for i, d in enumerate(domains):
            by_teacher.setdefault(self.teacher_for(d), []).append(i)
        out: list[list[float]] = [[] for _ in seqs]
        for name, members in by_teacher.items():
            scored = self._scorers[name].logprobs([seqs[i] for i in members], temperature)
            for i, lp in zip(members, scored, strict=True):
                out[i] = lp
        return out

"""RL objectives: what turns scored rollouts into per-token training signal, selected by name.

GRPO and MOPD share one loop; they differ only here. An objective fills per-token ``values`` of
each rollout (reward advantages, teacher log-probs) before the update and supplies the loss.
A new variant is a new registered class, never a branch in the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from cascade_rl.algo.advantages import ADVANTAGES
from cascade_rl.algo.losses import icepop_weights, kl_penalty, mopd_loss, pg_loss_on_policy
from cascade_rl.engines.base import Scorer, TrainSequence
from cascade_rl.logging import console


@dataclass
class Rollout:
    """One sampled completion with everything the update needs."""

    prompt_index: int  # group id within the step
    domain: str
    prompt_tokens: list[int]
    tokens: list[int]  # completion tokens
    inf_logprobs: list[float]
    truncated: bool
    reward: float
    text: str = ""
    info: dict[str, Any] | None = None

    def sequence(self, trained: bool) -> TrainSequence:
        n_prompt = len(self.prompt_tokens)
        return TrainSequence(
            tokens=self.prompt_tokens + self.tokens,
            mask=[0] * n_prompt + [int(trained)] * len(self.tokens),
            values={"inf_logprobs": [0.0] * n_prompt + list(self.inf_logprobs)},
            group=self.prompt_index,  # a group's rollouts share the prompt: the trainer runs it once
        )


@dataclass(frozen=True)
class LossSettings:
    icepop: tuple[float, float] | None
    kl_coef: float
    reduction: str = "seq_mean"
    reward_weight: float = 0.0
    temperature: float = 1.0  # the sampling temperature: teachers score at it too, as pi_train does


Loss = tuple[torch.Tensor, dict[str, torch.Tensor | float]]


class Objective(Protocol):
    filters_constant_groups: ClassVar[bool]  # dynamic filtering applies (reward-driven objectives)

    def fill(self, rollouts: Sequence[Rollout], seqs: Sequence[TrainSequence]) -> None:
        """Add the objective's per-token values to ``seqs`` (aligned with ``rollouts``)."""
        ...

    def loss(self, logprobs_SL: torch.Tensor, t: Mapping[str, torch.Tensor], norm: Mapping[str, float]) -> Loss: ...


OBJECTIVES: dict[str, Callable[..., Objective]] = {}


def register_objective(name: str) -> Callable[[Callable[..., Objective]], Callable[..., Objective]]:
    def deco(cls: Callable[..., Objective]) -> Callable[..., Objective]:
        OBJECTIVES[name] = cls
        return cls

    return deco


def _group_advantages(rollouts: Sequence[Rollout], estimator: str) -> list[float]:
    """Group-normalised reward advantages, one per rollout (groups = rollouts of one prompt)."""
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rollouts):
        groups.setdefault(r.prompt_index, []).append(i)
    out = [0.0] * len(rollouts)
    for members in groups.values():
        rewards_G = torch.tensor([rollouts[i].reward for i in members], dtype=torch.float32)
        for i, a in zip(members, ADVANTAGES[estimator](rewards_G).tolist(), strict=True):
            out[i] = a
    return out


def _weights(logprobs_SL: torch.Tensor, t: Mapping[str, torch.Tensor], band: tuple[float, float] | None) -> tuple:
    if band is None:
        return None, {}
    w, dropped = icepop_weights(logprobs_SL, t["inf_logprobs"], band[0], band[1])
    mask = t["mask"]
    return w, {"icepop_drop_frac_sum": (dropped.float() * mask).sum()}


def _with_kl(
    loss: Loss, logprobs_SL: torch.Tensor, t: Mapping[str, torch.Tensor], norm: Mapping[str, float], coef: float
) -> Loss:
    if coef <= 0:
        return loss
    kl, kl_metrics = kl_penalty(logprobs_SL, t["ref_logprobs"], t["mask"], norm["tokens"], coef=coef)
    return loss[0] + kl, {**loss[1], "kl_sum": kl_metrics["kl_sum"]}


def _mismatch(logprobs_SL: torch.Tensor, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    diff = (logprobs_SL.detach() - t["inf_logprobs"]).abs() * t["mask"]
    return {"abs_logprob_diff_sum": diff.sum()}


def domain_breakdown(
    logprobs_SL: torch.Tensor, t: Mapping[str, torch.Tensor], band: tuple[float, float] | None
) -> dict[str, torch.Tensor]:
    """Per-domain sums of per-token diagnostics (keys ``name_sum@id`` and ``tokens@id``, ids from
    ``t["domain_id"]``): train/inference mismatch, IcePop drops and, with a teacher, the reverse KL."""
    lp = logprobs_SL.detach()
    mask, ids = t["mask"], t["domain_id"]
    per_token = {"abs_logprob_diff": (lp - t["inf_logprobs"]).abs()}
    if band is not None:
        ratio = torch.exp(lp - t["inf_logprobs"])
        per_token["icepop_drop_frac"] = ((ratio < band[0]) | (ratio > band[1])).float()
    if "teacher_logprobs" in t:
        per_token["reverse_kl"] = lp - t["teacher_logprobs"]
    out: dict[str, torch.Tensor] = {}
    for d in ids[mask > 0].unique().tolist():
        m = mask * (ids == d)
        out[f"tokens@{int(d)}"] = m.sum()
        for name, values in per_token.items():
            out[f"{name}_sum@{int(d)}"] = (values * m).sum()
    return out


def per_domain_means(metrics: Mapping[str, float], domains: Sequence[str]) -> dict[str, float]:
    """``name_sum@id`` / ``tokens@id`` -> ``name/<domain>``; other metrics pass through."""
    out = {k: v for k, v in metrics.items() if "@" not in k}
    for key, value in metrics.items():
        name, _, index = key.partition("@")
        if index and not name.startswith("tokens"):
            tokens = metrics[f"tokens@{index}"]
            out[f"{name.removesuffix('_sum')}/{domains[int(index)]}"] = value / max(tokens, 1.0)
    return out


class GRPO:
    """Token-level GRPO (strictly on-policy: one update per batch, so the ratio is 1)."""

    filters_constant_groups: ClassVar[bool] = True

    def __init__(self, settings: LossSettings, estimator: str = "grpo", **_: Any) -> None:
        self.settings, self.estimator = settings, estimator

    def fill(self, rollouts: Sequence[Rollout], seqs: Sequence[TrainSequence]) -> None:
        for r, seq, adv in zip(rollouts, seqs, _group_advantages(rollouts, self.estimator), strict=True):
            seq.values["advantages"] = [0.0] * len(r.prompt_tokens) + [adv] * len(r.tokens)

    def loss(self, logprobs_SL: torch.Tensor, t: Mapping[str, torch.Tensor], norm: Mapping[str, float]) -> Loss:
        w, extra = _weights(logprobs_SL, t, self.settings.icepop)
        loss, metrics = pg_loss_on_policy(logprobs_SL, t["advantages"], t["mask"], norm["tokens"], w)
        return _with_kl(
            (loss, {**metrics, **extra, **_mismatch(logprobs_SL, t)}), logprobs_SL, t, norm, self.settings.kl_coef
        )


register_objective("grpo")(lambda settings, **kw: GRPO(settings, "grpo", **kw))
register_objective("grpo_no_std")(lambda settings, **kw: GRPO(settings, "grpo_no_std", **kw))


@register_objective("mopd")
class MOPD:
    """Multi-domain on-policy distillation: dense advantage log pi_teacher - log pi_train (SPEC section 5)."""

    filters_constant_groups: ClassVar[bool] = False

    def __init__(self, settings: LossSettings, teachers: TeacherRouter | None = None, **_: Any) -> None:
        if teachers is None:
            raise ValueError("the mopd objective needs teachers (a domain -> checkpoint map)")
        self.settings, self.teachers = settings, teachers

    def fill(self, rollouts: Sequence[Rollout], seqs: Sequence[TrainSequence]) -> None:
        teacher_lp = self.teachers.logprobs(seqs, [r.domain for r in rollouts], self.settings.temperature)
        reward_adv = _group_advantages(rollouts, "grpo") if self.settings.reward_weight else None
        for i, (r, seq) in enumerate(zip(rollouts, seqs, strict=True)):
            seq.values["teacher_logprobs"] = teacher_lp[i]
            if reward_adv is not None:
                seq.values["advantages"] = [0.0] * len(r.prompt_tokens) + [reward_adv[i]] * len(r.tokens)

    def loss(self, logprobs_SL: torch.Tensor, t: Mapping[str, torch.Tensor], norm: Mapping[str, float]) -> Loss:
        normalizer = norm["sequences"] if self.settings.reduction == "seq_mean" else norm["tokens"]
        loss = mopd_loss(
            logprobs_SL,
            t["inf_logprobs"],
            t["teacher_logprobs"],
            t["mask"],
            normalizer=normalizer,
            reduction=self.settings.reduction,
            icepop=self.settings.icepop,
            reward_adv_BT=t.get("advantages"),
            reward_weight=self.settings.reward_weight,
        )
        return _with_kl(loss, logprobs_SL, t, norm, self.settings.kl_coef)


class TeacherRouter:
    """One teacher per domain (no ensembling); domains without a teacher use the default one (said once)."""

    def __init__(self, scorers: Mapping[str, Scorer | Callable[[], Scorer]], default: str | None = None) -> None:
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
            scorer = self._scorers[name]
            # A factory loads the teacher only now and lets it go after: memory bounded by the largest one.
            live = scorer() if callable(scorer) and not hasattr(scorer, "logprobs") else scorer
            live.temperature = temperature
            for i, lp in zip(members, live.logprobs([seqs[i] for i in members]), strict=True):  # type: ignore[union-attr]
                out[i] = lp
            del live
        return out

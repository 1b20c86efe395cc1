"""RL objectives: GRPO and MOPD signal built from rollouts, routed teachers, hand-computed losses."""

from __future__ import annotations

import pytest
import torch

from cascade_rl.engines.base import TrainSequence
from cascade_rl.loops.objectives import OBJECTIVES, LossSettings, Rollout, TeacherRouter


def _rollout(group: int, reward: float, domain: str = "math", n: int = 2) -> Rollout:
    return Rollout(group, domain, [5, 6], [7] * n, [-1.0] * n, truncated=False, reward=reward)


def test_grpo_fill_broadcasts_group_advantages_over_response_tokens():
    rollouts = [_rollout(0, 1.0), _rollout(0, 0.0), _rollout(1, 1.0), _rollout(1, 1.0)]
    seqs = [r.sequence(trained=True) for r in rollouts]
    OBJECTIVES["grpo"](LossSettings(icepop=None, kl_coef=0.0)).fill(rollouts, seqs)
    # group 0: rewards [1, 0] -> mean 0.5, sample std 0.7071 -> advantages +-0.5/0.7071 = +-0.7071 (eps 1e-6)
    assert seqs[0].values["advantages"] == pytest.approx([0, 0, 0.70710575, 0.70710575], abs=1e-6)
    assert seqs[1].values["advantages"] == pytest.approx([0, 0, -0.70710575, -0.70710575], abs=1e-6)
    assert seqs[2].values["advantages"] == [0.0, 0.0, 0.0, 0.0]  # constant group: no signal
    assert seqs[0].mask == [0, 0, 1, 1]
    assert seqs[0].values["inf_logprobs"] == [0.0, 0.0, -1.0, -1.0]


def test_grpo_loss_token_level_with_icepop():
    objective = OBJECTIVES["grpo"](LossSettings(icepop=(0.5, 2.0), kl_coef=0.0))
    logprobs = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    t = {
        "mask": torch.tensor([[0.0, 1.0, 1.0]]),
        "advantages": torch.tensor([[0.0, 2.0, 2.0]]),
        # token 2: ratio exp(-2 - (-0.5)) = exp(-1.5) = 0.22 < 0.5 -> dropped by IcePop
        "inf_logprobs": torch.tensor([[0.0, -1.0, -0.5]]),
    }
    loss, metrics = objective.loss(logprobs, t, {"tokens": 4.0, "sequences": 1.0})
    # only token 1 counts: -(w=1 * A=2 * logprob=-1) / 4 tokens = 0.5
    assert float(loss.detach()) == pytest.approx(0.5)
    assert float(metrics["icepop_drop_frac_sum"]) == 1.0
    loss.backward()
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, -0.5, 0.0])


def test_mopd_fill_routes_each_domain_to_one_teacher():
    calls: list[str] = []

    class Fixed:
        temperature = 1.0

        def __init__(self, name: str, value: float) -> None:
            self.name, self.value = name, value

        def logprobs(self, seqs: list[TrainSequence]) -> list[list[float]]:
            calls.append((self.name, self.temperature))
            return [[self.value * m for m in s.mask] for s in seqs]

    router = TeacherRouter({"math": Fixed("math", -0.5), "other": lambda: Fixed("lazy", -3.0)}, default="other")
    rollouts = [_rollout(0, 0.0, "math"), _rollout(1, 0.0, "mcqa"), _rollout(2, 0.0, "math")]
    seqs = [r.sequence(trained=True) for r in rollouts]
    settings = LossSettings(icepop=(0.5, 2.0), kl_coef=0.0, temperature=0.7)
    OBJECTIVES["mopd"](settings, teachers=router).fill(rollouts, seqs)
    assert seqs[0].values["teacher_logprobs"] == [0.0, 0.0, -0.5, -0.5]
    assert seqs[1].values["teacher_logprobs"] == [0.0, 0.0, -3.0, -3.0]  # unmapped domain -> default
    # one batched call per teacher, the lazy one built on use; both score at the sampling temperature
    assert sorted(calls) == [("lazy", 0.7), ("math", 0.7)]
    assert router.defaulted == {"mcqa"}


def test_unmapped_domains_are_announced_once(capsys):
    class Zero:
        temperature = 1.0

        def logprobs(self, seqs: list[TrainSequence]) -> list[list[float]]:
            return [[0.0] * len(s.tokens) for s in seqs]

    router = TeacherRouter({"math": Zero(), "default": Zero()}, default="default")
    seqs = [_rollout(0, 0.0).sequence(trained=True)] * 3
    router.logprobs(seqs, ["math", "mcqa", "mcqa"])
    router.logprobs(seqs, ["code", "mcqa", "math"])
    said = capsys.readouterr().out
    assert said.count("no teacher of their own") == 2
    assert "domain 'mcqa' have no teacher of their own (teachers: math)" in said and "'code'" in said
    TeacherRouter({"default": Zero()}, default="default").logprobs(seqs, ["math"])  # one teacher for all
    assert capsys.readouterr().out == ""


def test_mopd_loss_matches_published_formula():
    objective = OBJECTIVES["mopd"](LossSettings(icepop=(0.5, 2.0), kl_coef=0.0), teachers=TeacherRouter({}))
    logprobs = torch.tensor([[0.0, -1.0, -1.0], [0.0, -2.0, 0.0]], requires_grad=True)
    t = {
        "mask": torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]]),
        "inf_logprobs": torch.tensor([[0.0, -1.0, -1.0], [0.0, -2.0, 0.0]]),
        "teacher_logprobs": torch.tensor([[0.0, -0.5, -2.0], [0.0, -1.0, 0.0]]),
    }
    loss, metrics = objective.loss(logprobs, t, {"tokens": 3.0, "sequences": 2.0})
    # a = teacher - train: seq0 [0.5, -1.0], seq1 [1.0]; w = 1 (ratios are 1)
    # L = -(1/2) * [ (1/2)(0.5*-1 + -1.0*-1) + (1/1)(1.0*-2) ] = -(1/2) * [0.25 - 2] = 0.875
    assert float(loss.detach()) == pytest.approx(0.875)
    # reverse-KL estimate: mean of -a over the 3 tokens = (-0.5 + 1.0 - 1.0) / 3
    assert float(metrics["reverse_kl_sum"]) / float(metrics["tokens"]) == pytest.approx(-0.5 / 3)


def test_mopd_without_icepop_weights_every_token_by_one():
    # train -1 vs inference -6: ratio e^5 = 148; teacher -0.5 -> a = 0.5
    t = {
        "mask": torch.tensor([[0.0, 1.0]]),
        "inf_logprobs": torch.tensor([[0.0, -6.0]]),
        "teacher_logprobs": torch.tensor([[0.0, -0.5]]),
    }
    grads = {}
    for band in (None, (0.5, 2.0)):
        logprobs = torch.tensor([[0.0, -1.0]], requires_grad=True)
        objective = OBJECTIVES["mopd"](LossSettings(icepop=band, kl_coef=0.0), teachers=TeacherRouter({}))
        loss, metrics = objective.loss(logprobs, t, {"tokens": 1.0, "sequences": 1.0})
        loss.backward()
        grads[band] = (float(loss.detach()), float(logprobs.grad[0, 1]), float(metrics["icepop_drop_frac_sum"]))
    # off: w = 1, L = -(1 * 0.5 * -1) = 0.5, dL/dlp = -0.5 (not -148 * 0.5); on: the token is dropped
    assert grads[None] == pytest.approx((0.5, -0.5, 0.0))
    assert grads[(0.5, 2.0)] == pytest.approx((0.0, 0.0, 1.0))


def test_mopd_requires_teachers():
    with pytest.raises(ValueError, match="needs teachers"):
        OBJECTIVES["mopd"](LossSettings(icepop=None, kl_coef=0.0))


def test_per_domain_diagnostics():
    from cascade_rl.loops.objectives import domain_breakdown, per_domain_means

    logprobs = torch.tensor([[0.0, -1.0, -1.0], [0.0, -2.0, -3.0]])
    t = {
        "mask": torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]]),
        "domain_id": torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
        "inf_logprobs": torch.tensor([[0.0, -1.0, -2.0], [0.0, -2.0, 0.0]]),
        "teacher_logprobs": torch.tensor([[0.0, -0.5, -1.5], [0.0, -1.0, 0.0]]),
    }
    sums = {k: float(v) for k, v in domain_breakdown(logprobs, t, (0.5, 2.0)).items()}
    means = per_domain_means(sums | {"loss": 1.0}, ["math", "mcqa"])
    # math: |lp - inf| = [0, 1] -> 0.5; ratio exp(1) = 2.72 > 2 drops 1 of 2; reverse KL lp - teacher = [-0.5, 0.5]
    assert means["abs_logprob_diff/math"] == pytest.approx(0.5)
    assert means["icepop_drop_frac/math"] == pytest.approx(0.5)
    assert means["reverse_kl/math"] == pytest.approx(0.0)
    # mcqa: one token, lp - teacher = -2 - (-1) = -1; the masked third token does not count
    assert means["reverse_kl/mcqa"] == pytest.approx(-1.0)
    assert means["loss"] == 1.0 and not any("@" in k for k in means)


def test_an_all_overlong_batch_skips_the_update_but_not_the_schedule():
    from cascade_rl.config import OptimConfig, RLStage
    from cascade_rl.loops.common import build_policy
    from cascade_rl.loops.rl import build_objective, update
    from cascade_rl.model.tiny import build_tiny
    from tests.conftest import small_corpus

    model, tokenizer = build_tiny("qwen3", corpus=small_corpus(), vocab_size=600, hidden_size=32, num_hidden_layers=1)
    stage = RLStage(name="rl", prompts=[{"task": "math"}], overlong_filtering=True)
    policy = build_policy(model, tokenizer, OptimConfig(lr=1e-3, warmup_steps=4), 10, 4096)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rollouts = [Rollout(0, "math", [5, 6], [7, 8], [-1.0, -1.0], truncated=True, reward=float(i)) for i in range(2)]
    assert update(policy, build_objective(stage, None), rollouts, stage, None) == {"skipped_update": 1.0}
    assert policy.scheduler.last_epoch == 1  # the warm-up moved on by one step
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

"""RL objectives: training batches built from trajectory groups, routed teachers, hand-computed step losses."""

from __future__ import annotations

import math

import pytest
import torch

from cascade_rl.algo.step_losses import STEP_LOSSES, Normalisers, domain_breakdown
from cascade_rl.engines.base import TrainSequence
from cascade_rl.loops.objectives import OBJECTIVES, ObjectiveSettings, TeacherRouter, objectives_of, per_domain_means
from cascade_rl.loops.rollout import has_signal
from tests._traj import group, rewards_group, trajectory

GRPO = OBJECTIVES["grpo"].factory


def test_grpo_broadcasts_group_advantages_over_response_tokens():
    groups = [rewards_group(0, [1.0, 0.0]), rewards_group(1, [1.0, 1.0])]
    seqs = GRPO(ObjectiveSettings(icepop=None)).sequences(groups)
    # group 0: rewards [1, 0] -> mean 0.5, sample std 0.7071 -> advantages +-0.5/0.7071 = +-0.7071 (eps 1e-6)
    assert seqs[0].values["advantages"] == pytest.approx([0, 0, 0.70710575, 0.70710575], abs=1e-6)
    assert seqs[1].values["advantages"] == pytest.approx([0, 0, -0.70710575, -0.70710575], abs=1e-6)
    assert seqs[2].values["advantages"] == [0.0, 0.0, 0.0, 0.0]  # constant group: no signal
    assert seqs[0].mask == [0, 0, 1, 1] and seqs[0].tokens == [5, 6, 7, 7] and seqs[0].group == 0
    assert seqs[0].values["inf_logprobs"] == [0.0, 0.0, -1.0, -1.0]


def test_truncated_rollouts_leave_the_group_statistics():
    """Overlong filtering: a truncated rollout's 0 reward must not shape the finished ones' advantages."""
    settings = ObjectiveSettings(icepop=None, overlong_filtering=True)
    # [truncated, truncated, 0.5, 0.5]: the finished rollouts agree, so the group carries no signal
    # (counting the truncated zeros would keep it and give the finished answers +0.87: a length penalty)
    tied = rewards_group(0, [0.0, 0.0, 0.5, 0.5], truncated=(0, 1))
    assert not has_signal(tied, overlong_filtering=True)
    assert has_signal(tied, overlong_filtering=False)
    seqs = GRPO(settings).sequences([tied])
    assert [s.values["advantages"][-1] for s in seqs] == [0.0, 0.0, 0.0, 0.0]
    assert [sum(s.mask) for s in seqs] == [0, 0, 2, 2]  # truncated ones also leave the loss
    # [truncated, 1, 0]: mean and std over the two finished rollouts only -> +-0.7071, not the 3-way +1.15 / -0.58
    mixed = rewards_group(1, [0.0, 1.0, 0.0], truncated=(0,))
    seqs = GRPO(settings).sequences([mixed])
    assert [s.values["advantages"][-1] for s in seqs] == pytest.approx([0.0, 0.70710575, -0.70710575], abs=1e-6)
    # without overlong filtering the truncated reward counts and trains: [0, 1, 0] -> mean 1/3, std 0.57735
    seqs = GRPO(ObjectiveSettings(icepop=None, overlong_filtering=False)).sequences([mixed])
    assert [s.values["advantages"][-1] for s in seqs] == pytest.approx([-0.57735, 1.1547, -0.57735], abs=1e-4)
    assert [sum(s.mask) for s in seqs] == [2, 2, 2]


def test_grpo_loss_token_level_with_icepop():
    logprobs = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    t = {
        "mask": torch.tensor([[0.0, 1.0, 1.0]]),
        "advantages": torch.tensor([[0.0, 2.0, 2.0]]),
        # token 2: ratio exp(-2 - (-0.5)) = exp(-1.5) = 0.22 < 0.5 -> dropped by IcePop
        "inf_logprobs": torch.tensor([[0.0, -1.0, -0.5]]),
    }
    loss, metrics = STEP_LOSSES["grpo"].fn(logprobs, t, Normalisers(4.0, 1.0), {"icepop": (0.5, 2.0)})
    # only token 1 counts: -(w=1 * A=2 * logprob=-1) / 4 tokens = 0.5
    assert float(loss.detach()) == pytest.approx(0.5)
    assert float(metrics["icepop_drop_frac_sum"]) == 1.0
    loss.backward()
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, -0.5, 0.0])


def test_tis_and_grpo_clip_are_registered_objectives():
    assert objectives_of("rl") == ["grpo", "grpo_clip", "grpo_no_std", "tis"] and objectives_of("mopd") == ["mopd"]
    assert OBJECTIVES["tis"].factory(ObjectiveSettings(icepop=None)).loss == "tis"
    assert OBJECTIVES["grpo_clip"].factory(ObjectiveSettings(icepop=None)).loss == "grpo_clip"
    t = {"mask": torch.tensor([[0.0, 1.0]]), "advantages": torch.tensor([[0.0, 1.0]])}
    # tis: ratio exp(-1 - (-2)) = e = 2.72, capped at 2 -> L = -(2 * 1 * -1) / 1 = 2, dL/dlp = -2
    lp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    loss, metrics = STEP_LOSSES["tis"].fn(lp, t | {"inf_logprobs": torch.tensor([[0.0, -2.0]])}, Normalisers(1, 1), {})
    loss.backward()
    assert (float(loss.detach()), float(lp.grad[0, 1]), float(metrics["tis_capped_frac_sum"])) == pytest.approx(
        (2, -2, 1)
    )
    # grpo_clip against the behaviour policy: ratio exp(0.5) = 1.65 > 1 + 0.2 with A > 0 -> clipped at 1.2,
    # L = -1.2, no gradient; at ratio 1 it is plain GRPO: L = -(1 * 1) = -1 per unit ratio, dL/dlp = -1
    lp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    inf = {"inf_logprobs": torch.tensor([[0.0, -1.5]])}
    loss, metrics = STEP_LOSSES["grpo_clip"].fn(lp, t | inf, Normalisers(1, 1), {"clip": (0.2, 0.2)})
    loss.backward()
    assert (float(loss.detach()), float(lp.grad[0, 1]), float(metrics["clip_frac_sum"])) == pytest.approx((-1.2, 0, 1))
    lp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    loss, _ = STEP_LOSSES["grpo_clip"].fn(lp, t | {"inf_logprobs": lp.detach().clone()}, Normalisers(1, 1), {})
    loss.backward()
    assert (float(loss.detach()), float(lp.grad[0, 1])) == pytest.approx((-1.0, -1.0))


class Fixed:
    """A scorer that returns one log-prob per trained token and records its calls."""

    def __init__(self, name: str, value: float, calls: list) -> None:
        self.name, self.value, self.calls = name, value, calls

    def logprobs(self, seqs: list[TrainSequence], temperature: float = 1.0) -> list[list[float]]:
        self.calls.append((self.name, temperature, len(seqs)))
        return [[self.value * m for m in s.mask] for s in seqs]


def test_mopd_routes_each_domain_to_one_teacher_at_the_sampling_temperature():
    calls: list = []
    router = TeacherRouter({"math": Fixed("math", -0.5, calls), "other": Fixed("other", -3.0, calls)}, default="other")
    groups = [
        group(0, trajectory([5, 6], [7, 7], domain="math"), domain="math"),
        group(1, trajectory([5, 6], [7, 7], domain="mcqa"), domain="mcqa"),
        group(2, trajectory([5, 6], [7, 7], domain="math"), domain="math"),
    ]
    settings = ObjectiveSettings(icepop=(0.5, 2.0), temperature=0.7)
    seqs = OBJECTIVES["mopd"].factory(settings, teachers=router).sequences(groups)
    # teachers score the model-written tokens only (the mask), nothing of the prompt
    assert seqs[0].values["teacher_logprobs"] == [0.0, 0.0, -0.5, -0.5]
    assert seqs[1].values["teacher_logprobs"] == [0.0, 0.0, -3.0, -3.0]  # unmapped domain -> default
    assert "advantages" not in seqs[0].values  # reward_weight 0: no reward signal mixed in
    # one batched call per teacher, both at the sampling temperature
    assert sorted(calls) == [("math", 0.7, 2), ("other", 0.7, 1)]
    assert router.defaulted == {"mcqa"}


def test_unmapped_domains_are_announced_once(capsys):
    calls: list = []
    router = TeacherRouter({"math": Fixed("m", 0.0, calls), "default": Fixed("d", 0.0, calls)}, default="default")
    seqs = [TrainSequence([5, 6, 7], [0, 1, 1])] * 3
    router.logprobs(seqs, ["math", "mcqa", "mcqa"])
    router.logprobs(seqs, ["code", "mcqa", "math"])
    said = capsys.readouterr().out
    assert said.count("no teacher of their own") == 2
    assert "domain 'mcqa' have no teacher of their own (teachers: math)" in said and "'code'" in said
    TeacherRouter({"default": Fixed("d", 0.0, calls)}, default="default").logprobs(seqs, ["math"])  # one for all
    assert capsys.readouterr().out == ""


def test_mopd_loss_matches_published_formula():
    logprobs = torch.tensor([[0.0, -1.0, -1.0], [0.0, -2.0, 0.0]], requires_grad=True)
    t = {
        "mask": torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]]),
        "inf_logprobs": torch.tensor([[0.0, -1.0, -1.0], [0.0, -2.0, 0.0]]),
        "teacher_logprobs": torch.tensor([[0.0, -0.5, -2.0], [0.0, -1.0, 0.0]]),
    }
    config = {"icepop": (0.5, 2.0), "reduction": "seq_mean"}
    loss, metrics = STEP_LOSSES["mopd"].fn(logprobs, t, Normalisers(3.0, 2.0), config)
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
        loss, metrics = STEP_LOSSES["mopd"].fn(logprobs, t, Normalisers(1.0, 1.0), {"icepop": band})
        loss.backward()
        grads[band] = (float(loss.detach()), float(logprobs.grad[0, 1]), float(metrics["icepop_drop_frac_sum"]))
    # off: w = 1, L = -(1 * 0.5 * -1) = 0.5, dL/dlp = -0.5 (not -148 * 0.5); on: the token is dropped
    assert grads[None] == pytest.approx((0.5, -0.5, 0.0))
    assert grads[(0.5, 2.0)] == pytest.approx((0.0, 0.0, 1.0))


def test_kl_to_the_reference_is_added_with_its_coefficient():
    # k3 = exp(ref - lp) - (ref - lp) - 1 with ref - lp = -0.5: e^-0.5 + 0.5 - 1 = 0.10653
    t = {
        "mask": torch.tensor([[0.0, 1.0]]),
        "advantages": torch.tensor([[0.0, 0.0]]),
        "inf_logprobs": torch.tensor([[0.0, -1.0]]),
        "ref_logprobs": torch.tensor([[0.0, -1.5]]),
    }
    lp = torch.tensor([[0.0, -1.0]])
    loss, metrics = STEP_LOSSES["grpo"].fn(lp, t, Normalisers(1.0, 1.0), {"kl_coef": 0.03})
    assert float(loss) == pytest.approx(0.03 * (math.exp(-0.5) - 0.5), abs=1e-7)
    assert float(metrics["kl_sum"]) == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-6)


def test_mopd_requires_teachers():
    with pytest.raises(ValueError, match="needs teachers"):
        OBJECTIVES["mopd"].factory(ObjectiveSettings(icepop=None))


def test_per_domain_diagnostics():
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
    from cascade_rl.config import RLStage
    from cascade_rl.engines.local import LocalPolicy, OptimSettings
    from cascade_rl.loops.rl import build_objective, update
    from cascade_rl.model.tiny import build_tiny
    from tests.conftest import small_corpus

    model, tokenizer = build_tiny("qwen3", corpus=small_corpus(), vocab_size=600, hidden_size=32, num_hidden_layers=1)
    stage = RLStage(name="rl", prompts=[{"task": "math"}], overlong_filtering=True)
    policy = LocalPolicy(model, tokenizer, OptimSettings(lr=1e-3, total_steps=10, warmup_steps=4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = [rewards_group(0, [0.0, 1.0], truncated=(0, 1))]
    assert update(policy, build_objective(stage, None), groups, stage, None) == {"skipped_update": 1.0, "lr": 0.0}
    assert policy.scheduler.last_epoch == 1  # the warm-up moved on by one step
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

"""Advantage estimators: hand-computed values, registry, dynamic-filtering mask."""

from __future__ import annotations

import math

import pytest
import torch

from cascade_rl.algo.advantages import (
    ADVANTAGES,
    constant_group_mask,
    grpo_advantages,
    grpo_no_std_advantages,
    mopd_advantages,
    register_advantage,
)


def test_grpo_single_group_hand_values():
    # rewards [1,0,0,1]: mean 0.5; sample std = sqrt(4 · 0.25 / 3) = 0.57735; 0.5 / 0.57735 = 0.86603
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    expected = 0.5 / math.sqrt(1.0 / 3.0)
    assert adv.tolist() == pytest.approx([expected, -expected, -expected, expected], abs=1e-5)
    assert adv.tolist()[0] == pytest.approx(0.8660254, abs=1e-5)


def test_grpo_per_group_rows():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
    adv = grpo_advantages(rewards, eps=1e-6)
    # row 2 is constant -> numerator 0 -> advantages 0
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    # row 3: mean 0.75; deviations [-0.75]*3 + [2.25]; sample var = (3·0.5625 + 5.0625)/3 = 2.25 -> std 1.5
    assert adv[2].tolist() == pytest.approx([-0.5, -0.5, -0.5, 1.5], abs=1e-5)
    assert adv.shape == rewards.shape


def test_grpo_no_std_is_dr_grpo():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 3.0]])
    # r - mean = r - 0.75
    assert grpo_no_std_advantages(rewards).tolist() == [[-0.75, -0.75, -0.75, 2.25]]
    assert grpo_advantages(rewards, normalize_std=False).tolist() == [[-0.75, -0.75, -0.75, 2.25]]


def test_group_of_one_gets_zero_advantage():
    assert grpo_advantages(torch.tensor([[5.0], [1.0]])).tolist() == [[0.0], [0.0]]


def test_registry():
    assert ADVANTAGES["grpo"] is grpo_advantages
    assert ADVANTAGES["grpo_no_std"] is grpo_no_std_advantages
    rewards = torch.tensor([[1.0, 0.0]])
    for fn in ADVANTAGES.values():  # one shared calling convention
        assert fn(rewards, eps=1e-6).shape == rewards.shape
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(grpo_advantages)


def test_constant_group_mask_keeps_groups_with_signal():
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.5, 0.5], [0.0, 1.0]])
    assert constant_group_mask(rewards).tolist() == [True, False, False, True]
    # with a tolerance, tiny differences count as constant
    assert constant_group_mask(torch.tensor([[0.3, 0.3 + 1e-9], [0.0, 0.2]]), atol=1e-6).tolist() == [False, True]
    assert constant_group_mask(torch.tensor([1.0, 1.0])).item() is False


def test_mopd_advantages_masked_and_detached():
    teacher = torch.tensor([[-1.0, -2.0, float("nan")]])
    student = torch.tensor([[-1.5, -1.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    adv = mopd_advantages(teacher, student, mask)
    # (-1) - (-1.5) = 0.5; (-2) - (-1) = -1; masked -> 0 even though the teacher value is NaN
    assert adv.tolist() == [[0.5, -1.0, 0.0]]
    assert not adv.requires_grad

"""The pass-history curriculum: mastered and never-solved instances leave the pool, and are counted."""

from __future__ import annotations

import pytest

from cascade_rl.config import CurriculumConfig
from cascade_rl.loops.curriculum import Curriculum


def test_instances_solved_by_every_rollout_of_the_last_k_visits_leave():
    cur = Curriculum(CurriculumConfig(solved_visits=2, unsolved_visits=3))
    assert cur.record("a", [1.0, 1.0]) == "active"  # one all-solved visit is not enough
    assert cur.record("a", [1.0, 0.0]) == "active"
    assert cur.record("a", [1.0, 1.0]) == "active"  # the mixed visit breaks the run
    assert cur.record("a", [1.0, 1.0]) == "mastered"
    assert not cur.is_active("a") and cur.counts() == {"seen": 1, "active": 0, "mastered": 1, "unsolved": 0}


def test_instances_no_rollout_solves_over_many_visits_leave():
    cur = Curriculum(CurriculumConfig(solved_visits=2, unsolved_visits=3, solved_threshold=0.5))
    for _ in range(2):
        assert cur.record("hard", [0.0, 0.4]) == "active"
    assert cur.record("hard", [0.0, 0.0]) == "unsolved"
    cur.record("learnable", [0.0, 0.0])
    cur.record("learnable", [0.0, 0.6])  # one success in the window keeps it
    cur.record("learnable", [0.0, 0.0])
    assert cur.active(["hard", "learnable", "new"]) == ["learnable", "new"]
    assert cur.counts() == {"seen": 2, "active": 1, "mastered": 0, "unsolved": 1}
    assert cur.solve_rate("learnable") == pytest.approx(1 / 6) and cur.solve_rate("new") is None


def test_a_share_of_never_solved_instances_is_kept_and_zero_disables_a_rule():
    keep_all = Curriculum(CurriculumConfig(unsolved_visits=1, keep_unsolved=1.0))
    assert all(keep_all.record(f"i{n}", [0.0]) == "active" for n in range(20))
    keep_some = Curriculum(CurriculumConfig(unsolved_visits=1, keep_unsolved=0.5))
    kept = sum(keep_some.record(f"i{n}", [0.0]) == "active" for n in range(200))
    assert 60 < kept < 140  # a stable hash of the id, about half
    assert kept == sum(Curriculum(keep_some.config).record(f"i{n}", [0.0]) == "active" for n in range(200))
    never = Curriculum(CurriculumConfig(solved_visits=0, unsolved_visits=0))
    assert all(never.record("x", r) == "active" for r in ([1.0], [1.0], [0.0], [0.0], [0.0], [0.0]))


def test_bad_settings_and_empty_visits_are_refused():
    with pytest.raises(ValueError, match="keep_unsolved"):
        CurriculumConfig(keep_unsolved=1.5)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        CurriculumConfig(solved_visits=-1)
    with pytest.raises(ValueError, match="at least one"):
        Curriculum().record("a", [])

"""The kill drill, short: a tiny cascade killed with SIGKILL at random moments resumes to the identical result."""

from __future__ import annotations

import pytest

from bench.kill_drill import drill


@pytest.mark.slow
def test_killed_runs_resume_to_the_identical_ledger_and_weights(tmp_path):
    lines: list[str] = []
    trials = drill(kills=2, seed=7, work=tmp_path, log=lines.append)
    print("\n" + "\n".join(lines))
    assert all(t.killed for t in trials), lines  # each kill landed before the run finished
    assert [t.corrupt for t in trials] == [[], []]
    assert all(t.identical for t in trials), lines

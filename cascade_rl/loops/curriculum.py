"""A pass-history curriculum: prompts that teach nothing any more leave an RL stage's prompt pool.

Each visit of an instance (one RL step that sampled it) records how many of its rollouts solved it.
An instance leaves the pool when

* every rollout solved it on each of its last ``solved_visits`` visits (mastered: all-equal groups
  carry no GRPO signal, and it would only be sampled to be filtered out), or
* no rollout solved it over its last ``unsolved_visits`` visits (out of reach for now), except a
  ``keep_unsolved`` share of those, kept by a stable hash of the id so that a few hard instances
  stay in reach as the policy improves.

Pure bookkeeping: no I/O, no randomness beyond the hash, deterministic in the visits it is given.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

from cascade_rl.config import CurriculumConfig

Verdict = Literal["active", "mastered", "unsolved"]


@dataclass
class Curriculum:
    """Per-instance pass history and the pool it leaves (see the module docstring)."""

    config: CurriculumConfig = field(default_factory=CurriculumConfig)
    history: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # id -> [(solved, rollouts)]
    retired: dict[str, Verdict] = field(default_factory=dict)

    def record(self, uid: str, rewards_G: Sequence[float]) -> Verdict:
        """One visit of ``uid`` with its group's rewards; returns the instance's state after it."""
        if not rewards_G:
            raise ValueError("a visit needs at least one rollout reward")
        solved = sum(r >= self.config.solved_threshold for r in rewards_G)
        visits = self.history.setdefault(uid, [])
        visits.append((solved, len(rewards_G)))
        verdict = self._judge(uid, visits)
        if verdict != "active":
            self.retired[uid] = verdict
        return verdict

    def _judge(self, uid: str, visits: list[tuple[int, int]]) -> Verdict:
        k, m = self.config.solved_visits, self.config.unsolved_visits
        if k and len(visits) >= k and all(s == n for s, n in visits[-k:]):
            return "mastered"
        if m and len(visits) >= m and all(s == 0 for s, _ in visits[-m:]) and not self._kept(uid):
            return "unsolved"
        return "active"

    def _kept(self, uid: str) -> bool:
        digest = hashlib.sha256(f"cascade-rl/curriculum\x00{uid}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.config.keep_unsolved

    def is_active(self, uid: str) -> bool:
        return uid not in self.retired

    def active(self, uids: Iterable[str]) -> list[str]:
        """The ids still in the pool, in the given order."""
        return [u for u in uids if self.is_active(u)]

    def counts(self) -> dict[str, int]:
        """Instances seen, and how many left the pool for each reason (for metrics)."""
        values = list(self.retired.values())
        return {
            "seen": len(self.history),
            "active": len(self.history) - len(values),
            "mastered": values.count("mastered"),
            "unsolved": values.count("unsolved"),
        }

    def to_json(self) -> str:
        """The pass history and the retired ids (written with every checkpoint: a resume continues it)."""
        history = {uid: [list(v) for v in visits] for uid, visits in self.history.items()}
        return json.dumps({"history": history, "retired": self.retired}, sort_keys=True)

    @classmethod
    def from_json(cls, config: CurriculumConfig, text: str) -> Curriculum:
        state = json.loads(text)
        history = {uid: [(int(s), int(n)) for s, n in visits] for uid, visits in state["history"].items()}
        return cls(config, history, cast(dict[str, Verdict], dict(state["retired"])))

    def solve_rate(self, uid: str) -> float | None:
        """The share of all recorded rollouts of ``uid`` that solved it (None before any visit)."""
        visits = self.history.get(uid)
        if not visits:
            return None
        return sum(s for s, _ in visits) / sum(n for _, n in visits)

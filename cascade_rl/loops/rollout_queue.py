"""Where the learner's rollouts come from: in lockstep (the published, strictly on-policy run) or from a
bounded queue filled by a rollout thread while the learner trains.

With ``max_staleness`` k > 0 the thread gathers the rollouts of step s as soon as the learner has
published version s - k, so generation overlaps training (on a cluster the generator and the trainer are
different devices). Generation and weight pushes never overlap: ``publish`` takes the same lock as
``collect``. Trajectories then come from policies up to k versions old; their behaviour log-probs travel
with them and the objective's importance weights (IcePop, TIS, the PPO clip) correct the update. Every
step reports ``staleness`` (the learner's version minus the oldest behaviour version it trained on).
"""

from __future__ import annotations

import queue
import threading
from typing import Protocol

from cascade_rl.engines.base import Generator, Policy
from cascade_rl.loops.rollout import Rollouts
from cascade_rl.types import TrajectoryGroup

Batch = tuple[list[TrajectoryGroup], dict[str, float]]


class RolloutSource(Protocol):
    def start(self, policy: Policy, version: int) -> None:
        """The generator takes the policy's weights as ``version``; rollouts from ``version`` on may start."""
        ...

    def get(self, step: int) -> Batch:
        """The groups and rollout metrics of ``step`` (blocks until they are there)."""
        ...

    def publish(self, policy: Policy, version: int) -> None:
        """The learner finished ``version``: the generator takes those weights."""
        ...

    def curriculum_after(self, step: int) -> str | None:
        """The curriculum as it stood right after ``step``'s rollouts (what a checkpoint after ``step`` holds)."""
        ...

    def close(self) -> None: ...


def staleness(groups: list[TrajectoryGroup], learner_version: int) -> dict[str, float]:
    versions = [t.policy_version for g in groups for t in g.trajectories]
    if not versions:
        return {}
    lag = [learner_version - v for v in versions]
    return {"staleness": float(max(lag)), "staleness_mean": sum(lag) / len(lag)}


class Lockstep:
    """Generate, train, sync, in turn: every trajectory comes from the current policy."""

    def __init__(self, rollouts: Rollouts, generator: Generator) -> None:
        self.rollouts, self.generator = rollouts, generator

    def start(self, policy: Policy, version: int) -> None:
        self.generator.sync(policy, version)

    def get(self, step: int) -> Batch:
        groups, metrics = self.rollouts.collect(step)
        return groups, metrics | staleness(groups, step)

    def publish(self, policy: Policy, version: int) -> None:
        self.generator.sync(policy, version)

    def curriculum_after(self, step: int) -> str | None:
        curriculum = self.rollouts.pool.curriculum
        return None if curriculum is None else curriculum.to_json()

    def close(self) -> None:
        pass


class AsyncRollouts:
    """A rollout thread at most ``max_staleness`` steps ahead of the learner (see the module docstring)."""

    def __init__(self, rollouts: Rollouts, generator: Generator, steps: range, max_staleness: int) -> None:
        if max_staleness < 1:
            raise ValueError("AsyncRollouts needs max_staleness >= 1 (0 is Lockstep)")
        self.rollouts, self.generator, self.steps, self.max_staleness = rollouts, generator, steps, max_staleness
        self.engine_lock = threading.Lock()  # held while generating and while pushing weights
        self.progress = threading.Condition()
        self.learned = steps.start  # the newest version the generator holds
        self.stopping = False
        self.snapshots: dict[int, str | None] = {}
        self.ready: queue.Queue[tuple[int, Batch] | BaseException] = queue.Queue()
        self.thread = threading.Thread(target=self._produce, name="rollouts", daemon=True)

    def start(self, policy: Policy, version: int) -> None:
        self.generator.sync(policy, version)
        self.learned = version
        self.thread.start()

    def _produce(self) -> None:
        for step in self.steps:
            with self.progress:
                self.progress.wait_for(lambda s=step: self.stopping or s - self.learned <= self.max_staleness)
                if self.stopping:
                    return
            try:
                with self.engine_lock:
                    batch = self.rollouts.collect(step)
                    curriculum = self.rollouts.pool.curriculum
                    # the thread runs ahead: a checkpoint after this step must not hold later steps' visits
                    self.snapshots[step] = None if curriculum is None else curriculum.to_json()
            except BaseException as err:  # the learner re-raises it; nothing is lost silently
                self.ready.put(err)
                return
            self.ready.put((step, batch))

    def get(self, step: int) -> Batch:
        item = self.ready.get()
        if isinstance(item, BaseException):
            raise item
        produced, (groups, metrics) = item
        with self.engine_lock:
            for old in [s for s in self.snapshots if s < step]:
                del self.snapshots[old]
        if produced != step:
            raise RuntimeError(f"rollouts of step {produced} arrived for step {step}")
        return groups, metrics | staleness(groups, step)

    def publish(self, policy: Policy, version: int) -> None:
        with self.engine_lock:
            self.generator.sync(policy, version)
        with self.progress:
            self.learned = version
            self.progress.notify_all()

    def curriculum_after(self, step: int) -> str | None:
        with self.engine_lock:
            return self.snapshots.pop(step, None)

    def close(self) -> None:
        with self.progress:
            self.stopping = True
            self.progress.notify_all()
        if self.thread.is_alive():
            self.thread.join()

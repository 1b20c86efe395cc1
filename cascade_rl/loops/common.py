"""What every stage loop shares: resuming from checkpoints, checkpointing, the stage's output folder."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

from cascade_rl.checkpoint import (
    atomic_directory,
    latest_checkpoint,
    prune_checkpoints,
    read_checkpoint_state,
    save_checkpoint,
)
from cascade_rl.logging import console


class Checkpointable(Protocol):
    """What the checkpoint helpers need of a trained engine (a policy, a reward model)."""

    def save(self, path: Path) -> None: ...

    def save_state(self, path: Path) -> None: ...

    def load_state(self, path: Path) -> None: ...


def resume(run_dir: Path, policy: Checkpointable, name: str, total_steps: int) -> int:
    """Restore the newest complete checkpoint of ``run_dir`` (and say so); the step to continue from, 0 if none."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return 0
    step = int(read_checkpoint_state(ckpt)["step"])
    policy.load_state(ckpt)
    console.print(f"[{name}] resuming at step {step}/{total_steps}", markup=False, highlight=False)
    return step


class CheckpointWriteError(RuntimeError):
    """A checkpoint or model folder could not be written (full disk, no permission); the previous one is intact."""


def _write_failed(what: str, where: Path, exc: OSError) -> CheckpointWriteError:
    previous = latest_checkpoint(where.parent if where.name == "model" else where)
    return CheckpointWriteError(
        f"{what} could not be written under {where}: {exc.strerror or exc}. Nothing half-written was left; the "
        f"previous checkpoint is {previous or 'none'} and it is intact: free space (or fix permissions) and rerun "
        "the same command to resume from it"
    )


def checkpoint(
    run_dir: Path, step: int, policy: Checkpointable, state: Mapping[str, Any], keep_last: int | None
) -> Path:
    """Write the step's checkpoint, then drop all but the ``keep_last`` newest (None keeps every one)."""
    try:
        path = save_checkpoint(run_dir, step, write_state=policy.save_state, state=dict(state))
    except OSError as exc:
        raise _write_failed(f"the step-{step} checkpoint", run_dir, exc) from exc
    if keep_last is not None:
        prune_checkpoints(run_dir, keep_last)
    return path


def save_final(policy: Checkpointable, folder: Path) -> Path:
    """The stage's output model, written atomically: a folder that exists is complete."""
    try:
        with atomic_directory(folder) as tmp:
            policy.save(tmp)
    except OSError as exc:
        raise _write_failed("the stage's model", folder, exc) from exc
    return folder


def check_writable(folder: Path) -> None:
    """Fail before any work when the run folder cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CheckpointWriteError(
            f"the run folder {folder} is not writable ({exc.strerror or exc}); choose another output_dir"
        ) from None


def is_finished(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient: the run stops, checkpoints intact."""


class NonFiniteGuard:
    """Counts steps whose update was refused as non-finite; stops the run after ``limit`` in a row."""

    def __init__(self, name: str, limit: int, run_dir: Path) -> None:
        self.name, self.limit, self.run_dir = name, limit, run_dir
        self.in_a_row = self.total = 0

    def check(self, metrics: Mapping[str, float], step: int) -> None:
        if not metrics.get("nonfinite_update"):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        console.print(
            f"[yellow]{self.name}: step {step} had a non-finite loss or gradient; not applied "
            f"({self.in_a_row} in a row, {self.total} in all)[/yellow]",
            highlight=False,
        )
        if self.in_a_row >= self.limit:
            last = latest_checkpoint(self.run_dir)
            raise NonFiniteTrainingError(
                f"{self.name}: {self.in_a_row} consecutive steps with a non-finite loss or gradient (the last at step "
                f"{step}); stopped. The last good checkpoint is {last or 'none (no checkpoint written yet)'}; lower "
                "the learning rate or look at the data of those steps, then rerun to resume"
            )

"""What every stage loop shares: resuming from checkpoints, checkpointing, the stage's output folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cascade_rl.checkpoint import (
    atomic_directory,
    latest_checkpoint,
    prune_checkpoints,
    read_checkpoint_state,
    save_checkpoint,
)
from cascade_rl.engines.base import Policy
from cascade_rl.logging import console


def resume(run_dir: Path, policy: Policy, name: str, total_steps: int) -> int:
    """Restore the newest complete checkpoint of ``run_dir`` (and say so); the step to continue from, 0 if none."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return 0
    step = int(read_checkpoint_state(ckpt)["step"])
    policy.load_state(ckpt)
    console.print(f"[{name}] resuming at step {step}/{total_steps}", markup=False, highlight=False)
    return step


def checkpoint(run_dir: Path, step: int, policy: Policy, state: Mapping[str, Any], keep_last: int | None) -> Path:
    """Write the step's checkpoint, then drop all but the ``keep_last`` newest (None keeps every one)."""
    path = save_checkpoint(run_dir, step, write_state=policy.save_state, state=dict(state))
    if keep_last is not None:
        prune_checkpoints(run_dir, keep_last)
    return path


def save_final(policy: Policy, folder: Path) -> Path:
    """The stage's output model, written atomically: a folder that exists is complete."""
    with atomic_directory(folder) as tmp:
        policy.save(tmp)
    return folder


def is_finished(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)

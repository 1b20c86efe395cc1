"""Atomic directories, RNG capture, exact optimizer/scheduler/RNG resume, discovery and pruning."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_rl.checkpoint import (
    atomic_directory,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint_state,
    read_trainer_state,
    restore_rng_state,
    save_checkpoint,
    write_trainer_state,
)


def draws() -> tuple:
    return random.random(), float(np.random.rand()), np.random.randn(), torch.rand(3).tolist()


def training_state(model: torch.nn.Module, optimizer=None, scheduler=None):
    """A ``write_state`` as a policy's ``save_state`` writes it: trainer state first (RNG), then the weights."""

    def write(path: Path) -> None:
        write_trainer_state(path, optimizer, scheduler)
        (path / "model").mkdir()
        torch.save(model.state_dict(), path / "model" / "weights.pt")

    return write


def no_model(path: Path) -> None:
    write_trainer_state(path, None, None)


# --------------------------------------------------------------------------- atomic_directory


def test_atomic_directory_publishes_complete_contents(tmp_path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out")
        (tmp / "a.txt").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"\0" * 10)
        assert not final.exists()  # nothing visible until the block succeeds
    assert (final / "a.txt").read_text() == "new" and (final / "sub" / "b.bin").stat().st_size == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_directory_crash_leaves_no_final_and_no_temp(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"), atomic_directory(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_old_version_and_keeps_it_on_failure(tmp_path):
    final = tmp_path / "out"
    for text in ("v1", "v2"):
        with atomic_directory(final) as tmp:
            (tmp / "f").write_text(text)
    assert (final / "f").read_text() == "v2"
    with pytest.raises(KeyboardInterrupt), atomic_directory(final) as tmp:
        (tmp / "f").write_text("v3")
        raise KeyboardInterrupt
    assert (final / "f").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_kill_9_mid_save_leaves_previous_checkpoint_as_latest(tmp_path):
    good = save_checkpoint(tmp_path, 1, write_state=no_model, state={})
    script = textwrap.dedent(
        f"""
        import sys, time
        from cascade_rl.checkpoint import save_checkpoint

        def slow_model(path):
            (path / "model.safetensors").write_bytes(b"half")
            print("writing", flush=True)
            time.sleep(60)

        save_checkpoint({str(tmp_path)!r}, 2, write_state=slow_model, state={{}})
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "writing"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert latest_checkpoint(tmp_path) == good
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
    prune_checkpoints(tmp_path, keep_last=1)  # clears the dead writer's temporary directory
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]


# --------------------------------------------------------------------------- RNG


def test_rng_streams_continue_identically_after_restore():
    random.seed(1)
    np.random.seed(2)
    np.random.randn()  # leaves a cached gaussian in numpy's state, which must survive too
    torch.manual_seed(3)
    state = capture_rng_state()
    expected = draws()
    draws()  # move every stream on
    restore_rng_state(state)
    assert draws() == expected


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path, 1, write_state=no_model, state={})
    expected = draws()
    draws()
    read_trainer_state(ckpt, None, None)
    assert draws() == expected


# --------------------------------------------------------------------------- save / load


def make_training(seed: int) -> tuple[torch.nn.Linear, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    total = 10
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
    return model, optimizer, scheduler


def train_steps(model, optimizer, scheduler, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 8)
        y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(16, 1) + float(np.random.rand()) * random.random()
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def test_save_load_restores_optimizer_moments_exactly(tmp_path):
    model, optimizer, scheduler = make_training(0)
    train_steps(model, optimizer, scheduler, 3)
    ckpt = save_checkpoint(tmp_path, 3, write_state=training_state(model, optimizer, scheduler), state={"pos": 48})
    assert sorted(p.name for p in ckpt.iterdir()) == ["model", "state.json", "trainer_state.pt"]
    _, fresh_optimizer, fresh_scheduler = make_training(1)
    read_trainer_state(ckpt, fresh_optimizer, fresh_scheduler)
    assert read_checkpoint_state(ckpt) == {"pos": 48, "step": 3}
    saved = optimizer.state_dict()["state"]
    loaded = fresh_optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    for index in saved:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(saved[index][key], loaded[index][key])
    assert fresh_scheduler.state_dict()["last_epoch"] == 3
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_resumed_training_matches_uninterrupted_run_bit_for_bit(tmp_path):
    random.seed(7)
    np.random.seed(7)
    model, optimizer, scheduler = make_training(0)
    straight = train_steps(model, optimizer, scheduler, 10)

    random.seed(7)
    np.random.seed(7)
    model, optimizer, scheduler = make_training(0)
    first = train_steps(model, optimizer, scheduler, 5)
    ckpt = save_checkpoint(
        tmp_path,
        5,
        write_state=training_state(model, optimizer, scheduler),
        state={"losses": first, "data_position": 5 * 16},
    )
    del model, optimizer, scheduler
    model, optimizer, scheduler = make_training(123)  # different init and RNG position
    model.load_state_dict(torch.load(ckpt / "model" / "weights.pt", weights_only=True))
    read_trainer_state(ckpt, optimizer, scheduler)
    state = read_checkpoint_state(ckpt)
    resumed = state["losses"] + train_steps(model, optimizer, scheduler, 10 - state["step"])
    assert resumed == straight  # exact float equality, not approx


def test_state_json_is_plain_json_and_validated(tmp_path):
    ckpt = save_checkpoint(
        tmp_path,
        2,
        write_state=no_model,
        state={"loss": torch.tensor(0.5), "tokens": np.int64(9), "nested": {"a": [1, 2]}},
    )
    state = json.loads((ckpt / "state.json").read_text())
    assert state == {"loss": 0.5, "tokens": 9, "nested": {"a": [1, 2]}, "step": 2}
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_checkpoint(tmp_path, 3, write_state=no_model, state={"x": object()})
    with pytest.raises(ValueError, match="'step' is reserved"):
        save_checkpoint(tmp_path, 4, write_state=no_model, state={"step": 1})
    assert latest_checkpoint(tmp_path) == ckpt  # the failed saves left nothing behind
    _, optimizer, _ = make_training(0)
    with pytest.raises(ValueError, match="saved without one"):
        read_trainer_state(ckpt, optimizer, None)


def test_failing_model_writer_leaves_previous_checkpoint_latest(tmp_path):
    good = save_checkpoint(tmp_path, 1, write_state=no_model, state={})

    def crash(path: Path) -> None:
        (path / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, write_state=crash, state={})
    assert latest_checkpoint(tmp_path) == good
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]


# --------------------------------------------------------------------------- discovery and pruning


def test_latest_checkpoint_picks_highest_complete_step(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 20, 100):
        save_checkpoint(tmp_path, step, write_state=no_model, state={})
    root = tmp_path / "checkpoints"
    (root / ".step_00000300.tmp-abc").mkdir()  # an interrupted save
    (root / "step_00000200").mkdir()  # a directory copied by hand, without state.json
    (root / "notes").mkdir()
    assert latest_checkpoint(tmp_path) == root / "step_00000100"
    assert [step for step, _ in list_checkpoints(tmp_path)] == [5, 20, 100]


def test_prune_keeps_last_n_and_clears_leftovers(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, write_state=no_model, state={})
    root = tmp_path / "checkpoints"
    (root / ".step_00000009.tmp-xyz").mkdir()
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["step_00000001", "step_00000002", "step_00000003"]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004", "step_00000005"]
    assert prune_checkpoints(tmp_path, keep_last=2) == []
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        prune_checkpoints(tmp_path, keep_last=0)

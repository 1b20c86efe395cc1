"""Atomic, exactly resumable training checkpoints.

Layout of one checkpoint::

    run_dir/checkpoints/step_00000120/
        ...                  whatever the policy's ``save_state`` writes (the local policy: model/,
                             an HF folder of the fp32 weights, and trainer_state.pt)
        state.json           the loop's own state (step, data position), plain JSON, written last

A checkpoint directory either exists complete or not at all: it is written under a hidden
temporary name in the same directory, fsynced, then renamed into place. ``latest_checkpoint``
only looks at ``step_*`` names, so a run killed mid-save resumes from the previous step.

Exact resume means the continued run draws the same random numbers and applies the same
optimizer update as an uninterrupted one; this needs the RNG state captured at the moment of
saving and optimizer moments restored bit for bit (``torch.save`` keeps tensors exact).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
STATE_JSON = "state.json"
FORMAT_VERSION = 2
_STEP_RE = re.compile(r"^step_(\d+)$")
# hidden names used while a directory is being written or deleted; never matched by _STEP_RE
_TMP_MARK, _OLD_MARK = ".tmp-", ".old-"


# --------------------------------------------------------------------------- atomic directories


def _fsync_path(path: Path) -> None:
    # directories must be opened read-only to fsync them; O_DIRECTORY is absent on Windows
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows directories) refuse fsync on directories
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` so the rename publishes durable data."""
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            file_path = Path(dirpath) / filename
            if not file_path.is_symlink():
                _fsync_path(file_path)
        _fsync_path(Path(dirpath))


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Write a directory so that ``final`` is either absent, the old version, or complete.

    Yields a temporary directory next to ``final`` (same filesystem, so the rename is atomic).
    On normal exit its contents are fsynced and it is renamed to ``final``; an existing
    ``final`` is first moved aside and deleted only once the new one is in place. On an
    exception the temporary directory is removed and ``final`` is left as it was.

    A crash between moving the old ``final`` aside and renaming the new one in leaves neither
    at ``final`` (both survive under hidden names), never a half-written ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{_TMP_MARK}", dir=final.parent))
    old: Path | None = None
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = final.parent / f".{final.name}{_OLD_MARK}{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not final.exists():
            os.rename(old, final)  # the new version failed to land: put the old one back
            old = None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """Snapshot of the global generators: python ``random``, numpy's legacy global, torch CPU and CUDA.

    Only tensors and plain Python values, so it loads back with ``torch.load(weights_only=True)``.
    Generator objects owned by user code (``np.random.default_rng()``, ``torch.Generator()``) are
    not global and must be saved by their owner.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    # an uninitialised CUDA context has drawn nothing yet; asking for its state would create one
    # (hundreds of MB per device) in CPU-only processes on GPU hosts
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``: the next draws equal those that followed the capture."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states is None or not torch.cuda.is_available():
        if cuda_states is not None:
            warnings.warn("checkpoint holds CUDA RNG states but CUDA is unavailable; not restored", stacklevel=2)
        return
    if len(cuda_states) != torch.cuda.device_count():
        warnings.warn(
            f"checkpoint holds CUDA RNG states for {len(cuda_states)} devices but "
            f"{torch.cuda.device_count()} are visible; restoring the first "
            f"{min(len(cuda_states), torch.cuda.device_count())}",
            stacklevel=2,
        )
    for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(cuda_state, device)


# --------------------------------------------------------------------------- checkpoints


def _json_default(value: Any) -> Any:
    """Scalars from torch / numpy become Python numbers; anything else is a caller bug."""
    if isinstance(value, torch.Tensor | np.generic) and getattr(value, "ndim", 0) == 0:
        return value.item()
    raise TypeError(f"state must be JSON-serialisable (numbers, strings, lists, dicts); got {type(value).__name__}")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def save_checkpoint(run_dir: Path, step: int, *, write_state: Callable[[Path], None], state: dict[str, Any]) -> Path:
    """Write ``run_dir/checkpoints/step_{step:08d}/`` atomically and return its path.

    Args:
        write_state: called with the (empty) checkpoint folder under construction; writes whatever
            exact resume needs there (the policy's ``save_state``: weights, optimizer, schedule, RNG).
        state: the loop's JSON state (data position, metrics so far). "step" is reserved.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if "step" in state and state["step"] != step:
        raise ValueError(f"state['step'] = {state['step']!r} disagrees with step={step}; 'step' is reserved")
    # serialise the JSON before writing anything, so a bad value fails before the weights are written
    state_text = json.dumps({**state, "step": step}, default=_json_default, indent=2, sort_keys=True)
    final = checkpoint_dir(run_dir, step)
    with atomic_directory(final) as tmp:
        write_state(tmp)
        (tmp / STATE_JSON).write_text(state_text + "\n", encoding="utf-8")  # last: marks the folder complete
    return final


def read_checkpoint_state(ckpt: Path) -> dict[str, Any]:
    """The loop state of a checkpoint (state.json), "step" included."""
    ckpt = Path(ckpt)
    if not _is_complete(ckpt):
        raise FileNotFoundError(f"{ckpt}: not a complete checkpoint (no {STATE_JSON})")
    return json.loads((ckpt / STATE_JSON).read_text(encoding="utf-8"))


def write_trainer_state(path: Path, optimizer: torch.optim.Optimizer | None, scheduler: Any | None) -> None:
    """``path/trainer_state.pt``: optimizer and scheduler state dicts plus the RNG states, for exact resume.

    Call it before writing the weights: the RNG is captured first, so whatever the weight writer does
    cannot shift the streams the resumed run continues from.
    """
    trainer_state = {
        "format": FORMAT_VERSION,
        "rng": capture_rng_state(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    path.mkdir(parents=True, exist_ok=True)
    torch.save(trainer_state, path / TRAINER_STATE)


def read_trainer_state(path: Path, optimizer: torch.optim.Optimizer | None, scheduler: Any | None) -> None:
    """Restore what ``write_trainer_state`` wrote into ``optimizer`` / ``scheduler`` and the global RNGs.

    Load the weights and build the optimizer and scheduler on them first; the RNG is restored last,
    so object construction in between cannot consume the restored streams.
    """
    trainer_state = torch.load(Path(path) / TRAINER_STATE, map_location="cpu", weights_only=True)
    if trainer_state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path / TRAINER_STATE}: format {trainer_state.get('format')!r}, expected {FORMAT_VERSION}")
    for label, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is None:
            continue
        if trainer_state[label] is None:
            raise ValueError(f"{path}: a {label} was given but the checkpoint was saved without one")
        target.load_state_dict(trainer_state[label])
    restore_rng_state(trainer_state["rng"])


def _is_complete(path: Path) -> bool:
    return (path / STATE_JSON).is_file()


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, path), oldest first; temporary directories are ignored."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_RE.match(path.name)
        if match and path.is_dir() and _is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None when the run has none."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _remove_directory(path: Path) -> None:
    """Rename to a hidden name first, so a crash mid-delete never leaves a partial ``step_*``."""
    doomed = path.parent / f".{path.name}{_OLD_MARK}{uuid.uuid4().hex[:8]}"
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest complete checkpoints; return the deleted paths.

    Also clears leftovers of interrupted saves and deletes (hidden ``.step_*.tmp-*`` /
    ``.old-*`` directories); call it only while no save of this run is in progress.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 (the checkpoint to resume from), got {keep_last}")
    found = list_checkpoints(run_dir)
    removed = [path for _, path in found[:-keep_last]]
    for path in removed:
        _remove_directory(path)
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for leftover in root.iterdir():
            if leftover.name.startswith(".step_") and (_TMP_MARK in leftover.name or _OLD_MARK in leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)
    return removed

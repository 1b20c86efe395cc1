"""Kill drill: a tiny cascade killed with SIGKILL at random moments must resume to exactly the uninterrupted result.

The pipeline (SFT -> GRPO -> multi-turn workplace GRPO -> MOPD on a tiny qwen3, every domain evaluated
after every stage) runs once straight. Then, for every kill, a fresh run of the same recipe is started,
killed with SIGKILL after a random delay (kill k of N at a random moment of the k-th of N equal slices
of the straight run's duration: anywhere in SFT, rollouts, an update, an evaluation, a checkpoint or
ledger write), and resumed with the same command until it finishes. A kill counts as
identical when the resumed run's ledger (scores, validation scores, checkpoints relative to the run,
wall times aside) and every stage's final weights equal the straight run's, tensor for tensor. Every
checkpoint and model folder left on disk, in every run, is opened: one that exists but does not load
counts as corrupt.

Usage: .venv/bin/python bench/kill_drill.py [--kills 20] [--seed 0] [--keep DIR]
The last line printed is ``identical: K/N, corrupt: C``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
}


def recipe(output_dir: Path) -> dict[str, Any]:
    rl = {"steps": 4, "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 16, "save_every": 1}
    return {
        "name": "kill-drill",
        "output_dir": str(output_dir),
        "model": {"spec": "tiny:qwen3", "vocab_size": 512, "tiny": TINY},
        "eval": {
            "domains": [{"task": "math", "n": 8}, {"task": "mcqa", "n": 8}, {"task": "workplace", "n": 4}],
            "samples": 1,
            "max_new_tokens": 16,
            "max_turns": 3,
        },
        "stages": [
            {
                "type": "sft",
                "name": "sft",
                "data": [{"task": t, "n": 60, "thinking": "off"} for t in ("math", "mcqa", "workplace")],
                "pack_length": 1024,
                "packs_per_step": 1,
                "max_steps": 8,
                "save_every": 2,
                "optim": {"lr": 3e-3, "min_lr": 3e-4},
            },
            {"type": "rl", "name": "grpo", "prompts": [{"task": "mcqa", "n": 32}], **rl, "optim": {"lr": 1e-4}},
            {
                "type": "rl",
                "name": "agent",
                "prompts": [{"task": "workplace", "n": 16}],
                **rl,
                "max_turns": 3,
                "dynamic_filtering": False,
                "optim": {"lr": 1e-4},
            },
            {
                "type": "mopd",
                "name": "mopd",
                "prompts": [{"task": "math", "n": 32}, {"task": "mcqa", "n": 32}],
                **rl,
                "group_size": 2,
                "optim": {"lr": 1e-4, "warmup_steps": 0},
            },
        ],
    }


def _start(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cascade_rl.cli", "--threads", "1", "run", str(path)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_to_end(path: Path) -> None:
    proc = _start(path)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"run of {path} failed ({proc.returncode}):\n{err.decode()[-3000:]}")


def kill_after(path: Path, delay: float) -> bool:
    """Start the run and SIGKILL it after ``delay`` seconds; False when it finished first."""
    proc = _start(path)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    finally:
        if proc.stderr is not None:
            proc.stderr.close()


def result(run: Path) -> dict[str, Any]:
    """The ledger (wall times aside, checkpoints relative to the run) and every stage model's weights file
    (safetensors writes the same tensors as the same bytes)."""
    ledger = json.loads((run / "ledger.json").read_text())
    for row in ledger["rows"]:
        row["checkpoint"] = Path(row["checkpoint"]).resolve().relative_to(run.resolve()).as_posix()
        row["wall_time"] = 0.0
    weights = {m.parent.name: (m / "model.safetensors").read_bytes() for m in sorted((run / "stages").glob("*/model"))}
    return {"ledger": ledger, "weights": weights}


def corrupt_folders(run: Path) -> list[str]:
    """Checkpoints and model folders that claim to be complete but do not load."""
    import torch
    from safetensors.torch import load_file

    bad = []
    for state in run.glob("stages/*/checkpoints/step_*/state.json"):
        ckpt = state.parent
        try:
            json.loads(state.read_text())
            torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
            load_file(str(ckpt / "model" / "model.safetensors"))
        except Exception as exc:  # anything that keeps a resume from reading it
            bad.append(f"{ckpt}: {exc!r}"[:300])
    for config in [*run.glob("stages/*/model/config.json"), *run.glob("base/model/config.json")]:
        try:
            json.loads(config.read_text())
            load_file(str(config.parent / "model.safetensors"))
        except Exception as exc:
            bad.append(f"{config.parent}: {exc!r}"[:300])
    return bad


@dataclass
class Trial:
    delay: float
    killed: bool
    identical: bool
    corrupt: list[str]
    where: str


def where_it_died(run: Path) -> str:
    """The last stage folder the killed run had reached, and how far it had got there."""
    stages = sorted((run / "stages").glob("*")) if (run / "stages").is_dir() else []
    if not stages:
        return "before the first stage (base model / its evaluation)"
    last = stages[-1]
    parts = [last.name]
    if (last / "model").is_dir():
        parts.append("model written" + ("; evaluated" if (last / "eval.json").is_file() else "; evaluating"))
    elif (last / "checkpoints").is_dir():
        parts.append(f"{len(list((last / 'checkpoints').glob('step_*')))} checkpoint(s)")
    return ", ".join(parts)


def drill(kills: int, seed: int, work: Path, log: Any = print) -> list[Trial]:
    straight_dir = work / "straight"
    straight_recipe = work / "straight.yaml"
    straight_recipe.write_text(yaml.safe_dump(recipe(straight_dir)))
    started = time.perf_counter()
    run_to_end(straight_recipe)
    duration = time.perf_counter() - started
    expected = result(straight_dir)
    log(f"straight run: {duration:.0f} s")
    rng = random.Random(seed)
    trials = []
    for k in range(kills):
        run = work / f"killed-{k}"
        path = work / f"killed-{k}.yaml"
        path.write_text(yaml.safe_dump(recipe(run)))
        # stratified over the run (kill k lands in the k-th of N equal slices), so few kills still cover every phase
        delay = 3.0 + (duration - 3.0) * (k + rng.random()) / kills
        killed = kill_after(path, delay)
        where = where_it_died(run) if killed else "finished before the kill"
        corrupt = corrupt_folders(run)  # what the kill left behind
        run_to_end(path)  # the same command resumes it
        corrupt += corrupt_folders(run)
        trial = Trial(delay, killed, result(run) == expected, corrupt, where)
        trials.append(trial)
        log(
            f"kill {k + 1}/{kills} after {delay:.1f} s ({where}): "
            f"{'identical' if trial.identical else 'DIFFERENT'}, corrupt folders: {len(corrupt)}"
        )
        shutil.rmtree(run, ignore_errors=True)
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="kill-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    trials = drill(args.kills, args.seed, work)
    corrupt = sum(len(t.corrupt) for t in trials)
    for t in trials:
        for line in t.corrupt:
            print(f"corrupt: {line}")
    print(f"identical: {sum(t.identical for t in trials)}/{len(trials)}, corrupt: {corrupt}")


if __name__ == "__main__":
    main()

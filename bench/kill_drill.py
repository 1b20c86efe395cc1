"""Kill drill: a tiny cascade killed with SIGKILL at random moments must resume to exactly the uninterrupted result.

The pipeline (SFT -> GRPO -> multi-turn workplace GRPO -> MOPD on a tiny qwen3, every domain evaluated
after every stage) runs once straight, its timeline measured: start-up and the base model's evaluation,
then the stages. Then, for every kill, a fresh run of the same recipe is started, killed with SIGKILL
at a random moment, and resumed with the same command until it finishes. One kill in ten lands in the
start-up; the others are stratified over the stages (kill k at a random moment of the k-th equal slice:
anywhere in SFT, rollouts, an update, an evaluation, a checkpoint or ledger write). A moment in the
stages is counted from when the killed run's base evaluation is written, stretched by how much slower
than the straight run it got there, so a loaded machine moves the kills with the work; a run that
finishes before its moment is started afresh with an earlier one. A kill counts as
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


RETRIES = 4  # fresh starts, each with a moment 0.7x earlier, when a run finished before its kill
BASE_MARKER = ("base", "eval.json")  # written when the start-up and the base model's evaluation are done


def timed_run(path: Path, run: Path) -> tuple[float, float]:
    """Run to the end; (seconds until the base evaluation was written, seconds in all)."""
    proc, started, base = _start(path), time.perf_counter(), None
    while proc.poll() is None:
        if base is None and run.joinpath(*BASE_MARKER).exists():
            base = time.perf_counter() - started
        time.sleep(0.02)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"run of {path} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    total = time.perf_counter() - started
    return (base if base is not None else total), total


def kill_at(path: Path, run: Path, delay: float, *, after_base: bool, base_seconds: float) -> bool:
    """Start the run and SIGKILL it ``delay`` seconds in, or, ``after_base``, that long after its base
    evaluation was written, scaled by its slowdown against ``base_seconds``; False when it finished first."""
    proc, started = _start(path), time.perf_counter()
    try:
        if after_base:
            while not run.joinpath(*BASE_MARKER).exists():
                if proc.poll() is not None:
                    return False
                time.sleep(0.01)
            delay *= (time.perf_counter() - started) / base_seconds
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
    base, duration = timed_run(straight_recipe, straight_dir)
    expected = result(straight_dir)
    log(f"straight run: {duration:.1f} s (start-up and base evaluation {base:.1f} s, stages {duration - base:.1f} s)")
    rng = random.Random(seed)
    early = kills // 10  # kills in the start-up; the rest in the stages
    trials = []
    for k in range(kills):
        run = work / f"killed-{k}"
        path = work / f"killed-{k}.yaml"
        path.write_text(yaml.safe_dump(recipe(run)))
        # stratified (kill k lands in the k-th equal slice of its part), so few kills still cover every phase
        if k < early:
            delay = 1.0 + (base - 1.0) * (k + rng.random()) / early
        else:
            delay = (duration - base) * (k - early + rng.random()) / (kills - early)
        killed = kill_at(path, run, delay, after_base=k >= early, base_seconds=base)
        for _ in range(RETRIES):  # a run that outpaced its kill moment is no kill: start afresh, earlier
            if killed:
                break
            shutil.rmtree(run, ignore_errors=True)
            delay *= 0.7
            killed = kill_at(path, run, delay, after_base=k >= early, base_seconds=base)
        where = where_it_died(run) if killed else "finished before the kill"
        corrupt = corrupt_folders(run)  # what the kill left behind
        run_to_end(path)  # the same command resumes it
        corrupt += corrupt_folders(run)
        trial = Trial(delay, killed, result(run) == expected, corrupt, where)
        trials.append(trial)
        moment = f"{delay:.2f} s into the stages" if k >= early else f"{delay:.1f} s after the start"
        log(
            f"kill {k + 1}/{kills} {moment} ({where}): "
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
    landed = sum(t.killed for t in trials)
    print(f"kills that landed before the run finished: {landed}/{len(trials)} (only those count as identical)")
    print(f"identical: {sum(t.identical and t.killed for t in trials)}/{len(trials)}, corrupt: {corrupt}")


if __name__ == "__main__":
    main()

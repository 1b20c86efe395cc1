"""The Cascade runner: stages in order, a ledger row per stage, MOPD teachers from the ledger, and a
run killed mid-stage (kill -9) that resumes to exactly the ledger of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_QWEN3

REPO = Path(__file__).resolve().parents[2]

RECIPE = {
    "name": "tiny-test",
    "seed": 0,
    "model": {
        "spec": "tiny:qwen3",
        "vocab_size": 512,
        "tiny": TINY_QWEN3,
    },
    "eval": {
        "domains": [{"task": "math", "n": 12}, {"task": "mcqa", "n": 12}],
        "samples": 1,
        "max_new_tokens": 12,
        "thinking": [False],
    },
    "stages": [
        {
            "type": "sft",
            "name": "sft",
            "data": [{"task": "math", "n": 150, "thinking": "off"}, {"task": "mcqa", "n": 150, "thinking": "off"}],
            "pack_length": 1024,
            "packs_per_step": 1,
            "max_steps": 6,
            "save_every": 3,
            "optim": {"lr": 3e-3, "min_lr": 3e-4},
        },
        {
            "type": "rl",
            "name": "mcqa_rl",
            "prompts": [{"task": "mcqa", "n": 64}],
            "steps": 4,
            "prompts_per_step": 4,
            "group_size": 4,
            "max_new_tokens": 12,
            "save_every": 2,
            "dynamic_filtering": False,
            "optim": {"lr": 1e-4},
        },
        {
            "type": "mopd",
            "name": "mopd",
            "prompts": [{"task": "math", "n": 64}, {"task": "mcqa", "n": 64}],
            "steps": 2,
            "prompts_per_step": 4,
            "group_size": 2,
            "max_new_tokens": 12,
            "optim": {"lr": 1e-4},
        },
    ],
}

SCRIPT = """
import json, os, signal, sys, torch
from pathlib import Path
torch.set_num_threads(1)
from cascade_rl.config import load_config
from cascade_rl.loops import common
from cascade_rl.loops.pipeline import run_pipeline

if len(sys.argv) > 2:  # kill -9 this process right after the named checkpoint is on disk
    save = common.save_checkpoint

    def save_then_die(run_dir, step, **kwargs):
        path = save(run_dir, step, **kwargs)
        if path.relative_to(path.parents[2]).as_posix() == sys.argv[2]:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    common.save_checkpoint = save_then_die
result = run_pipeline(load_config(sys.argv[1]))
Path(sys.argv[1]).with_suffix(".times.json").write_text(json.dumps(result.stage_times))
"""


def _run(recipe: Path, kill_after: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", SCRIPT, str(recipe)] + ([kill_after] if kill_after else [])
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _write(tmp_path: Path, name: str) -> Path:
    recipe = dict(RECIPE, output_dir=str(tmp_path / name))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _ledger(run: Path) -> dict:
    data = json.loads((run / "ledger.json").read_text())
    for row in data["rows"]:  # folders differ between the two runs; wall time is not a result
        row["checkpoint"] = Path(row["checkpoint"]).relative_to(run).as_posix()
        row["wall_time"] = 0.0
    return data


@pytest.mark.slow
def test_killed_pipeline_resumes_to_the_same_ledger(tmp_path):
    straight = _write(tmp_path, "straight")
    proc = _run(straight)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]

    killed = _write(tmp_path, "killed")
    proc = _run(killed, kill_after="01-mcqa_rl/checkpoints/step_00000002")
    assert proc.wait(timeout=600) == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    assert (tmp_path / "killed" / "stages" / "01-mcqa_rl" / "checkpoints" / "step_00000002").is_dir()
    assert not (tmp_path / "killed" / "stages" / "01-mcqa_rl" / "model").exists()  # killed mid-stage
    assert json.loads((tmp_path / "killed" / "ledger.json").read_text())["rows"][-1]["stage"] == "sft"

    recorded = json.loads((tmp_path / "killed" / "ledger.json").read_text())["rows"][-1]["wall_time"]
    proc = _run(killed)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]
    # the resumed run reports the SFT time of the run that finished it, not the 0 s it spent skipping it
    times = json.loads(killed.with_suffix(".times.json").read_text())
    assert list(times) == ["sft", "mcqa_rl", "mopd"] and min(times.values()) > 0
    assert times["sft"] == pytest.approx(recorded, abs=1e-3)
    a, b = _ledger(tmp_path / "straight"), _ledger(tmp_path / "killed")
    assert [r["stage"] for r in a["rows"]] == ["base", "sft", "mcqa_rl", "mopd"]
    assert a == b

    # MOPD teachers were read from the ledger: per domain, the checkpoint before the MOPD stage with the best
    # validation score (never the reported test score), the base model excluded
    teachers = json.loads((tmp_path / "straight" / "teachers.json").read_text())["mopd"]["domains"]
    rows = a["rows"][1:3]
    # validation sets are scored only for the models MOPD can pick (the rows between the base and it), on its domains
    assert all(r["validation"].keys() == r["scores"].keys() for r in rows)
    assert a["rows"][0]["validation"] == a["rows"][3]["validation"] == {}
    for domain in ("math", "mcqa"):
        best = max(rows, key=lambda r: (r["validation"][f"{domain}:direct"], -rows.index(r)))
        assert Path(teachers[domain]).relative_to(tmp_path / "straight").as_posix() == best["checkpoint"]
    for plot in ("ledger.png", "reward_curves.png"):
        assert (tmp_path / "straight" / "plots" / plot).stat().st_size > 1000


def test_a_different_recipe_in_the_same_folder_is_refused(tmp_path):
    from cascade_rl.config import load_config
    from cascade_rl.loops.pipeline import RecipeMismatchError, _check_recipe

    config = load_config(dict(RECIPE, output_dir=str(tmp_path / "run")))
    _check_recipe(config, tmp_path / "run")
    _check_recipe(config, tmp_path / "run")  # same recipe: resumable
    other = load_config(dict(RECIPE, output_dir=str(tmp_path / "run")), ["stages.sft.max_steps=7"])
    with pytest.raises(RecipeMismatchError, match="different recipe"):
        _check_recipe(other, tmp_path / "run")

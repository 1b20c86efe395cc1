"""The same recipe on Ray (2 FSDP2 trainer ranks, the vLLM generator) and in-process: killed mid-RL, the Ray
run resumes and finishes, its SFT weights are the in-process run's and its ledger is within sampling noise."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from cascade_rl.config import load_config
from cascade_rl.engines.vllm import find_vllm_python
from cascade_rl.loops.pipeline import run_pipeline
from tests.integration import _tiny
from tests.integration.test_pipeline import SCRIPT

REPO = Path(__file__).resolve().parents[2]

RECIPE = {
    "name": "ray-check",
    "seed": 0,
    "model": {"spec": _tiny.START, "seed": _tiny.MODEL_SEED, "vocab_size": _tiny.VOCAB_SIZE, "tiny": _tiny.TINY},
    "eval": {
        "domains": [{"task": _tiny.DOMAIN, "n": 100}],
        "samples": 4,
        "max_new_tokens": _tiny.MAX_NEW_TOKENS,
        "thinking": [False],
        "temperature": 1.0,
    },
    "stages": [
        {
            "type": "sft",
            "name": "sft",
            "data": [{"task": _tiny.DOMAIN, "n": 3000, "thinking": "off"}],
            "pack_length": 1024,
            "packs_per_step": 2,
            "max_steps": 120,
            "save_every": 1000,
            "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5, "warmup_start_lr": 3e-4, "weight_decay": 0.0},
        },
        {
            "type": "rl",
            "name": "grpo",
            "prompts": [{"task": _tiny.DOMAIN, "n": 500}],
            "steps": 6,
            "prompts_per_step": 8,
            "group_size": 4,
            "max_new_tokens": _tiny.MAX_NEW_TOKENS,
            "overlong_filtering": False,
            "save_every": 3,
            "optim": {"lr": 3e-4, "warmup_steps": 2, "warmup_start_lr": 3e-5, "weight_decay": 0.0},
        },
    ],
}
RAY_ENGINE = {"kind": "ray", "ray": {"trainer_ranks": 2, "generator": "vllm", "num_cpus": 2, "log_to_driver": False}}


def _available() -> bool:
    try:
        find_vllm_python()
    except ModuleNotFoundError:
        return False
    return importlib.util.find_spec("ray") is not None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _available(), reason="Ray or vLLM missing (make test builds them)"),
]


def _launch(recipe: Path, kill_after: str | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", SCRIPT, str(recipe)] + ([kill_after] if kill_after else [])
    proc = subprocess.Popen(
        args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(
            ProcessLookupError
        ):  # the driver's Ray processes (head, actors, vLLM) share its session
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-3000:]
    return proc.returncode


def _scores(run: Path) -> dict[str, tuple[float, float]]:
    rows = json.loads((run / "ledger.json").read_text())["rows"]
    key = f"{_tiny.DOMAIN}:direct"
    return {r["stage"]: (r["scores"][key], r["errors"][key]) for r in rows}


def test_a_killed_ray_run_resumes_and_matches_the_in_process_run(tmp_path):
    local = run_pipeline(load_config({**RECIPE, "output_dir": str(tmp_path / "local")}))
    recipe = tmp_path / "ray.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "ray"), "engine": RAY_ENGINE}))

    assert _launch(recipe, kill_after="01-grpo/checkpoints/step_00000003") == -signal.SIGKILL
    stage = tmp_path / "ray" / "stages" / "01-grpo"
    assert (stage / "checkpoints" / "step_00000003").is_dir() and not (stage / "model").exists()
    assert _launch(recipe) == 0

    steps = [json.loads(line)["step"] for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 4-6 from the checkpoint, none repeated
    gaps = [json.loads(line)["abs_logprob_diff"] for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert max(gaps) < 1e-5  # the FSDP trainer scores what vLLM sampled as vLLM did: every sync landed

    # SFT has no sampling: the two ranks' weights are the one process's, up to summation order
    a = load_file(local.run_dir / "stages" / "00-sft" / "model" / "model.safetensors")
    b = load_file(tmp_path / "ray" / "stages" / "00-sft" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4

    # Evaluations sample with different generators (vLLM's seeded per-request sampler, torch's in-process one),
    # and GRPO trains on different rollouts, so the ledgers agree within sampling noise: 3 combined stderrs.
    here, there = _scores(local.run_dir), _scores(tmp_path / "ray")
    assert here.keys() == there.keys() == {"base", "sft", "grpo"}
    for name, (score, err) in here.items():
        other, other_err = there[name]
        assert abs(score - other) <= 3 * (err**2 + other_err**2) ** 0.5 + 1e-9, (name, score, other)
    assert here["sft"][0] > 0.1 and there["sft"][0] > 0.1  # the comparison is between models that learned

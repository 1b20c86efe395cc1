"""Preflight: a recipe's later stages are checked before the first one starts."""

from __future__ import annotations

import json

import pytest

from cascade_rl.config import load_config
from cascade_rl.loops.pipeline import run_pipeline
from cascade_rl.loops.preflight import PreflightError, preflight
from cascade_rl.rewards import sandbox

USER = [{"role": "user", "content": "2 + 3?"}]


def _recipe(tmp_path, rl_prompts: list[dict], mopd_prompts: list[dict], **mopd) -> dict:
    return {
        "output_dir": str(tmp_path / "run"),
        "eval": {"domains": [{"task": "math", "n": 4}]},
        "stages": [
            {"type": "sft", "data": [{"task": "math", "n": 10}], "max_steps": 1},
            {"type": "rl", "name": "rl", "prompts": rl_prompts},
            {"type": "mopd", "prompts": mopd_prompts, **mopd},
        ],
    }


def test_late_stage_problems_stop_the_run_before_stage_one(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"messages": USER, "spec": {"type": "math", "answer": "5"}}, {"messages": USER, "spec": {"type": "poem"}}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = _recipe(tmp_path, [{"path": str(prompts)}], [{"task": "math", "n": 4}, {"task": "mcqa", "n": 4}])
    with pytest.raises(PreflightError) as info:
        run_pipeline(load_config(recipe))
    lines = str(info.value).splitlines()
    assert lines[0] == "the recipe cannot run:"
    # the spec without a verifier, named by file and line (the prompt's id) ...
    assert lines[1].startswith(f"  stages.1 (rl).prompts.0: {prompts}:2: unknown reward spec type 'poem'")
    # ... and the MOPD domain that no ledger column will score, both found before any work
    assert "stages.2 (mopd): MOPD domain 'mcqa' has no teacher" in lines[2] and "evaluated domains: math" in lines[2]
    assert not (tmp_path / "run" / "base").exists()


def test_missing_files_and_teachers_are_named(tmp_path):
    recipe = _recipe(
        tmp_path,
        [{"path": str(tmp_path / "absent.jsonl")}],
        [{"task": "math", "n": 4}],
        teachers={"math": str(tmp_path / "no-model")},
    )
    recipe["stages"][0]["data"].append({"path": str(tmp_path / "sft.jsonl")})
    with pytest.raises(PreflightError) as info:
        preflight(load_config(recipe))
    text = str(info.value)
    assert f"stages.0 (sft).data.1: data not found: {tmp_path / 'sft.jsonl'}" in text
    assert f"stages.1 (rl).prompts.0: {tmp_path / 'absent.jsonl'}: prompt file not found" in text
    assert f"stages.2 (mopd).teachers.math: no model folder at {tmp_path / 'no-model'}" in text


def test_a_good_recipe_passes(tmp_path):
    preflight(load_config(_recipe(tmp_path, [{"task": "math", "n": 4}], [{"task": "math", "n": 4}])))


def test_code_execution_below_the_required_isolation_is_refused(tmp_path, monkeypatch, capsys):
    recipe = _recipe(tmp_path, [{"task": "code", "n": 4}], [{"task": "math", "n": 4}])
    recipe["sandbox"] = {"min_isolation": "namespaces"}
    config = load_config(recipe)
    monkeypatch.setenv(sandbox.MIN_ISOLATION_ENV, "namespaces")
    monkeypatch.setattr(sandbox, "available_isolation", lambda: ("session", "rlimits", "no_new_privs"))
    with pytest.raises(PreflightError, match="below the required isolation"):
        preflight(config)
    assert "sandbox isolation: process" in capsys.readouterr().out  # said once, with the level in effect


def test_a_reward_that_names_no_earlier_stage_is_refused(tmp_path):
    recipe = _recipe(tmp_path, [{"task": "math", "n": 4}], [{"task": "math", "n": 4}])
    recipe["stages"][1]["reward"] = {"type": "reward_model", "args": {"model": "stage:rm"}}
    with pytest.raises(PreflightError) as info:
        preflight(load_config(recipe))
    assert "stages.1 (rl).reward.args.model: 'stage:rm' names no earlier stage (earlier: sft)" in str(info.value)


@pytest.mark.parametrize("name", ["tiny-cascade", "tiny-rlhf", "tiny-swe", "smollm2-cascade", "smollm2-rlhf"])
def test_shipped_recipes_pass_preflight(name):
    from cascade_rl.cli import RECIPES

    preflight(load_config(RECIPES / f"{name}.yaml"))


def test_a_reward_model_stage_on_a_task_without_pairs_is_refused(tmp_path):
    recipe = _recipe(tmp_path, [{"task": "math", "n": 4}], [{"task": "math", "n": 4}])
    recipe["stages"].insert(1, {"type": "reward_model", "name": "rm", "data": [{"task": "math"}], "steps": 1})
    with pytest.raises(PreflightError, match=r"stages\.1 \(rm\)\.data\.0: task 'math' makes no preference pairs"):
        preflight(load_config(recipe))

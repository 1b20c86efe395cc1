"""The command line: help on every command, clear errors for bad recipes and folders, chat output."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from cascade_rl.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["run", "sft", "rl", "eval", "chat", "demo"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output) > 200


def test_top_level_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "sft", "rl", "eval", "chat", "demo"):
        assert command in result.output


def test_threads_option_sets_torch_threads(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        result = runner.invoke(app, ["--threads", "3", "run", str(tmp_path / "absent.yaml")])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 2  # the command itself still ran (and failed on the missing recipe)
    assert runner.invoke(app, ["--threads", "0", "run", "x.yaml"]).exit_code == 2  # at least one thread


def test_bad_recipe_names_the_field(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"stages": [{"type": "sft", "data": [{"task": "math"}], "pack_lenght": 8}]}))
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2
    assert "stages.0.pack_lenght: Extra inputs are not permitted" in result.output


def test_missing_recipe(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "recipe not found" in result.output


def test_single_stage_commands_refuse_to_overwrite_without_resume(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "out"),
                "stages": [{"type": "sft", "data": [{"task": "math"}]}, {"type": "rl", "prompts": [{"task": "math"}]}],
            }
        )
    )
    (tmp_path / "out" / "sft" / "checkpoints").mkdir(parents=True)
    result = runner.invoke(app, ["sft", str(recipe)])
    assert result.exit_code == 2 and "pass --resume" in result.output
    result = runner.invoke(app, ["rl", str(recipe), "--stage", "nope"])
    assert result.exit_code == 2 and "expected exactly one rl or mopd stage" in result.output


def test_chat_shows_reasoning_answer_and_flags(tmp_path, tokenizer):
    _tiny_folder(tmp_path, tokenizer)
    result = runner.invoke(app, ["chat", str(tmp_path / "m"), "-m", "What is 2 + 2?", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    # an untrained model rambles: the answer line is shown and the cut-off is flagged, never a crash
    assert "answer:" in result.output
    assert "truncated=True" in result.output


def _tiny_folder(tmp_path, tokenizer, name: str = "m", seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    from cascade_rl.model import save
    from cascade_rl.model.tiny import tiny_config

    config = tiny_config(
        "qwen3",
        tokenizer,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    torch.manual_seed(seed)
    return save(AutoModelForCausalLM.from_config(config), tokenizer, tmp_path / name)


def test_eval_takes_jsonl_prompt_files_with_specs(tmp_path, tokenizer):
    import json

    folder = _tiny_folder(tmp_path, tokenizer)
    prompts = tmp_path / "mine.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "2 + 3?"}], "spec": {"type": "math", "answer": "5"}},
        {"messages": [{"role": "user", "content": "A?"}], "spec": {"type": "mcqa", "answer": "A"}, "domain": "quiz"},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", str(folder), "--prompts", str(prompts), "--samples", "2", "--max-new-tokens", "4"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "samples.jsonl")])
    assert result.exit_code == 0, result.output
    # one line per domain the records resolve to: the file stem, and a record's own domain
    assert [line.split()[0] for line in result.output.splitlines() if "avg@2" in line] == ["mine:direct", "quiz:direct"]
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    result = runner.invoke(app, ["eval", str(folder), "--prompts", str(bad)])
    assert result.exit_code == 2 and f"{bad}:1: " in result.output


def test_rl_runs_a_mopd_stage_with_explicit_teachers(tmp_path, tokenizer):
    student = _tiny_folder(tmp_path, tokenizer, "student")
    teacher = _tiny_folder(tmp_path, tokenizer, "teacher", seed=1)
    stage = {
        "type": "mopd",
        "prompts": [{"task": "math", "n": 8}, {"task": "mcqa", "n": 8}],
        "steps": 1,
        "prompts_per_step": 2,
        "group_size": 2,
        "max_new_tokens": 4,
    }
    recipe = tmp_path / "r.yaml"
    base = {"output_dir": str(tmp_path / "out"), "model": {"spec": str(student)}}
    recipe.write_text(yaml.safe_dump({**base, "stages": [{**stage, "teachers": {"math": str(teacher)}}]}))
    result = runner.invoke(app, ["rl", str(recipe)])
    assert result.exit_code == 2 and "MOPD domain 'mcqa' has no teacher" in result.output  # caught in preflight
    recipe.write_text(yaml.safe_dump({**base, "stages": [{**stage, "default_teacher": str(teacher)}]}))
    result = runner.invoke(app, ["rl", str(recipe)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "mopd" / "model" / "config.json").is_file()


def test_shipped_recipes_resolve_by_name_and_ship_in_the_wheel(tmp_path):
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    from cascade_rl.cli import RECIPES, recipe_path

    assert recipe_path(Path("tiny-cascade")) == RECIPES / "tiny-cascade.yaml"
    assert recipe_path(Path("smollm2-cascade.yaml")) == RECIPES / "smollm2-cascade.yaml"
    result = runner.invoke(app, ["run", "no-such-recipe"])
    said = " ".join(result.output.split())  # the console wraps long lines
    shipped = "nemotron-cascade-2, smollm2-cascade, smollm2-rlhf, tiny-cascade, tiny-rlhf, tiny-swe"
    assert result.exit_code == 2 and f"shipped recipes: {shipped}" in said
    repo, source = Path(__file__).resolve().parents[2], tmp_path / "source"  # a copy: builds leave build/ behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    shutil.copytree(repo / "cascade_rl", source / "cascade_rl", ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*build, str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("cascade_rl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"cascade_rl/recipes/{n}.yaml" for n in ("tiny-cascade", "smollm2-cascade")} <= set(names)
    assert "cascade_rl/chat/cascade2.jinja" in names


def test_swe_instances_become_prompts_graded_by_their_tests(tmp_path):
    import json
    import random

    from cascade_rl.config import DataConfig
    from cascade_rl.data.build import prompts_for
    from cascade_rl.rewards import verify
    from cascade_rl.swe.patch import format_edit_block
    from cascade_rl.swe.procedural import generate

    made = [generate(random.Random(f"cli/{i}"), 0) for i in range(2)]
    instances = tmp_path / "instances.jsonl"
    lines = [json.dumps(m.instance.to_dict()) for m in made]
    instances.write_text("\n".join([lines[0], '{"instance_id": "broken"}', lines[1]]) + "\n")
    out = tmp_path / "prompts.jsonl"
    result = runner.invoke(app, ["swe-prompts", str(instances), str(out)])
    assert result.exit_code == 2 and f"{instances}:2:'problem_statement'" in "".join(result.output.split())
    result = runner.invoke(app, ["swe-prompts", str(instances), str(out), "--on-error", "skip"])
    assert result.exit_code == 0 and "2agentlesspromptsfrom3instances,1skipped" in "".join(result.output.split())
    prompts = prompts_for(DataConfig(path=str(out)), "rl")
    assert [p.spec["type"] for p in prompts] == ["swe", "swe"] and {p.domain for p in prompts} == {"swe"}
    gold = format_edit_block(made[0].gold)
    assert verify(gold, prompts[0].spec).score == 1.0 and verify("no edit", prompts[0].spec).score == 0.0
    agentic = tmp_path / "agentic.jsonl"
    args = ["swe-prompts", str(instances), str(agentic), "--mode", "agentic", "--on-error", "skip"]
    assert runner.invoke(app, args).exit_code == 0
    assert {p.env for p in prompts_for(DataConfig(path=str(agentic)), "rl")} == {"swe_agentic"}

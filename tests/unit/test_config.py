"""Recipes: validation errors name the field path, overrides by index and by stage name, stage types, dumps."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from cascade_rl.config import (
    ConfigError,
    DataConfig,
    MOPDStage,
    OptimConfig,
    PipelineConfig,
    RLStage,
    SFTStage,
    dump_config,
    load_config,
)


def recipe(**stage_fields: Any) -> dict[str, Any]:
    stage = {"type": "sft", "name": "sft", "data": [{"task": "math", "n": 10}], **stage_fields}
    return {"name": "t", "stages": [stage, {"type": "rl", "name": "math_rl", "prompts": [{"task": "math"}]}]}


def error_lines(source: Any, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    return str(info.value).splitlines()


# --------------------------------------------------------------------------- validation errors


def test_bad_value_names_dotted_path():
    # pydantic puts the discriminator tag ("sft") in the location of a tagged-union member
    assert error_lines(recipe(pack_length=8)) == [
        "recipe: stages.0.pack_length: Input should be greater than or equal to 16"
    ]
    assert error_lines(recipe(optim={"lr": 0})) == ["recipe: stages.0.optim.lr: Input should be greater than 0"]
    assert error_lines(recipe(), ["stages.1.top_p=1.5"]) == [
        "recipe: stages.1.top_p: Input should be less than or equal to 1"
    ]


def test_every_error_is_reported_not_just_the_first():
    lines = error_lines(recipe(pack_length=8, epochs=0, packs_per_step=0))
    assert [line.split(": ")[1] for line in lines] == [
        "stages.0.pack_length",
        "stages.0.packs_per_step",
        "stages.0.epochs",
    ]


def test_unknown_fields_are_forbidden_at_every_level():
    assert error_lines(recipe(pack_lenght=512)) == ["recipe: stages.0.pack_lenght: Extra inputs are not permitted"]
    assert error_lines(recipe(optim={"learning_rate": 1e-4})) == [
        "recipe: stages.0.optim.learning_rate: Extra inputs are not permitted"
    ]
    assert error_lines({**recipe(), "epochs": 2}) == ["recipe: epochs: Extra inputs are not permitted"]
    # an SFT-only field on an RL stage is unknown there, not silently ignored
    assert error_lines(recipe(), ["stages.1.pack_length=512"]) == [
        "recipe: stages.1.pack_length: Extra inputs are not permitted"
    ]


def test_data_config_needs_exactly_one_source():
    (line,) = error_lines(recipe(data=[{"task": "math", "path": "x.jsonl"}]))
    assert line.startswith("recipe: stages.0.data.0: Value error, give exactly one of 'path' or 'task'")
    (line,) = error_lines(recipe(data=[{"n": 3}]))
    assert "stages.0.data.0" in line and "exactly one of 'path' or 'task'" in line


def test_stage_names_must_be_unique():
    tree = recipe()
    tree["stages"][1]["name"] = "sft"
    (line,) = error_lines(tree)
    assert line.endswith("stage names must be unique; repeated: sft")


def test_configs_are_frozen():
    config = load_config(recipe())
    with pytest.raises(ValidationError, match="frozen"):
        config.stages[0].epochs = 3.0


# --------------------------------------------------------------------------- overrides


def test_override_by_index_is_yaml_typed():
    config = load_config(recipe(), ["stages.0.pack_length=512", "stages.0.optim.betas=[0.9, 0.95]", "seed=3"])
    stage = config.stages[0]
    assert stage.pack_length == 512 and isinstance(stage.pack_length, int)
    assert stage.optim.betas == (0.9, 0.95)
    assert config.seed == 3
    assert load_config(recipe()).stages[0].pack_length == 4096  # the default


def test_override_by_stage_name():
    config = load_config(recipe(), ["stages.sft.epochs=2", "stages.math_rl.group_size=4"])
    assert config.stages[0].epochs == 2.0
    assert config.stages[1].group_size == 4
    assert config.stages[1].steps == 100  # untouched


def test_override_can_add_a_nested_mapping():
    config = load_config(recipe(), ["stages.sft.optim.min_lr=1e-6", "model.tiny.hidden_size=64"])
    assert config.stages[0].optim.min_lr == 1e-6
    assert config.model.tiny == {"hidden_size": 64}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.5.epochs=2", "override 'stages.5.epochs': no list item '5' at stages"),
        ("stages.nope.epochs=2", "override 'stages.nope.epochs': no list item 'nope' at stages"),
        ("stages.0.pack_length", "override 'stages.0.pack_length': expected key.sub=value"),
        ("name.x=1", "override 'name.x': name is not a mapping or list"),
    ],
)
def test_bad_overrides(override, message):
    assert error_lines(recipe(), [override]) == [message]


def test_override_value_is_validated():
    assert error_lines(recipe(), ["stages.sft.pack_length=8"]) == [
        "recipe: stages.0.pack_length: Input should be greater than or equal to 16"
    ]


def test_override_by_default_stage_name():
    tree = {"stages": [{"type": "sft", "data": [{"task": "math"}]}]}
    assert load_config(tree).stages[0].name == "sft"
    assert load_config(tree, ["stages.sft.epochs=2"]).stages[0].epochs == 2.0


def test_overrides_leave_the_callers_recipe_alone():
    tree = recipe()
    before = copy.deepcopy(tree)
    load_config(tree, ["stages.0.pack_length=512"])
    assert tree == before
    assert load_config(tree).stages[0].pack_length == 4096


# --------------------------------------------------------------------------- stage types


def test_stage_type_selects_the_model():
    tree = {
        "stages": [
            {"type": "sft", "data": [{"path": "a.jsonl"}]},
            {"type": "rl", "prompts": [{"task": "math"}]},
            {"type": "mopd", "prompts": [{"task": "mcqa"}], "teachers": {"mcqa": "runs/x"}},
        ]
    }
    sft, rl, mopd = load_config(tree).stages
    assert type(sft) is SFTStage and sft.name == "sft" and sft.data == [DataConfig(path="a.jsonl")]
    assert type(rl) is RLStage and (rl.name, rl.advantage, rl.group_size) == ("rl", "grpo", 8)
    assert rl.optim == OptimConfig(lr=3e-6, betas=(0.9, 0.999), weight_decay=0.0)
    assert type(mopd) is MOPDStage
    assert (mopd.name, mopd.group_size, mopd.dynamic_filtering) == ("mopd", 4, False)
    assert mopd.optim == OptimConfig(lr=2e-6, warmup_steps=30, warmup_start_lr=2e-7, betas=(0.9, 0.999), weight_decay=0)
    assert mopd.teachers == {"mcqa": "runs/x"}


def test_a_partial_optim_block_takes_its_own_stage_types_defaults():
    """``optim: {lr: 3.0e-6}`` in an RL stage: RL betas and weight decay, not the SFT ones."""
    tree = {
        "stages": [
            {"type": "sft", "data": [{"task": "math"}], "optim": {"lr": 1e-4}},
            {"type": "rl", "prompts": [{"task": "math"}], "optim": {"lr": 3e-6}},
            {"type": "mopd", "prompts": [{"task": "math"}], "optim": {"lr": 1e-6, "grad_clip": 0.5}},
        ]
    }
    sft, rl, mopd = load_config(tree).stages
    assert (sft.optim.lr, sft.optim.betas, sft.optim.weight_decay) == (1e-4, (0.9, 0.98), 0.1)
    assert (rl.optim.lr, rl.optim.betas, rl.optim.weight_decay) == (3e-6, (0.9, 0.999), 0.0)
    assert (mopd.optim.lr, mopd.optim.warmup_steps, mopd.optim.warmup_start_lr, mopd.optim.grad_clip) == (
        1e-6,
        30,
        2e-7,
        0.5,
    )
    # the same through Python: only the fields set on the OptimConfig override the stage's defaults
    assert RLStage(prompts=[{"task": "math"}], optim=OptimConfig(lr=1e-5)).optim.betas == (0.9, 0.999)
    assert error_lines({"stages": [{"type": "rl", "prompts": [{"task": "m"}], "optim": {"lr": -1}}]}) == [
        "recipe: stages.0.optim.lr: Input should be greater than 0"
    ]


def test_stage_type_fixes_the_objective_family():
    assert error_lines({"stages": [{"type": "rl", "prompts": [{"task": "math"}], "advantage": "mopd"}]}) == [
        "recipe: stages.0.advantage: Value error, unknown objective 'mopd' for an rl stage (distillation is a "
        "stage of type mopd); expected one of grpo, grpo_clip, grpo_no_std, tis"
    ]
    assert error_lines({"stages": [{"type": "mopd", "prompts": [{"task": "math"}], "advantage": "grpo"}]}) == [
        "recipe: stages.0.advantage: Extra inputs are not permitted"
    ]
    for name in ("grpo_clip", "tis", "grpo_no_std"):
        assert load_config({"stages": [{"type": "rl", "prompts": [{"task": "m"}], "advantage": name}]})


def test_rl_stages_refuse_truncated_sampling():
    """top_p / top_k would make pi_train / pi_inf sit at the kept mass: refused with the reason."""
    for field, value in (("top_p", 0.95), ("top_k", 40)):
        (line,) = error_lines({"stages": [{"type": "rl", "prompts": [{"task": "math"}], field: value}]})
        assert line.startswith(
            f"recipe: stages.0.{field}: Value error, RL stages sample the full tempered distribution"
        )
    assert load_config({"stages": [{"type": "rl", "prompts": [{"task": "m"}], "top_p": 1.0, "top_k": 0}]})


def test_unknown_or_missing_stage_type():
    assert error_lines({"stages": [{"type": "dpo", "data": [{"task": "math"}]}]}) == [
        "recipe: stages.0: Input tag 'dpo' found using 'type' does not match any of the expected tags: "
        "'sft', 'rl', 'mopd', 'reward_model'"
    ]
    (line,) = error_lines({"stages": [{"data": [{"task": "math"}]}]})
    assert line.startswith("recipe: stages.0: Unable to extract tag using discriminator 'type'")


def test_mopd_only_fields_are_rejected_on_rl_stages():
    assert error_lines({"stages": [{"type": "rl", "prompts": [{"task": "math"}], "teachers": {}}]}) == [
        "recipe: stages.0.teachers: Extra inputs are not permitted"
    ]


# --------------------------------------------------------------------------- files and dumps


def test_resolved_recipe_dump_round_trips(tmp_path):
    config = load_config(recipe(), ["stages.sft.pack_length=512", "stages.math_rl.icepop=null"])
    path = tmp_path / "run" / "recipe.yaml"
    dump_config(config, path)
    again = load_config(path)
    assert again == config
    assert isinstance(again, PipelineConfig) and again.stages[1].icepop is None
    text = path.read_text()
    # every default is explicit in the dump, so the run folder alone reproduces the run
    assert "packs_per_step: 8" in text and "warmup_start_lr: 0.0" in text and "pack_length: 512" in text
    dump_config(again, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == text


def test_yaml_file_errors_name_the_file(tmp_path):
    assert error_lines(tmp_path / "missing.yaml") == [f"recipe not found: {tmp_path / 'missing.yaml'}"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    assert error_lines(bad) == [f"{bad}:2:1: not valid YAML: expected the node content, but found '<stream end>'"]
    typo = tmp_path / "typo.yaml"
    typo.write_text("stages:\n  - type: sft\n    data: [{task: math}]\n    epoch: 2\n")
    assert error_lines(typo) == [f"{typo}: stages.0.epoch: Extra inputs are not permitted"]
    assert error_lines(typo, ["stages.0.epoch=3"]) == [f"{typo}: stages.0.epoch: Extra inputs are not permitted"]


def test_ray_placements_the_cluster_cannot_hold_are_refused_before_any_actor_starts():
    from cascade_rl.config import RayEngineConfig
    from cascade_rl.engines.ray import check_resources

    check_resources(RayEngineConfig(trainer_ranks=2), cpus=2, gpus=0)  # colocated vLLM takes no CPU of its own
    with pytest.raises(ValueError, match=r"needs 3 CPUs .*2 trainer ranks, a separate vLLM engine.* has 2"):
        check_resources(RayEngineConfig(trainer_ranks=2, placement="separate"), cpus=2, gpus=0)
    with pytest.raises(ValueError, match="needs 2 GPUs"):
        check_resources(RayEngineConfig(trainer_ranks=2), cpus=16, gpus=1)
    check_resources(RayEngineConfig(trainer="local", placement="separate"), cpus=1, gpus=0)


def test_vllm_scorers_are_refused_where_a_stage_scores_at_another_temperature():
    stages = [{"type": "mopd", "prompts": [{"task": "math", "n": 4}], "temperature": 0.7}]
    engine = {"kind": "ray", "ray": {"scorer": "vllm"}}
    with pytest.raises(ValueError, match="untempered"):
        PipelineConfig(stages=stages, engine=engine)
    PipelineConfig(stages=stages, engine={"kind": "ray"})  # local scorers take any temperature
    with pytest.raises(ValueError, match="less than or equal to 1"):
        PipelineConfig(stages=stages, engine={"kind": "ray", "ray": {"vllm": {"tensor_parallel_size": 2}}})

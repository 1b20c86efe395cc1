"""The demo's recipe and its plain-words reading of the ledger; which modes and validation sets are scored."""

from __future__ import annotations

import pytest

from cascade_rl.cli import RECIPES
from cascade_rl.config import ConfigError, DataConfig, EvalConfig, PipelineConfig, load_config
from cascade_rl.demo import reading
from cascade_rl.eval.ledger import Ledger, LedgerRow
from cascade_rl.eval.runner import modes_of
from cascade_rl.loops.pipeline import _validation_domains
from cascade_rl.plots import moving_average, reward_curves

PUBLISHED_ORDER = ["sft", "if_rl", "multi_domain_rl", "mopd", "rlhf", "long_context_rl", "code_rl", "swe_rl"]


def _config() -> PipelineConfig:
    return load_config(
        {
            "name": "t",
            "stages": [
                {"type": "sft", "name": "sft", "data": [{"task": "math", "n": 10}]},
                {"type": "rl", "name": "if_rl", "prompts": [{"task": "instruct", "n": 10}]},
                {"type": "mopd", "name": "mopd", "prompts": [{"task": "math", "n": 10}, {"task": "instruct", "n": 10}]},
                {"type": "rl", "name": "code_rl", "prompts": [{"task": "code", "n": 10}]},
            ],
        }
    )


def test_the_shipped_demo_runs_the_published_order_in_both_modes():
    config = load_config(RECIPES / "tiny-cascade.yaml")
    policy_stages = [s.name for s in config.stages if s.type != "reward_model"]
    assert policy_stages == PUBLISHED_ORDER
    assert config.eval.thinking == [False, True]
    # thinking columns exactly for the domains whose SFT data has reasoning traces
    sft = config.stages[0]
    traced = {d.task for d in sft.data if d.thinking != "off"}
    scored_thinking = {d.task for d in config.eval.domains if True in modes_of(d, config.eval)}
    assert traced == scored_thinking == {"math", "mcqa"}
    assert {d.task for d in config.eval.domains} >= {"chat", "long_context", "swe_agentless", "swe_agentic", "code"}


def test_a_domain_is_scored_in_the_modes_it_allows():
    both = EvalConfig(thinking=[False, True])
    assert modes_of(DataConfig(task="math"), both) == [False, True]
    assert modes_of(DataConfig(task="math", thinking="off"), both) == [False]
    assert modes_of(DataConfig(task="math", thinking="on"), both) == [True]
    assert modes_of(DataConfig(task="math", thinking="on"), EvalConfig(thinking=[False])) == []


def test_validation_sets_only_for_models_a_later_mopd_stage_can_pick():
    config = _config()
    assert _validation_domains(config, -1) == set()  # the base is no teacher by default
    assert _validation_domains(config, 1) == {"math", "instruct"}  # if_rl
    assert _validation_domains(config, 2) == set()  # MOPD itself and later stages are never its teachers
    assert _validation_domains(config, 3) == set()
    named = config.model_copy(
        update={"stages": [*config.stages[:2], config.stages[2].model_copy(update={"teachers": {"math": "/t"}})]}
    )
    assert _validation_domains(named, 0) == {"instruct"}  # a named teacher needs no choosing
    with_base = config.model_copy(
        update={"stages": [*config.stages[:2], config.stages[2].model_copy(update={"base_as_teacher": True})]}
    )
    assert _validation_domains(with_base, -1) == {"math", "instruct"}


def test_base_as_teacher_needs_the_base_scored():
    tree = _config().model_dump(mode="json")
    tree["eval"]["base"] = False
    tree["stages"][2]["base_as_teacher"] = True
    with pytest.raises(ConfigError, match="base_as_teacher needs the base model scored"):
        load_config(tree)


def test_reading_states_changes_with_their_noise_and_forgetting():
    ledger = Ledger()
    ledger.add(LedgerRow("sft", "s", {"math:direct": 0.50, "instruct:direct": 0.40, "code:direct": 0.60}))
    errors = {"math:direct": 0.02, "instruct:direct": 0.02, "code:direct": 0.02}
    ledger.add(
        LedgerRow("if_rl", "i", {"math:direct": 0.51, "instruct:direct": 0.55, "code:direct": 0.30}, errors=errors)
    )
    ledger.add(
        LedgerRow("mopd", "m", {"math:direct": 0.52, "instruct:direct": 0.50, "code:direct": 0.30}, errors=errors)
    )
    ledger.rows[0].errors = dict(errors)
    text = reading(_config(), ledger)
    # instruct +0.15 against a noise of 2 * hypot(0.02, 0.02) = 0.057; math +0.01 within it
    assert "if_rl on its own domains: instruct:direct 0.40->0.55 (+0.15, beyond noise)." in text
    assert "mopd on its own domains: math:direct 0.51->0.52 (+0.01, within noise)" in text
    # MOPD vs the best before it: math 0.52 - 0.51, instruct 0.50 - 0.55
    assert "MOPD vs its teachers' best score (before MOPD): math:direct +0.01, instruct:direct -0.05." in text
    assert "the largest code:direct (sft -> if_rl, -0.30)" in text


def test_moving_average_is_trailing():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([2.0], 5) == [2.0]


def test_reward_curves_wrap_after_four_panels_with_the_kl_beside_its_stage(tmp_path):
    import json

    from matplotlib.image import imread

    files = {}
    for name in ("if_rl", "multi", "mopd", "code_rl"):  # 4 stages, and MOPD's KL: 5 panels, so a second row
        rows = [{"step": s, "reward": 0.5, "reward/math": 0.1 * s} for s in (1, 2, 3)]
        if name == "mopd":
            rows = [dict(r, **{"reverse_kl/math": 3.0 - 0.1 * r["step"]}) for r in rows]
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    files["missing"] = tmp_path / "missing.jsonl"  # a stage that never logged is left out
    height, width = imread(reward_curves(files, tmp_path / "curves.png")).shape[:2]
    assert (width, height) == (4 * 4 * 110, 2 * 3 * 110)  # 4 columns x 2 rows of 4 x 3 inch panels at 110 dpi


def test_the_smollm2_cascade_scores_enough_prompts_and_never_distils_from_the_base():
    config = load_config(RECIPES / "smollm2-cascade.yaml")
    assert min(d.n for d in config.eval.domains) >= 200  # one greedy score's standard error <= 0.03
    mopd = [s for s in config.stages if s.type == "mopd"]
    assert mopd and not any(s.base_as_teacher for s in mopd)
    assert sum(s.type == "rl" for s in config.stages) >= 2

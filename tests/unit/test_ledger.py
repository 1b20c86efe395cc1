"""The stage x domain ledger: best checkpoint per domain, forgetting, teacher choice, persistence."""

from __future__ import annotations

import pytest

from cascade_rl.eval.ledger import Ledger, LedgerRow, best_overall, choose_teachers
from cascade_rl.eval.runner import pass_at_k


def _ledger() -> Ledger:
    ledger = Ledger()
    # validation scores (what teachers are chosen on) disagree with the reported test scores on purpose
    ledger.add(LedgerRow("base", "ckpt/base", {"a:direct": 0.0, "b:direct": 0.0}, validation={"b:direct": 0.99}))
    ledger.add(LedgerRow("sft", "ckpt/sft", {"a:direct": 0.30, "b:direct": 0.78}, validation={"a:direct": 0.50}))
    ledger.add(LedgerRow("rl_a", "ckpt/rl_a", {"a:direct": 0.47, "b:direct": 0.776}, validation={"a:direct": 0.45}))
    ledger.add(LedgerRow("rl_b", "ckpt/rl_b", {"a:direct": 0.10, "b:direct": 0.85}, validation={"b:direct": 0.80}))
    return ledger


def test_best_checkpoint_per_domain():
    best = _ledger().best()
    assert best["a:direct"].stage == "rl_a"
    assert best["b:direct"].stage == "rl_b"


def test_forgetting_beyond_tolerance_only():
    # a: 0.47 -> 0.10 is forgetting (0.37); b: 0.78 -> 0.776 is within the 0.02 noise tolerance.
    drops = _ledger().forgetting()
    assert [(c, a, b) for c, a, b, _ in drops] == [("a:direct", "rl_a", "rl_b")]
    assert drops[0][3] == pytest.approx(0.37)


def test_teachers_are_chosen_on_validation_not_on_the_reported_scores():
    ledger = _ledger()
    # test scores would pick rl_a for a; the validation split picks sft; the base model (validation 0.99 on
    # b) is no candidate unless the recipe allows it
    assert choose_teachers(ledger, ["a", "b"], thinking=False) == {"a": "ckpt/sft", "b": "ckpt/rl_b"}
    assert choose_teachers(ledger, ["b"], False, include_base=True) == {"b": "ckpt/base"}
    assert choose_teachers(ledger, ["a", "b"], False, {"a": "/my/teacher"}) == {"a": "/my/teacher", "b": "ckpt/rl_b"}
    with pytest.raises(KeyError, match="no validation score for domain 'c'"):
        choose_teachers(ledger, ["c"], thinking=False)
    assert choose_teachers(ledger, ["a", "c"], False, fallback=True) == {"a": "ckpt/sft"}  # c: default teacher
    assert best_overall(ledger).stage == "rl_b"  # mean validation 0.80 beats sft's 0.50 and rl_a's 0.45
    assert best_overall(ledger, include_base=True).stage == "base"


def test_markdown_marks_best_and_forgetting():
    text = _ledger().to_markdown()
    assert "| rl_a | **0.470** | 0.776 |" in text
    assert "| rl_b | 0.100 | **0.850** |" in text
    assert "Forgetting: a:direct rl_a -> rl_b (-0.370)" in text


def test_save_load_round_trip(tmp_path):
    ledger = _ledger()
    ledger.save(tmp_path)
    again = Ledger.load(tmp_path)
    assert [(r.stage, r.scores) for r in again.rows] == [(r.stage, r.scores) for r in ledger.rows]
    assert (tmp_path / "ledger.md").read_text().startswith("| stage | a:direct | b:direct |")


def test_rerun_replaces_a_row():
    ledger = _ledger()
    ledger.add(LedgerRow("sft", "ckpt/sft2", {"a:direct": 0.5, "b:direct": 0.5}))
    assert [r.stage for r in ledger.rows] == ["base", "rl_a", "rl_b", "sft"]


def test_pass_at_k_unbiased_estimator():
    # n=4 samples, c=1 correct: pass@1 = 1 - C(3,1)/C(4,1) = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2.
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0


def test_forgetting_accounts_for_evaluation_noise(tmp_path):
    # 192 samples per score: SE(0.39) = 0.035, SE(0.32) = 0.034 -> 2 * hypot = 0.098 > drop 0.07: noise
    ledger = Ledger()
    ledger.add(LedgerRow("a", "ckpt/a", {"m:direct": 0.39}, {"m:direct": 192}))
    ledger.add(LedgerRow("b", "ckpt/b", {"m:direct": 0.32}, {"m:direct": 192}))
    assert ledger.forgetting() == []
    # the same drop measured on 3,000 samples each (2 * hypot = 0.025) is forgetting
    ledger.add(LedgerRow("a", "ckpt/a", {"m:direct": 0.39}, {"m:direct": 3000}))
    ledger.add(LedgerRow("b", "ckpt/b", {"m:direct": 0.32}, {"m:direct": 3000}))
    assert [(a, b) for _, a, b, _ in ledger.forgetting()] == [("a", "b")]
    # measured standard errors (over prompts) take precedence over the sample-count bound:
    # 2 * hypot(0.03, 0.04) = 0.10 > 0.07 -> noise, although 3,000 samples alone would call it forgetting
    ledger.add(LedgerRow("a", "ckpt/a", {"m:direct": 0.39}, {"m:direct": 3000}, {"m:direct": 0.03}))
    ledger.add(LedgerRow("b", "ckpt/b", {"m:direct": 0.32}, {"m:direct": 3000}, {"m:direct": 0.04}))
    assert ledger.forgetting() == []
    ledger.save(tmp_path)
    assert Ledger.load(tmp_path).rows[1].errors == {"m:direct": 0.04}


def test_domain_score_standard_error_is_over_prompts(monkeypatch):
    from cascade_rl.config import EvalConfig
    from cascade_rl.eval import runner
    from cascade_rl.loops import rollout
    from cascade_rl.rewards.base import RewardResult
    from cascade_rl.types import Completion, Prompt

    # three prompts, four samples each; the samples of a prompt agree: prompt means 1, 0, 0.5
    verdicts = {0: [1, 1, 1, 1], 1: [0, 0, 0, 0], 2: [1, 0, 1, 0]}

    class Generator:
        def generate(self, prompts, params):
            return [[Completion((p[0],), (0.0,), "stop") for _ in range(params.n)] for p in prompts]

    class Tokenizer:
        eos_token_id = 0

        def decode(self, tokens, **kwargs) -> str:
            return str(tokens[0])

    def reward_fn(groups):  # a group-level reward function: one verdict list per prompt
        return [[RewardResult(float(v)) for v in verdicts[int(g.prompt.uid)]] for g in groups]

    monkeypatch.setattr(rollout, "encode_prompt", lambda tok, messages, tools, **kw: [int(messages[0]["content"])])
    prompts = [Prompt(({"role": "user", "content": str(i)},), {"type": "math"}, "m", uid=str(i)) for i in verdicts]
    config = EvalConfig(domains=[{"task": "math"}], samples=4, temperature=1.0)
    (score,) = runner.evaluate_prompts(Generator(), Tokenizer(), prompts, config, False, reward_fn=reward_fn)
    assert (score.domain, score.avg, score.prompts, score.samples) == ("m", 0.5, 3, 4)
    # sample std of the prompt means (1, 0, 0.5) = 0.5, over sqrt(3) prompts = 0.2887; treating the 12
    # samples as independent would claim sqrt(0.25 / 12) = 0.144
    assert score.stderr == pytest.approx(0.5 / 3**0.5)


def test_a_mixed_prompt_file_is_scored_per_record_domain(monkeypatch):
    """One resolver: a file whose records carry their own domains yields one ledger column per domain."""
    from cascade_rl.config import EvalConfig
    from cascade_rl.eval import runner
    from cascade_rl.loops import rollout
    from cascade_rl.rewards.base import RewardResult
    from cascade_rl.types import Completion, Prompt

    class Generator:
        def generate(self, prompts, params):
            return [[Completion((p[0],), (0.0,), "stop")] for p in prompts]

    class Tokenizer:
        eos_token_id = 0

        def decode(self, tokens, **kwargs) -> str:
            return str(tokens[0])

    monkeypatch.setattr(rollout, "encode_prompt", lambda tok, messages, tools, **kw: [int(messages[0]["content"])])
    prompts = [
        Prompt(({"role": "user", "content": str(i)},), {"type": "math"}, d, uid=str(i))
        for i, d in enumerate(["olympiad", "stem_mix", "olympiad"])
    ]
    config = EvalConfig(samples=1, temperature=1.0)
    scores = runner.evaluate_prompts(
        Generator(), Tokenizer(), prompts, config, False, reward_fn=lambda gs: [[RewardResult(1.0)] for _ in gs]
    )
    assert [(s.domain, s.prompts, s.key) for s in scores] == [
        ("olympiad", 2, "olympiad:direct"),
        ("stem_mix", 1, "stem_mix:direct"),
    ]

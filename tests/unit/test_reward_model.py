"""Bradley-Terry reward models: the loss, the in-process engine, the stage loop, and the reward function."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cascade_rl.algo import bradley_terry_loss
from cascade_rl.chat import render
from cascade_rl.config import DataConfig, EngineConfig, ModelConfig, OptimConfig, RewardModelStage
from cascade_rl.data.pairs import read_pairs
from cascade_rl.data.tasks import make_split
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.engines.reward_model import load_reward_model
from cascade_rl.logging import read_metrics
from cascade_rl.loops.reward_model import EVAL_FILE, run_reward_model
from cascade_rl.model.load import save
from cascade_rl.model.tiny import build_tiny
from cascade_rl.rewards.reward_fn import RewardContext, build_reward, score_groups
from cascade_rl.types import Prompt, Trajectory, TrajectoryGroup
from tests.conftest import TINY_QWEN3, small_corpus

# Measured held-out pairwise accuracy of this recipe (200 train pairs, 40 steps of 16, lr 1e-3), model
# seeds 0-4 with the data seed alike: 0.770, 0.780, 0.755, 0.740, 0.805 (chance: 0.5; ~5 s on one thread).
MIN_ACCURACY = 0.65


def _backend() -> LocalBackend:
    return LocalBackend(EngineConfig(), ModelConfig())


def _stage(**overrides) -> RewardModelStage:
    fields = dict(
        data=[DataConfig(task="chat", n=200)],
        steps=40,
        pairs_per_step=16,
        optim={"lr": 1e-3, "warmup_steps": 3, "min_lr": 1e-4},
        max_length=256,
        save_every=1000,
    )
    return RewardModelStage(**{**fields, **overrides})


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny random qwen3 causal LM whose BPE also saw the chat domain (so a pair is ~40 tokens, not ~120)."""
    corpus = small_corpus() + [render(p.sft_record(False)["messages"]) for p in make_split("chat", "train", 300)]
    model, tokenizer = build_tiny("qwen3", seed=0, corpus=corpus, vocab_size=600, **TINY_QWEN3)
    folder = tmp_path_factory.mktemp("rm_base") / "model"
    save(model, tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("rm_run")
    return run_reward_model(_stage(), _backend(), base, run_dir)


# --------------------------------------------------------------------------- the loss


def test_bradley_terry_loss_equals_the_formula_on_hand_made_scores():
    chosen = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    loss, metrics = bradley_terry_loss(chosen, rejected, 4.0)  # margins 1, 0, -2; the step has 4 pairs
    value = float(loss.detach())
    # -log sigmoid(m) = log(1 + e^-m): 0.313262 + 0.693147 + 2.126928, over 4
    assert value == pytest.approx((0.31326168751822286 + 0.6931471805599453 + 2.1269280110429727) / 4)
    assert value == pytest.approx(0.7833342197802852)
    assert {k: float(v) for k, v in metrics.items()} == {"pairs": 3.0, "accuracy_sum": 1.0, "margin_sum": -1.0}
    loss.backward()  # dL/dr_c = -sigmoid(-m) / 4
    assert chosen.grad.tolist() == pytest.approx([-0.2689414213699951 / 4, -0.5 / 4, -0.8807970779778823 / 4])


def test_bradley_terry_loss_is_additive_and_finite_for_huge_margins():
    chosen, rejected = torch.tensor([3.0, -1000.0, 0.5, 2.0]), torch.tensor([1.0, 0.0, 0.5, -2.0])
    whole, _ = bradley_terry_loss(chosen, rejected, 4.0)
    halves = [bradley_terry_loss(chosen[s], rejected[s], 4.0)[0] for s in (slice(0, 2), slice(2, 4))]
    assert float(sum(halves)) == pytest.approx(float(whole))
    assert math.isfinite(float(whole)) and float(whole) == pytest.approx(
        (math.log1p(math.exp(-2)) + 1000.0 + math.log(2) + math.log1p(math.exp(-4))) / 4, rel=1e-6
    )
    with pytest.raises(ValueError, match="normaliser"):
        bradley_terry_loss(chosen, rejected, 0.0)
    with pytest.raises(ValueError, match=r"\[N\]"):
        bradley_terry_loss(chosen[None], rejected[None], 4.0)


# --------------------------------------------------------------------------- the engine


def test_the_score_head_sits_on_the_causal_lm_weights(base):
    from transformers import AutoModelForCausalLM

    causal = AutoModelForCausalLM.from_pretrained(base)
    rm = load_reward_model(base, seed=0)
    assert type(rm).__name__ == "Qwen3ForSequenceClassification" and rm.score.weight.shape == (1, 64)
    assert torch.equal(rm.model.embed_tokens.weight, causal.model.embed_tokens.weight)
    assert torch.equal(rm.score.weight, load_reward_model(base, seed=0).score.weight)  # seeded head
    assert not torch.equal(rm.score.weight, load_reward_model(base, seed=1).score.weight)
    state = torch.get_rng_state()
    load_reward_model(base, seed=2)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def test_encoding_keeps_the_response_and_microbatches_do_not_change_gradients(base):
    rm = _backend().reward_model(base, OptimConfig(lr=1e-3), 1, max_length=24)
    prompt = [{"role": "user", "content": "Answer this: what colour is grass? " * 5}]
    ids = rm.encode(prompt, "Grass is green.")
    full = rm.tokenizer(render([*prompt, {"role": "assistant", "content": "Grass is green."}]))["input_ids"]
    assert len(full) > 24 and ids == full[-24:]  # the start of the prompt went, the response stayed
    pairs = [(rm.encode(prompt, f"Grass is {c}."), rm.encode(prompt, "No.")) for c in ("green", "red", "blue")]
    grads = []
    for budget in (10_000, 48):  # all pairs in one forward pass, then one pair per pass
        rm.token_budget = budget
        metrics = rm.forward_backward(pairs, 3.0)
        grads.append(torch.cat([p.grad.flatten() for p in rm.model.parameters() if p.grad is not None]))
        rm.optimizer.zero_grad(set_to_none=True)
        assert metrics["pairs"] == 3.0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_a_non_finite_gradient_is_not_applied(base):
    rm = _backend().reward_model(base, OptimConfig(lr=1e-3), 5)
    before = {k: v.clone() for k, v in rm.model.state_dict().items()}
    rm.forward_backward([(rm.encode([{"role": "user", "content": "Hi"}], "Hello."), [1, 2, 3])], 1.0)
    rm.model.score.weight.grad[0, 0] = float("nan")
    assert rm.optim_step()["nonfinite_update"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in rm.model.state_dict().items())
    assert rm.optim_step()["skipped_update"] == 1.0  # nothing accumulated since


# --------------------------------------------------------------------------- the stage


def test_a_tiny_reward_model_learns_held_out_preferences(trained):
    import json

    result = json.loads((trained.parent / EVAL_FILE).read_text())
    assert result["pairs"] == 200
    assert result["accuracy"] > MIN_ACCURACY, result
    rows = read_metrics(trained.parent / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [10, 20, 30, 40]
    assert rows[-1]["eval_accuracy"] == result["accuracy"]
    losses = [r["loss"] for r in rows]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert set(result["by_rejected_kind"]) == {
        "wrong_fact",
        "missing",
        "too_long",
        "wrong_format",
        "off_topic",
        "terse_wrong",
    }


def test_the_saved_reward_model_loads_in_plain_transformers_with_the_same_scores(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    plain = AutoModelForSequenceClassification.from_pretrained(trained).eval()
    tokenizer = AutoTokenizer.from_pretrained(trained)
    assert plain.config.num_labels == 1 and plain.config.architectures == ["Qwen3ForSequenceClassification"]
    assert plain.config.pad_token_id == tokenizer.pad_token_id
    rm = _backend().reward_model(trained, OptimConfig(), 1, max_length=256)
    pairs = read_pairs(DataConfig(task="chat", n=4), "test")
    texts = [render([*p.prompt, r]) for p in pairs for r in (p.chosen, p.rejected)]
    ours = rm.scores(texts)
    with torch.no_grad():
        one_by_one = [float(plain(**tokenizer(t, return_tensors="pt")).logits[0, 0]) for t in texts]
        tokenizer.padding_side = "right"
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        padded = plain(**batch).logits[:, 0].tolist()
    assert ours == pytest.approx(one_by_one, abs=1e-5)
    assert ours == pytest.approx(padded, abs=1e-5)
    assert ours == pytest.approx(rm.scores([rm.encode(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]))


def test_run_reward_model_resumes_to_identical_weights(base, tmp_path, capsys):
    stage = _stage(data=[DataConfig(task="chat", n=40)], steps=6, pairs_per_step=8, save_every=3, keep_last=1)
    folder = run_reward_model(stage, _backend(), base, tmp_path)
    uninterrupted = load_file(folder / "model.safetensors")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000003"]
    shutil.rmtree(folder)  # as if killed after the step-3 checkpoint
    capsys.readouterr()
    resumed = load_file(run_reward_model(stage, _backend(), base, tmp_path) / "model.safetensors")
    assert "resuming at step 3/6" in capsys.readouterr().out
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


# --------------------------------------------------------------------------- the reward


def _trajectory(text: str, *, truncated: bool = False) -> Trajectory:
    return Trajectory(
        tokens=(1, 2),
        loss_mask=(0, 1),
        behaviour_logprobs=(0.0, -1.0),
        turns=((1, 2),),
        texts=(text,),
        truncated=truncated,
        domain="chat",
    )


def test_the_reward_model_reward_scores_trajectories_in_unit_range(trained):
    reward = build_reward("reward_model", RewardContext(backend=_backend()), model=str(trained), batch_size=3)
    pairs = read_pairs(DataConfig(task="chat", n=6), "test")
    groups = [
        TrajectoryGroup(
            Prompt(messages=p.prompt, spec={}, domain="chat"),
            (
                _trajectory(p.chosen["content"] + "<|im_end|>"),
                _trajectory(p.rejected["content"] + "<|im_end|>"),
                _trajectory(p.chosen["content"], truncated=True),
            ),
            index=i,
        )
        for i, p in enumerate(pairs)
    ]
    # in thinking mode (the prompt opened <think>) the reasoning is not the answer: the same content is scored
    think = [
        TrajectoryGroup(g.prompt, (_trajectory("let me see</think>" + g.trajectories[0].texts[0]),), thinking=True)
        for g in groups
    ]
    results = score_groups(reward, groups)
    rm = _backend().reward_model(trained, OptimConfig(), 1, max_length=1024)
    for (chosen, rejected, truncated), pair in zip(results, pairs, strict=True):
        for result in (chosen, rejected):
            assert 0.0 <= result.score <= 1.0
            assert result.score == pytest.approx(1 / (1 + math.exp(-result.info["rm_score"])))
        assert truncated.score == 0.0 and truncated.info == {"reason": "truncated"}
        assert chosen.info["rm_score"] == pytest.approx(rm.scores([rm.encode(pair.prompt, pair.chosen)])[0], abs=1e-5)
    assert [r[0].score for r in score_groups(reward, think)] == pytest.approx([r[0].score for r in results])
    reward.close()
    with pytest.raises(RuntimeError, match="closed"):
        reward(groups)
    with pytest.raises(ValueError, match="needs a backend"):
        build_reward("reward_model", RewardContext(), model=str(trained))


def test_a_causal_lm_folder_is_refused_as_a_reward_model(base, trained, tmp_path):
    """A causal LM would load with a fresh random score head: random rewards, no error. It is refused."""
    with pytest.raises(ValueError, match="not a one-label AutoModelForSequenceClassification"):
        build_reward("reward_model", RewardContext(backend=_backend()), model=str(base))
    with pytest.raises(ValueError, match="no model folder"):
        build_reward("reward_model", RewardContext(backend=_backend()), model=str(tmp_path / "absent"))
    build_reward("reward_model", RewardContext(backend=_backend()), model=str(trained)).close()


def test_a_frozen_bf16_reward_model_keeps_an_fp32_head_and_close_scores(trained):
    pairs = read_pairs(DataConfig(task="chat", n=8), "test")
    exact = _backend().reward_model(trained, OptimConfig(), 1)
    rows = [exact.encode(p.prompt, p.chosen) for p in pairs]
    expected = exact.scores(rows)
    half = LocalBackend(EngineConfig(), ModelConfig(dtype="bfloat16")).reward_model(trained, OptimConfig(), 1)
    half.freeze()
    dtypes = {n: p.dtype for n, p in half.model.named_parameters()}
    assert dtypes.pop("score.weight") == torch.float32 and set(dtypes.values()) == {torch.bfloat16}
    assert not any(p.requires_grad for p in half.model.parameters())
    assert half.scores(rows) == pytest.approx(expected, abs=0.05)

"""The local policy: fp32 master weights under bf16, eval-mode numerics, the MoE router loss, exact resume."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from cascade_rl.config import EngineConfig, ModelConfig, OptimConfig
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.engines.base import TrainBatch, TrainSequence
from cascade_rl.engines.local import LocalPolicy, LocalScorer, OptimSettings
from cascade_rl.model.load import save
from cascade_rl.model.tiny import build_tiny
from tests.conftest import TINY_QWEN3, small_corpus


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return small_corpus()


def _saved(tmp_path, corpus, family: str = "qwen3", **overrides) -> str:
    model, tokenizer = build_tiny(family, corpus=corpus, vocab_size=600, **{**TINY_QWEN3, **overrides})
    return str(save(model, tokenizer, tmp_path / family))


def _sequence(n: int = 24, prompt: int = 4) -> TrainSequence:
    return TrainSequence(list(range(20, 20 + n)), [0] * prompt + [1] * (n - prompt))


def _step(policy: LocalPolicy, seqs: list[TrainSequence]) -> dict[str, float]:
    tokens = float(sum(sum(s.mask[1:]) for s in seqs))
    return policy.forward_backward(TrainBatch(seqs, tokens, len(seqs)), "nll") | policy.optim_step()


def test_a_bf16_policy_keeps_fp32_master_weights_that_move(tmp_path, corpus):
    """dtype bfloat16 (what ``auto`` picks on a GPU): one step at lr 3e-6 must move the weights."""
    folder = _saved(tmp_path, corpus)
    backend = LocalBackend(EngineConfig(), ModelConfig(spec=folder, dtype="bfloat16"))
    policy = backend.policy(folder, OptimConfig(lr=3e-6, betas=(0.9, 0.999), weight_decay=0.0), total_steps=5)
    assert policy.compute_dtype == torch.bfloat16
    assert {p.dtype for p in policy.model.parameters()} == {torch.float32}
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.ndim == 2}
    _step(policy, [_sequence()])
    moved = [float((p.detach() != before[n]).float().mean()) for n, p in policy.model.named_parameters() if n in before]
    assert min(moved) > 0.9, moved  # Adam's first step is ~lr * sign(g): every weight with a gradient moves
    # why bf16 weights would not: a 3e-6 step is far below bf16's spacing near N(0, 0.02) weights (~1e-4)
    w = before["model.layers.0.self_attn.q_proj.weight"].to(torch.bfloat16)
    assert float(((w.float() + 3e-6).to(torch.bfloat16) == w).float().mean()) > 0.9
    # the stage's output folder is bf16 (what the recipe asked for); the resume state keeps the fp32 master
    policy.save(tmp_path / "out")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").dtype == torch.bfloat16
    policy.save_state(tmp_path / "state")
    master = AutoModelForCausalLM.from_pretrained(tmp_path / "state" / "model", dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(master.parameters(), policy.model.parameters(), strict=True))


def test_the_training_forward_runs_without_dropout(tmp_path, corpus):
    """The on-policy ratio pi_train / pi_inf is 1 only if the trainer sees the sampler's (eval-mode) numerics."""
    folder = _saved(tmp_path, corpus, attention_dropout=0.5)
    backend = LocalBackend(EngineConfig(), ModelConfig(spec=folder))
    policy = backend.policy(folder, OptimConfig(lr=1e-3), total_steps=1)
    assert policy.model.config.attention_dropout == 0.5
    seq = _sequence()
    grads = []
    for _ in range(2):
        metrics = policy.forward_backward(TrainBatch([seq], 20.0, 1.0), "nll")
        grads.append([p.grad.clone() for p in policy.model.parameters() if p.grad is not None])
        policy.optimizer.zero_grad(set_to_none=True)
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))  # dropout would make them differ
    scored = LocalScorer(policy.model).logprobs([seq])[0]
    assert metrics["nll_sum"] == pytest.approx(-sum(scored), abs=1e-4)


def test_moe_router_load_balancing_loss_is_trained(tmp_path, corpus):
    """The trainer bypasses the CausalLM forward; it must add router_aux_loss_coef x aux loss as that forward does."""
    tiny = dict(moe_intermediate_size=32, router_aux_loss_coef=0.5)
    model, tokenizer = build_tiny("qwen3_moe", corpus=corpus, vocab_size=600, **{**TINY_QWEN3, **tiny})
    reference = copy.deepcopy(model)
    policy = LocalPolicy(model, tokenizer, OptimSettings(lr=1e-3, total_steps=1), layout="padded")
    assert policy.router_aux_coef == 0.5
    n = 24
    seq = TrainSequence(list(range(20, 20 + n)), [1] * n)  # every position after the first is supervised
    metrics = policy.forward_backward(TrainBatch([seq], n - 1.0, 1.0), "nll")
    ids = torch.tensor([seq.tokens])
    out = reference(input_ids=ids, labels=ids, output_router_logits=True)  # mean CE + 0.5 * aux, as HF trains
    out.loss.backward()
    assert metrics["router_aux_loss"] == pytest.approx(float(out.aux_loss.detach()), abs=1e-6)
    ours = dict(model.named_parameters())
    router = [n for n in ours if n.endswith("mlp.gate.weight")]
    assert router
    for name, p in reference.named_parameters():
        assert torch.allclose(ours[name].grad, p.grad, atol=1e-6), name
    # without the term the routers' gradients would be different
    policy.optimizer.zero_grad(set_to_none=True)
    policy.router_aux_coef = 0.0
    policy.forward_backward(TrainBatch([seq], n - 1.0, 1.0), "nll")
    assert not torch.allclose(ours[router[0]].grad, dict(reference.named_parameters())[router[0]].grad, atol=1e-6)


def test_frozen_routers_get_no_load_balancing_loss(tmp_path, corpus):
    tiny = dict(moe_intermediate_size=32, router_aux_loss_coef=0.5)
    model, tokenizer = build_tiny("qwen3_moe", corpus=corpus, vocab_size=600, **{**TINY_QWEN3, **tiny})
    for name, p in model.named_parameters():
        p.requires_grad_(not name.endswith("mlp.gate.weight"))
    assert LocalPolicy(model, tokenizer, OptimSettings(lr=1e-3, total_steps=1)).router_aux_coef == 0.0


def test_save_state_then_load_state_resumes_bit_for_bit(tmp_path, corpus):
    folder = _saved(tmp_path, corpus)
    backend = LocalBackend(EngineConfig(), ModelConfig(spec=folder))
    optim = OptimConfig(lr=1e-3, warmup_steps=2, min_lr=1e-4)
    seqs = [[_sequence(16 + i)] for i in range(4)]

    straight = backend.policy(folder, optim, total_steps=4)
    for batch in seqs:
        _step(straight, batch)

    first = backend.policy(folder, optim, total_steps=4)
    for batch in seqs[:2]:
        _step(first, batch)
    first.save_state(tmp_path / "ckpt")
    resumed = backend.policy(folder, optim, total_steps=4)  # fresh weights, optimizer and schedule
    resumed.load_state(tmp_path / "ckpt")
    assert resumed.scheduler.last_epoch == 2
    for batch in seqs[2:]:
        _step(resumed, batch)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_engine_sizes_come_from_the_recipe(tmp_path, corpus):
    folder = _saved(tmp_path, corpus)
    backend = LocalBackend(
        EngineConfig(microbatch_tokens=1536, decode_batch=24, layout="padded"), ModelConfig(spec=folder)
    )
    policy = backend.policy(folder, OptimConfig(lr=1e-3), total_steps=1)
    assert (policy.token_budget, policy.layout) == (1536, "padded")
    assert backend.generator(policy).batch_size == 24
    assert backend.policy(folder, OptimConfig(lr=1e-3), 1, microbatch_tokens=512).token_budget == 512  # SFT packs
    assert backend.scorer(folder).token_budget == 1536

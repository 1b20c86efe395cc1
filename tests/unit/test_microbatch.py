"""Micro-batch layouts: shared-prefix rows and scored-only LM head give the padded layout's numbers."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from cascade_rl.engines.base import TrainBatch, TrainSequence
from cascade_rl.engines.local import LocalPolicy, LocalScorer, OptimSettings, choose_layout
from cascade_rl.engines.microbatch import MicroBatch, _Row, _worth_extending, attention_pair_cost, make_microbatches
from cascade_rl.loops.objectives import base_sequence
from cascade_rl.model.tiny import tiny_config
from tests._traj import trajectory

TINY = {
    "qwen3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, head_dim=16),
    # no load-balancing loss: it counts a shared prefix once per row, padded rows once per sequence
    "qwen3_moe": dict(
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        head_dim=16,
        router_aux_loss_coef=0.0,
    ),
    "nemotron_h": dict(hidden_size=64, head_dim=16, mamba_num_heads=4, mamba_head_dim=16),
}


def tiny_model(family: str, tokenizer, attention: str = "sdpa") -> PreTrainedModel:
    config = tiny_config(family, tokenizer, **TINY[family])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attention)
    return model.eval()


def rollout_like(vocab_size: int, seed: int = 0) -> list[TrainSequence]:
    """Groups of rollouts (prompt unscored, completion scored) mixed with sequences that share nothing."""
    gen = torch.Generator().manual_seed(seed)

    def rand(n: int) -> list[int]:
        return torch.randint(10, vocab_size, (n,), generator=gen).tolist()

    seqs = []
    for g, (prompt_len, completions) in enumerate([(7, (5, 9, 1, 12)), (11, (6, 6)), (4, (20,))]):
        prompt = rand(prompt_len)
        for n in completions:
            seqs.append(TrainSequence(prompt + rand(n), [0] * prompt_len + [1] * n, group=g))
    # group 1's completions start alike: the shared prefix reaches into scored tokens
    seqs[5].tokens[11:14] = seqs[4].tokens[11:14]
    seqs[2].mask = [0] * len(seqs[2].tokens)  # an overlong-filtered rollout: nothing trained
    seqs.insert(3, TrainSequence(rand(9), [0, 0] + [1] * 7))  # an SFT sample: no group
    for i, seq in enumerate(seqs):
        seq.values["advantages"] = [float(i % 3 - 1)] * len(seq.tokens)
        seq.values["inf_logprobs"] = [-1.0] * len(seq.tokens)
    return seqs


def masked(scorer: LocalScorer, seqs: list[TrainSequence]) -> list[list[float]]:
    return scorer.logprobs(seqs)


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


OPTIM = OptimSettings(lr=1e-3, total_steps=1)


def gradients(policy: LocalPolicy, seqs: list[TrainSequence]) -> tuple[dict[str, torch.Tensor], float]:
    policy.optimizer.zero_grad(set_to_none=True)
    # GRPO without IcePop: L = -sum(A * logprob * mask) / 50
    metrics = policy.forward_backward(TrainBatch(seqs, 50.0, len(seqs)), "grpo", {"icepop": None})
    grads = {n: p.grad.detach().clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    policy.optimizer.zero_grad(set_to_none=True)
    return grads, metrics["entropy_sum"]


# --------------------------------------------------------------------------- layout structure


def test_shared_prefix_rows_hold_a_group_each(tokenizer):
    seqs = rollout_like(len(tokenizer))
    shared, *padded = make_microbatches(seqs, 4096, shared_prefix=True)
    assert shared.attention_mask is not None and shared.attention_mask.ndim == 4
    assert shared.indices == [0, 1, 2, 4, 5, 6]  # groups 0 and 1; the lone rollout and the SFT sample are padded
    assert sorted(i for mb in padded for i in mb.indices) == [3, 7]
    assert all(mb.attention_mask is not None and mb.attention_mask.ndim == 2 for mb in padded)

    # widest row first: group 0 (prompt 7 + 5 + 9 + 1 + 12), then group 1 (prompt 11 and 3 shared completion
    # tokens, then 3 + 3 of their own)
    assert tuple(shared.input_ids.shape) == (2, 34)
    assert shared.input_ids[1].tolist() == seqs[5].tokens + seqs[6].tokens[14:] + [0] * 14
    row, prompt = 0, seqs[0].tokens[:7]
    assert shared.input_ids[row, :21].tolist() == prompt + seqs[0].tokens[7:] + seqs[1].tokens[7:]
    assert shared.position_ids[row, :21].tolist() == [*range(12), *range(7, 16)]  # each member right after the prompt
    mask = shared.attention_mask[row, 0]
    assert mask[13, :7].all() and not mask[13, 7:12].any() and mask[13, 12:14].all()  # prompt + itself only


def test_rollouts_of_a_prompt_share_a_group():
    seq = base_sequence(trajectory([1, 2, 3], [4, 5], [-0.1, -0.2], reward=1.0), 3, overlong_filtering=True)
    assert seq.group == 3 and seq.tokens == [1, 2, 3, 4, 5] and seq.mask == [0, 0, 0, 1, 1]
    assert seq.values["inf_logprobs"] == [0.0, 0.0, 0.0, -0.1, -0.2]


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("family", "attention"), [("qwen3", "sdpa"), ("qwen3", "eager"), ("qwen3_moe", "sdpa")])
def test_shared_prefix_equals_padded_rows(family, attention, tokenizer):
    model = tiny_model(family, tokenizer, attention)
    seqs = rollout_like(len(tokenizer))
    shared = LocalPolicy(model, tokenizer, OPTIM, layout="shared_prefix")
    padded = LocalPolicy(model, tokenizer, OPTIM, layout="padded")
    assert any(mb.attention_mask is not None and mb.attention_mask.ndim == 4 for mb in shared.microbatches(seqs))

    alone = [masked(padded, [s])[0] for s in seqs]
    lp_diff = max_diff(masked(shared, seqs), alone)
    grads_shared, entropy_shared = gradients(shared, seqs)
    grads_padded, entropy_padded = gradients(padded, seqs)
    grad_diff = max(float((grads_shared[n] - grads_padded[n]).abs().max()) for n in grads_padded)
    print(f"{family}/{attention}: shared-prefix vs alone log-prob {lp_diff:.2e}, vs padded grad {grad_diff:.2e}")
    assert lp_diff < 1e-5
    assert grads_shared.keys() == grads_padded.keys()
    assert max(float(g.abs().max()) for g in grads_padded.values()) > 1e-3
    assert grad_diff < 1e-6
    assert entropy_shared == pytest.approx(entropy_padded, abs=1e-4)


def test_shared_prefix_members_do_not_see_each_other(tokenizer):
    model = tiny_model("qwen3", tokenizer)
    seqs = [replace(s, mask=[1] * len(s.tokens)) for s in rollout_like(len(tokenizer)) if s.group == 0]
    scorer = LocalScorer(model, layout="shared_prefix")
    (mb,) = scorer.microbatches(seqs)
    alone = [masked(scorer, [s])[0] for s in seqs]
    with torch.no_grad():
        ok = scorer.forward_SL(mb, 1.0)[0]
        # Control: a plain causal mask lets every member attend to the members before it.
        leaky = replace(mb, attention_mask=torch.ones_like(mb.attention_mask).tril())
        bad = scorer.forward_SL(leaky, 1.0)[0]
    rows = lambda t: [t[s, : len(seqs[i].tokens)].tolist() for s, i in enumerate(mb.indices)]  # noqa: E731
    assert max_diff(rows(ok), alone) < 1e-5
    assert max_diff(rows(bad)[:1], alone[:1]) < 1e-5  # the first member has nobody before it
    assert max_diff(rows(bad)[1:], alone[1:]) > 1e-2


@pytest.mark.parametrize(
    ("family", "layout"),
    [("qwen3", "packed"), ("qwen3", "padded"), ("qwen3", "shared_prefix"), ("nemotron_h", "padded")],
)
def test_scored_only_head_equals_full_head(family, layout, tokenizer):
    """The head on scored positions only gives the full head's log-probs and entropies there, 0 elsewhere."""
    model = tiny_model(family, tokenizer)
    seqs = rollout_like(len(tokenizer))
    scorer = LocalScorer(model, layout=layout)
    options = dict(packed=layout == "packed", shared_prefix=layout == "shared_prefix", pad_id=scorer.pad_id)
    only = make_microbatches(seqs, 4096, scored_only=True, **options)
    full = make_microbatches(seqs, 4096, scored_only=False, **options)
    with torch.no_grad():
        for a, b in zip(only, full, strict=True):
            assert a.indices == b.indices and a.rows_N.numel() < b.rows_N.numel()
            lp_a, h_a, _ = scorer.forward_SL(a, 1.0, with_entropy=True)
            lp_b, h_b, _ = scorer.forward_SL(b, 1.0, with_entropy=True)
            mask = torch.zeros_like(lp_a)
            for s, i in enumerate(a.indices):
                mask[s, 1 : len(seqs[i].tokens)] = torch.tensor(seqs[i].mask[1:], dtype=torch.float32)
            assert torch.equal(a.scored_SL, mask.bool())
            assert float((lp_a - lp_b * mask).abs().max()) < 1e-6
            assert float((h_a - h_b * mask).abs().max()) < 1e-6


# --------------------------------------------------------------------------- when sharing does not apply


def test_budget_splits_a_group_and_stays_exact(tokenizer):
    model = tiny_model("qwen3", tokenizer)
    seqs = rollout_like(len(tokenizer))
    small = LocalScorer(model, token_budget=24, layout="shared_prefix")
    mbs = small.microbatches(seqs)
    group0 = [mb for mb in mbs if 0 in mb.indices or 1 in mb.indices]
    assert all(mb.input_ids.shape[1] <= 24 for mb in group0)
    assert sorted(i for mb in mbs for i in mb.indices) == list(range(len(seqs)))
    padded = LocalScorer(model, layout="padded")
    assert max_diff(masked(small, seqs), masked(padded, seqs)) < 1e-5


def test_dense_attention_cost_limits_rows():
    """Long completions of a big model: the masked pairs of a second member cost more than its prompt."""
    big = SimpleNamespace(hidden_size=4096, num_attention_heads=32, head_dim=128, num_key_value_heads=8)
    cost = attention_pair_cost(SimpleNamespace(**vars(big), intermediate_size=12288))
    assert 1e-5 < cost < 1e-4
    assert not _worth_extending(_Row(prefix=500, members=[0], width=4500), 4000, 1 << 20, cost)
    assert _worth_extending(_Row(prefix=500, members=[0], width=532), 32, 1 << 20, cost)  # short answers share
    assert not _worth_extending(_Row(prefix=500, members=[0], width=532), 32, 560, cost)  # but not past the budget


def test_a_wrong_group_hint_costs_speed_not_numbers(tokenizer):
    model = tiny_model("qwen3", tokenizer)
    seqs = [replace(s, group=0) for s in rollout_like(len(tokenizer))]  # unrelated sequences in one group
    (mb,) = make_microbatches(seqs, 4096, shared_prefix=True)
    assert mb.attention_mask.ndim == 4 and mb.input_ids.shape[0] == 1
    scorer = LocalScorer(model, layout="shared_prefix")
    assert max_diff(masked(scorer, seqs), masked(LocalScorer(model, layout="padded"), seqs)) < 1e-5


def test_ungrouped_sequences_keep_the_padded_layout(tokenizer):
    seqs = [replace(s, group=None) for s in rollout_like(len(tokenizer))]
    shared = make_microbatches(seqs, 4096, shared_prefix=True)
    padded = make_microbatches(seqs, 4096)
    assert len(shared) == len(padded)
    for a, b in zip(shared, padded, strict=True):
        for name in MicroBatch.__dataclass_fields__:
            x, y = getattr(a, name), getattr(b, name)
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def test_a_batch_with_nothing_scored_skips_the_model(tokenizer):
    model = tiny_model("qwen3", tokenizer)
    seqs = [replace(s, mask=[0] * len(s.tokens)) for s in rollout_like(len(tokenizer))]
    policy = LocalPolicy(model, tokenizer, OPTIM)
    metrics = policy.forward_backward(TrainBatch(seqs, 1.0, 1.0), "grpo", {"icepop": None})
    assert metrics["loss"] == 0.0
    assert all(p.grad is None for p in model.parameters())
    assert all(set(row) == {0.0} for row in policy.logprobs(seqs))


def test_auto_layout_by_attention_and_model():
    def fake(model_type: str, attention: str) -> PreTrainedModel:
        return SimpleNamespace(config=SimpleNamespace(model_type=model_type, _attn_implementation=attention))  # type: ignore[return-value]

    assert choose_layout(fake("qwen3", "sdpa")) == "shared_prefix"
    assert choose_layout(fake("qwen3_moe", "eager")) == "shared_prefix"
    assert choose_layout(fake("qwen3", "flash_attention_2")) == "packed"
    assert choose_layout(fake("qwen3", "flex_attention")) == "padded"
    assert choose_layout(fake("nemotron_h", "sdpa")) == "padded"
    with pytest.raises(ValueError, match="Mamba"):
        choose_layout(fake("nemotron_h", "sdpa"), "shared_prefix")
    with pytest.raises(ValueError, match="4D attention mask"):
        choose_layout(fake("qwen3", "flash_attention_2"), "shared_prefix")
    with pytest.raises(ValueError, match="layout must be"):
        choose_layout(fake("qwen3", "sdpa"), "ragged")

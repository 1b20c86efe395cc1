"""The local engines: sampling (seeded, stop, top-k / top-p), log-prob parity with the trainer."""

from __future__ import annotations

import pytest
import torch

from cascade_rl.chat import encode_prompt
from cascade_rl.engines.base import SamplingParams, TrainSequence
from cascade_rl.engines.local import LocalGenerator, LocalPolicy, LocalScorer, choose_layout, sample_next
from cascade_rl.model.tiny import build_tiny
from tests.conftest import small_corpus

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
}


@pytest.fixture(scope="module", params=["qwen3", "qwen3_moe", "nemotron_h"])
def family_model(request):
    overrides = dict(TINY)
    if request.param == "nemotron_h":
        overrides = {"hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
    model, tok = build_tiny(request.param, corpus=small_corpus(), vocab_size=600, **overrides)
    from cascade_rl.model.load import prepare_tokenizer

    return request.param, model.eval(), prepare_tokenizer(tok)


def _prompts(tok) -> list[list[int]]:
    prompts = [
        encode_prompt(tok, [{"role": "user", "content": f"What is {a} + 3?"}], enable_thinking=False) for a in range(5)
    ]
    prompts[0] = prompts[0] + prompts[0][:4]  # unequal lengths: left padding is exercised
    return prompts


def test_generation_is_seeded_and_logprobs_match_the_trainer(family_model):
    family, model, tok = family_model
    gen = LocalGenerator(model, batch_size=8)
    params = SamplingParams(n=3, max_new_tokens=12, stop_token_ids=(tok.eos_token_id,), seed=7)
    prompts = _prompts(tok)
    first, again = gen.generate(prompts, params), gen.generate(prompts, params)
    assert [[c.tokens for c in g] for g in first] == [[c.tokens for c in g] for g in again]
    assert [len(g) for g in first] == [3] * 5
    other = gen.generate(prompts, SamplingParams(n=3, max_new_tokens=12, stop_token_ids=(tok.eos_token_id,), seed=8))
    assert [[c.tokens for c in g] for g in first] != [[c.tokens for c in g] for g in other]
    seqs, expected = [], []
    for p, group in zip(prompts, first, strict=True):
        for c in group:
            assert c.finish_reason in ("stop", "length")
            assert (c.finish_reason == "stop") == (c.tokens[-1] == tok.eos_token_id)
            seqs.append(TrainSequence(list(p) + list(c.tokens), [0] * len(p) + [1] * len(c.tokens)))
            expected.append(c.logprobs)
    scored = LocalScorer(model).logprobs(seqs)
    diff = max(
        abs(a - b)
        for s, lp, exp in zip(seqs, scored, expected, strict=True)
        for a, b in zip(lp[len(s.tokens) - len(exp) :], exp, strict=True)
    )
    print(f"{family}: max |generator - trainer| log-prob = {diff:.2e}")
    assert diff < 1e-4


def test_sampling_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        token, _ = sample_next(logits, SamplingParams(top_k=2), gen)
        assert int(token) in (0, 1)
    # top_p 0.5: p = softmax = [0.61, 0.22, 0.14, 0.03] -> only token 0 is needed to reach 0.5
    token, logprob = sample_next(logits, SamplingParams(top_p=0.5), gen)
    assert int(token) == 0 and float(logprob) == pytest.approx(0.0)
    token, logprob = sample_next(logits, SamplingParams(temperature=0), gen)
    assert int(token) == 0 and float(logprob) == pytest.approx(float(torch.log_softmax(logits, -1)[0, 0]))


def test_nemotron_h_refuses_packing(family_model):
    family, model, _ = family_model
    if family == "nemotron_h":
        with pytest.raises(ValueError, match="carries state along the sequence"):
            choose_layout(model, "packed")
        assert choose_layout(model, "auto") == "padded"
    else:
        assert choose_layout(model, "packed") == "packed"


def test_frozen_parameters_are_not_updated(family_model):
    from cascade_rl.config import OptimConfig
    from cascade_rl.loops.common import build_policy

    family, model, tok = family_model
    if family != "qwen3":
        pytest.skip("one family is enough for the optimizer wiring")
    import copy

    model = copy.deepcopy(model)
    frozen = next(n for n, _ in model.named_parameters() if n.endswith("q_proj.weight"))
    trained = frozen.replace("q_proj", "k_proj")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in (frozen, trained)}
    policy: LocalPolicy = build_policy(model, tok, OptimConfig(lr=1e-2, freeze=[r"q_proj\.weight$"]), 1, 512)
    seq = TrainSequence(list(range(10, 30)), [0] * 5 + [1] * 15)
    from cascade_rl.engines.base import TrainBatch

    policy.forward_backward(TrainBatch([seq], 15.0, 1.0), lambda lp, t: ((-(lp * t["mask"]).sum() / 15.0), {}))
    policy.optim_step()
    params = dict(model.named_parameters())
    assert torch.equal(params[frozen], before[frozen])
    assert not torch.equal(params[trained], before[trained])

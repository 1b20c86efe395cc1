"""The local engines: sampling (seeded, stop, top-k / top-p), log-prob parity with the trainer."""

from __future__ import annotations

import pytest
import torch

from cascade_rl.chat import encode_prompt
from cascade_rl.engines.base import SamplingParams, TrainBatch, TrainSequence
from cascade_rl.engines.local import (
    LocalGenerator,
    LocalPolicy,
    LocalScorer,
    OptimSettings,
    choose_layout,
    sample_next,
)
from cascade_rl.engines.sampling import inverse_cdf_sample
from cascade_rl.model.tiny import build_tiny
from tests.conftest import TINY_QWEN3 as TINY
from tests.conftest import small_corpus


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
    assert diff < 1e-5


def _tokens_and_logprobs(completions):
    return [[c.tokens for c in g] for g in completions], [lp for g in completions for c in g for lp in c.logprobs]


@pytest.mark.parametrize("batch_size", [8, 4])  # 4 rows per chunk with n = 3: groups straddle chunks
def test_each_prompt_is_prefilled_once(family_model, batch_size, monkeypatch):
    """Copying a prompt's cache rows gives what prefilling every row gives; a cache that cannot copy
    rows falls back to the per-row prefill."""
    _, model, tok = family_model
    params = SamplingParams(n=3, max_new_tokens=8, stop_token_ids=(tok.eos_token_id,), seed=3)
    shared = LocalGenerator(model, batch_size=batch_size)
    assert shared._last_logits_only  # prefill projects the last position only
    tokens, logprobs = _tokens_and_logprobs(shared.generate(_prompts(tok), params))
    assert shared._copy_cache_rows  # every family's cache (Mamba states included) copied its rows
    per_row = LocalGenerator(model, batch_size=batch_size)
    per_row._copy_cache_rows = False
    tokens_ref, logprobs_ref = _tokens_and_logprobs(per_row.generate(_prompts(tok), params))
    assert tokens == tokens_ref
    assert max(abs(a - b) for a, b in zip(logprobs, logprobs_ref, strict=True)) < 1e-5

    from transformers.cache_utils import Cache

    def unsupported(self, beam_idx):
        raise NotImplementedError

    monkeypatch.setattr(Cache, "reorder_cache", unsupported)
    fallback = LocalGenerator(model, batch_size=batch_size)
    assert _tokens_and_logprobs(fallback.generate(_prompts(tok), params))[0] == tokens_ref
    assert not fallback._copy_cache_rows


def test_finished_rows_leave_the_decode_batch_without_changing_any_sample(family_model, monkeypatch):
    """Rows that stopped are dropped from the cache as the batch thins out; every row's tokens are what the
    full batch would have sampled, since each row's uniform draw does not depend on the batch."""
    _, model, tok = family_model
    # Half the vocabulary stops a row: rows finish at many different steps.
    params = SamplingParams(n=3, max_new_tokens=10, stop_token_ids=tuple(range(300)), seed=5)
    kept: list[int] = []
    real_keep = LocalGenerator._keep_rows

    def spy(self, state, keep):
        kept.append(len(keep))
        return real_keep(self, state, keep)

    monkeypatch.setattr(LocalGenerator, "_keep_rows", spy)
    prompts = _prompts(tok)
    tokens, logprobs = _tokens_and_logprobs(LocalGenerator(model, batch_size=16).generate(prompts, params))
    assert kept and min(kept) < 15  # the batch of 15 rows shrank
    assert sorted({len(t) for g in tokens for t in g}) != [10]  # rows stopped at different steps
    monkeypatch.setattr(LocalGenerator, "_keep_rows", lambda self, state, keep: False)
    tokens_ref, logprobs_ref = _tokens_and_logprobs(LocalGenerator(model, batch_size=16).generate(prompts, params))
    assert tokens == tokens_ref
    assert max(abs(a - b) for a, b in zip(logprobs, logprobs_ref, strict=True)) < 1e-5


def test_inverse_cdf_sampling_follows_the_distribution():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    draws = inverse_cdf_sample(probs.expand(40_000, -1), torch.rand(40_000, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(draws, minlength=6).float() / len(draws)
    assert float((freq - probs).abs().max()) < 0.01  # ~4 standard errors
    assert freq[1] == 0 and freq[5] == 0  # zero-probability tokens are never drawn
    # The point is the fraction of the row's total mass: cumulative [0.5, 0.5, 0.8, 0.95, 1.0, 1.0]
    assert inverse_cdf_sample(probs.expand(4, -1), torch.tensor([0.0, 0.49, 0.5, 0.96])).tolist() == [0, 0, 2, 4]


def test_inverse_cdf_sampling_at_the_top_of_the_cdf():
    """A uniform point that rounds up to the total mass still lands on a token with mass, not the zero tail."""
    probs = torch.tensor([[0.25, 0.75, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert inverse_cdf_sample(probs, torch.ones(2)).tolist() == [1, 0]
    assert inverse_cdf_sample(probs[:, [2, 0, 1, 3]], torch.zeros(2)).tolist() == [1, 1]


def test_sampling_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    points = torch.rand(50, 1, generator=torch.Generator().manual_seed(0))
    for point in points:
        token, _ = sample_next(logits, SamplingParams(top_k=2), point)
        assert int(token) in (0, 1)
    # top_p 0.5: p = softmax = [0.61, 0.22, 0.14, 0.03] -> only token 0 is needed to reach 0.5
    token, logprob = sample_next(logits, SamplingParams(top_p=0.5), torch.tensor([0.99]))
    assert int(token) == 0 and float(logprob) == pytest.approx(0.0)
    token, logprob = sample_next(logits, SamplingParams(temperature=0), torch.tensor([0.99]))
    assert int(token) == 0 and float(logprob) == pytest.approx(float(torch.log_softmax(logits, -1)[0, 0]))


def test_nemotron_h_refuses_packing(family_model):
    family, model, _ = family_model
    if family == "nemotron_h":
        with pytest.raises(ValueError, match="carries state along the sequence"):
            choose_layout(model, "packed")
        assert choose_layout(model, "auto") == "padded"
    else:
        assert choose_layout(model, "packed") == "packed"


def test_heads_that_transform_logits_are_refused():
    model, _ = build_tiny("qwen3", corpus=small_corpus(), vocab_size=600, **TINY)
    LocalScorer(model)  # a plain head: accepted
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match=r"applies final_logit_softcapping=30\.0 to its logits"):
        LocalScorer(model)
    model.config.final_logit_softcapping = None
    head = model.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.zeros(head.out_features))
    with pytest.raises(ValueError, match="a bias on the LM head"):
        LocalPolicy(model, None, OptimSettings(lr=1e-3, total_steps=1))


def test_frozen_parameters_are_not_updated(family_model, capsys):
    from cascade_rl.engines.backend import apply_freeze

    family, model, tok = family_model
    if family != "qwen3":
        pytest.skip("one family is enough for the optimizer wiring")
    import copy

    model = copy.deepcopy(model)
    frozen = next(n for n, _ in model.named_parameters() if n.endswith("q_proj.weight"))
    trained = frozen.replace("q_proj", "k_proj")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in (frozen, trained)}
    assert apply_freeze(model, [r"q_proj\.weight$"]) == 2  # one q_proj per layer
    assert "frozen: 2/" in capsys.readouterr().out  # the count is logged
    policy = LocalPolicy(model, tok, OptimSettings(lr=1e-2, total_steps=1), token_budget=512)
    seq = TrainSequence(list(range(10, 30)), [0] * 5 + [1] * 15)
    policy.forward_backward(TrainBatch([seq], 15.0, 1.0), "nll")
    policy.optim_step()
    params = dict(model.named_parameters())
    assert torch.equal(params[frozen], before[frozen])
    assert not torch.equal(params[trained], before[trained])


def test_a_freeze_pattern_that_matches_nothing_is_an_error(family_model):
    from cascade_rl.engines.backend import apply_freeze

    _, model, _ = family_model
    with pytest.raises(ValueError, match=r"optim.freeze: 'lm_head_typo' matched no parameter of"):
        apply_freeze(model, ["weight", "lm_head_typo"])


def test_kl_reference_scores_at_the_sampling_temperature(family_model):
    """Before any update the reference equals the policy: at T != 1 their log-probs (and the KL) match."""
    _, model, tok = family_model
    params = SamplingParams(n=2, max_new_tokens=6, temperature=0.7, stop_token_ids=(tok.eos_token_id,), seed=3)
    prompts = _prompts(tok)[1:3]
    seqs = [
        TrainSequence(list(p) + list(c.tokens), [0] * len(p) + [1] * len(c.tokens))
        for p, group in zip(prompts, LocalGenerator(model).generate(prompts, params), strict=True)
        for c in group
    ]
    scorer = LocalScorer(model)
    expected = [list(c.logprobs) for g in LocalGenerator(model).generate(prompts, params) for c in g]
    scored = [lp[len(s.tokens) - len(e) :] for s, lp, e in zip(seqs, scorer.logprobs(seqs, 0.7), expected, strict=True)]
    assert _max_diff(scored, expected) < 1e-5  # temperature is a call argument, and it is the sampler's
    # the mismatch a reference scoring at T=1 would have put into the KL
    assert _max_diff(scorer.logprobs(seqs, 0.7), scorer.logprobs(seqs, 1.0)) > 1e-3


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True))


def test_generator_stamps_the_synced_policy_version(family_model):
    family, model, tok = family_model
    if family != "qwen3":
        pytest.skip("one family is enough")
    policy = LocalPolicy(model, tok, OptimSettings(lr=1e-3, total_steps=1))
    generator = LocalGenerator(model)
    params = SamplingParams(n=2, max_new_tokens=3, seed=0)
    assert {c.policy_version for g in generator.generate(_prompts(tok)[:1], params) for c in g} == {0}
    generator.sync(policy, 7)
    assert {c.policy_version for g in generator.generate(_prompts(tok)[:1], params) for c in g} == {7}

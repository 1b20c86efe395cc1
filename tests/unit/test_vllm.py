"""The vLLM generator and scorer against the trainer's own log-probs (fp32, a tied-embedding model)."""

from __future__ import annotations

import pytest
import torch

from cascade_rl.engines.base import SamplingParams, TrainBatch, TrainSequence
from cascade_rl.engines.local import LocalPolicy
from cascade_rl.engines.training import OptimSettings
from cascade_rl.engines.vllm import VLLMGenerator, VLLMProcess, VLLMScorer, find_vllm_python
from cascade_rl.model.load import load, save
from cascade_rl.model.tiny import build_tiny
from tests.conftest import TINY_QWEN3, small_corpus

PROMPTS = [[5, 17, 33, 40], [7, 8, 9], [100, 200, 300, 400, 500]]
STOP = 2


def _vllm_python() -> str:
    try:
        return find_vllm_python()
    except ModuleNotFoundError as err:
        pytest.skip(f"{err} (make test builds it)")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    python = _vllm_python()
    model, tokenizer = build_tiny("qwen3", corpus=small_corpus(), vocab_size=600, **TINY_QWEN3)
    assert model.config.tie_word_embeddings
    folder = save(model, tokenizer, tmp_path_factory.mktemp("vllm") / "tiny")
    process = VLLMProcess(folder, python=python, threads=1, settings={"enforce_eager": True, "max_model_len": 256})
    module, tok = load(folder, dtype=torch.float32)
    policy = LocalPolicy(module, tok, OptimSettings(lr=5e-2, total_steps=4), token_budget=512)
    yield process, policy
    process.close()


def _rollouts(generator: VLLMGenerator, temperature: float) -> tuple[list[TrainSequence], list[list[float]]]:
    params = SamplingParams(n=3, temperature=temperature, max_new_tokens=12, stop_token_ids=(STOP,), seed=1)
    seqs, sampled = [], []
    for prompt, row in zip(PROMPTS, generator.generate(PROMPTS, params), strict=True):
        assert len(row) == 3
        for c in row:
            assert c.finish_reason == ("stop" if c.tokens[-1] == STOP else "length")
            seqs.append(TrainSequence(prompt + list(c.tokens), [0] * len(prompt) + [1] * len(c.tokens)))
            sampled.append(list(c.logprobs))
    return seqs, sampled


def _worst_gap(policy: LocalPolicy, seqs: list[TrainSequence], sampled: list[list[float]], t: float) -> float:
    scored = policy.logprobs(seqs, temperature=t)
    return max(
        abs(a - b)
        for seq, s, lp in zip(seqs, sampled, scored, strict=True)
        for a, b in zip(s, lp[-len(s) :], strict=True)
    )


def test_sampled_log_probs_are_the_trainers_at_the_sampling_temperature_before_and_after_sync(engine):
    process, policy = engine
    generator = VLLMGenerator(process)
    for t in (1.0, 0.7):
        seqs, sampled = _rollouts(generator, t)
        assert _worst_gap(policy, seqs, sampled, t) < 1e-5
    for _ in range(2):  # move the weights a long way, then push them into the running engine
        policy.forward_backward(TrainBatch(seqs, 30.0, len(seqs)), "nll")
        policy.optim_step()
    stale = _rollouts(generator, 1.0)
    assert _worst_gap(policy, *stale, 1.0) > 1e-2  # the engine still samples from the old weights
    generator.sync(policy, 3)
    for t in (1.0, 0.7):
        seqs, sampled = _rollouts(generator, t)
        assert _worst_gap(policy, seqs, sampled, t) < 1e-5  # a tied head that kept the old embedding would not
    assert {c.policy_version for row in generator.generate(PROMPTS, SamplingParams(max_new_tokens=2)) for c in row} == {
        3
    }


def test_the_vllm_scorer_gives_prompt_log_probs_at_t1_and_refuses_other_temperatures(engine):
    process, policy = engine
    generator = VLLMGenerator(process)
    generator.sync(policy, 0)
    seqs, _ = _rollouts(generator, 1.0)
    scorer = VLLMScorer(process)
    for got, want in zip(scorer.logprobs(seqs), policy.logprobs(seqs), strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="untempered"):
        scorer.logprobs(seqs, temperature=0.7)


def test_a_missing_vllm_interpreter_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"engine\.vllm\.python"):
        find_vllm_python(str(tmp_path / "nope" / "python"))

"""Evaluation spread over worker processes gives what one process gives: the same scores, the same samples."""

from __future__ import annotations

import json

import pytest

from cascade_rl.config import DataConfig, EngineConfig, EvalConfig, ModelConfig
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.eval.parallel import InProcessEvaluator, ProcessEvaluator, make_evaluator
from cascade_rl.model import load, save

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, tokenizer = load("tiny:qwen3", seed=0, vocab_size=512, **TINY)
    folder = tmp_path_factory.mktemp("model")
    save(model, tokenizer, folder)
    return folder


def _config(**fields) -> EvalConfig:
    domains = [DataConfig(task="math", n=3), DataConfig(task="instruct", n=3, thinking="off")]
    validation = [DataConfig(task="math", n=2, split="validation", thinking="off")]
    return EvalConfig(
        domains=domains, validation=validation, samples=2, max_new_tokens=6, thinking=[False, True], **fields
    )


def test_worker_processes_reproduce_the_in_process_evaluation(model_dir, tmp_path):
    config = _config()
    model = ModelConfig(spec=str(model_dir))
    one = InProcessEvaluator(LocalBackend(EngineConfig(), model))
    many = ProcessEvaluator(2, EngineConfig(), model)
    try:
        kwargs = {"validation": {"math"}, "label": "eval"}
        a = one.evaluate(model_dir, config, samples_file=tmp_path / "a.jsonl", **kwargs)
        b = many.evaluate(model_dir, config, samples_file=tmp_path / "b.jsonl", **kwargs)
    finally:
        many.close()
    # math in both modes, instruct direct only (thinking: off), the math validation set direct only
    assert [(s.key, s.split) for s in a] == [
        ("math:direct", "test"),
        ("math:think", "test"),
        ("instruct:direct", "test"),
        ("math:direct", "validation"),
    ]
    assert a == b
    rows_a = (tmp_path / "a.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "b.jsonl").read_text().splitlines()
    assert len(rows_a) == (3 * 2 + 3 + 2) * 2  # prompts x modes x samples
    assert [json.loads(r)["completion"] for r in rows_a] == [json.loads(r)["completion"] for r in rows_b]
    assert not list(tmp_path.glob("*.part*"))  # the workers' parts are folded into the one file


def test_processes_only_for_the_local_engine(model_dir):
    model = ModelConfig(spec=str(model_dir))
    backend = LocalBackend(EngineConfig(), model)
    assert isinstance(make_evaluator(_config(), EngineConfig(), model, backend), InProcessEvaluator)
    ray = EngineConfig(kind="ray")
    assert isinstance(make_evaluator(_config(processes=2), ray, model, backend), InProcessEvaluator)
    evaluator = make_evaluator(_config(processes=2), EngineConfig(), model, backend)
    assert isinstance(evaluator, ProcessEvaluator)
    evaluator.close()


def test_a_failed_job_fails_the_evaluation_and_leaves_no_partial_samples(model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"no_prompt": 1}\n')
    config = EvalConfig(domains=[DataConfig(task="math", n=3), DataConfig(path=str(bad))], samples=1, max_new_tokens=4)
    evaluator = ProcessEvaluator(2, EngineConfig(), ModelConfig(spec=str(model_dir)))
    try:
        with pytest.raises(Exception, match=r"bad\.jsonl"):
            evaluator.evaluate(model_dir, config, validation=set(), samples_file=tmp_path / "s.jsonl", label="eval")
    finally:
        evaluator.close()
    assert not list(tmp_path.glob("s.jsonl*"))  # neither the merged file nor the finished job's part

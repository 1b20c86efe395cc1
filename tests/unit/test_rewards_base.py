"""Registry, spec validation, truncation and batch verification."""

from __future__ import annotations

import pytest

from cascade_rl.rewards import RewardResult, SpecError, base, get_verifier, register, verify, verify_batch

MIXED = [
    ("\\boxed{12}<|im_end|>", {"type": "math", "answer": "12"}),
    ("Answer: C<|im_end|>", {"type": "mcqa", "answer": "B"}),
    ('{"a": 1}<|im_end|>', {"type": "json_schema", "schema": {"type": "object", "required": ["a"]}}),
    ("no comma here<|im_end|>", {"type": "instruct", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}),
    ("No tools needed.<|im_end|>", {"type": "tool_call", "expected": []}),
    ("```python\nprint(int(input()) * 2)\n```<|im_end|>", {"type": "code", "cases": [{"input": "4", "output": "8"}]}),
]
MIXED_SCORES = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_builtin_types_are_registered():
    for name in ("math", "mcqa", "instruct", "json_schema", "tool_call", "code"):
        assert callable(get_verifier(name))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "poetry"}, "unknown reward spec type 'poetry'; expected one of \\['code', "),
        ({"answer": "1"}, "field 'type' must be a string"),
        (["math"], "must be a mapping"),
    ],
)
def test_malformed_specs(spec, message):
    with pytest.raises(SpecError, match=message):
        verify("x", spec)


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


def test_reward_result_range():
    with pytest.raises(ValueError, match="score must be in"):
        RewardResult(1.5)


def test_verifier_crash_scores_zero(monkeypatch):
    class Boom:
        def check_spec(self, spec):
            pass

        def __call__(self, completion, spec):
            raise RuntimeError("bug")

    monkeypatch.setitem(base._REGISTRY, "boom", Boom())
    result = verify("x", {"type": "boom"})
    assert (result.score, result.info["reason"]) == (0.0, "verifier_error")


def test_a_sandbox_that_cannot_run_stops_instead_of_scoring_zero(monkeypatch):
    """Below the required isolation the code verifier must not quietly give every rollout 0."""
    from cascade_rl.rewards import sandbox

    monkeypatch.setenv(sandbox.MIN_ISOLATION_ENV, "namespaces")
    monkeypatch.setattr(sandbox, "available_isolation", lambda: ("session", "rlimits", "no_new_privs"))
    spec = {"type": "code", "cases": [{"input": "", "output": "1"}]}
    with pytest.raises(sandbox.SandboxError, match="below the required 'namespaces'"):
        verify("```python\nprint(1)\n```<|im_end|>", spec)


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register("math")(object)


def test_verify_batch_in_process_matches_verify():
    texts, specs = zip(*MIXED, strict=True)
    results = verify_batch(texts, specs)
    assert [r.score for r in results] == MIXED_SCORES
    truncated = verify_batch(texts, specs, truncated=[True, False, False, False, False, True])
    assert [r.score for r in truncated] == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]


def test_verify_batch_across_processes_keeps_order():
    texts, specs = zip(*(MIXED * 4), strict=True)
    assert [r.score for r in verify_batch(texts, specs, workers=2)] == MIXED_SCORES * 4


def test_verify_batch_validates_before_work():
    with pytest.raises(SpecError, match="unknown reward spec type"):
        verify_batch(["a", "b"], [{"type": "math", "answer": "1"}, {"type": "nope"}], workers=2)
    with pytest.raises(ValueError, match="same length"):
        verify_batch(["a"], [])


def test_verify_batch_judges_each_distinct_completion_once(monkeypatch):
    calls: list[str] = []
    real = base.verify

    def counting(text, spec, **kwargs):
        calls.append(text)
        return real(text, spec, **kwargs)

    monkeypatch.setattr(base, "verify", counting)
    spec = {"type": "math", "answer": "4"}
    texts = ["4<|im_end|>", "5<|im_end|>", "4<|im_end|>", "4<|im_end|>"]
    results = verify_batch(texts, [spec] * 4, [False, False, False, True])
    assert [r.score for r in results] == [1.0, 0.0, 1.0, 0.0]  # the truncated copy is judged on its own
    # three distinct (text, spec, truncated) keys: the fourth completion repeats the first
    assert sorted(calls) == ["4<|im_end|>", "4<|im_end|>", "5<|im_end|>"]
    results[0].info["x"] = 1
    assert "x" not in results[2].info  # duplicates do not share a mutable info dict

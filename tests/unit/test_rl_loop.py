"""The RL loop's seam: ``run_rl`` driven by a fake backend (a scripted generator, a recording policy).

Nothing here is a torch model: the loop must work with whatever engines a backend hands it, and the
learner half must receive exactly the tokens the generator was conditioned on and produced.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cascade_rl.chat import encode_prompt
from cascade_rl.config import DataConfig, OptimConfig, RLStage
from cascade_rl.engines.base import SamplingParams, TrainBatch, TrainSequence
from cascade_rl.loops.rl import run_rl
from cascade_rl.rewards.base import RewardResult
from cascade_rl.rewards.reward_fn import REWARD_FNS
from cascade_rl.types import Completion


class ScriptedGenerator:
    """Sample k of every prompt is the script's k-th completion; records prompts, params and syncs."""

    def __init__(self, script: list[tuple[list[int], list[float]]]) -> None:
        self.script, self.version = script, 0
        self.prompts: list[list[int]] = []
        self.syncs: list[int] = []
        self.params: list[SamplingParams] = []

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        self.prompts.extend(list(p) for p in prompts)
        self.params.append(params)
        return [
            [Completion(tuple(t), tuple(lp), "stop", policy_version=self.version) for t, lp in self.script[: params.n]]
            for _ in prompts
        ]

    def sync(self, policy: Any, version: int) -> None:
        self.syncs.append(version)
        self.version = version


class RecordingPolicy:
    """Records what the learner half hands it; its 'state' is the number of steps taken."""

    def __init__(self) -> None:
        self.calls: list[tuple[TrainBatch, str, dict]] = []
        self.steps = 0
        self.loaded: list[Path] = []

    def logprobs(self, sequences: Sequence[TrainSequence], temperature: float = 1.0) -> list[list[float]]:
        raise AssertionError("GRPO without a KL term scores nothing")

    def forward_backward(self, batch: TrainBatch, loss: str, config: Mapping[str, Any] | None = None) -> dict:
        self.calls.append((batch, loss, dict(config or {})))
        return {"loss": 0.0}

    def optim_step(self) -> dict[str, float]:
        self.steps += 1
        return {"lr": 1.0}

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"steps": self.steps}))

    def save_state(self, path: Path) -> None:
        (path / "policy.json").write_text(json.dumps({"steps": self.steps}))

    def load_state(self, path: Path) -> None:
        self.loaded.append(path)
        self.steps = json.loads((path / "policy.json").read_text())["steps"]


class FakeBackend:
    def __init__(self, tokenizer: Any, generator: ScriptedGenerator) -> None:
        self._tokenizer, self.generator_, self.policies = tokenizer, generator, []

    def tokenizer(self, model: Any) -> Any:
        return self._tokenizer

    def policy(self, model: Any, optim: OptimConfig, total_steps: int, **_: Any) -> RecordingPolicy:
        self.policies.append(RecordingPolicy())
        return self.policies[-1]

    def generator(self, policy: Any, **_: Any) -> ScriptedGenerator:
        return self.generator_

    def scorer(self, model: Any, **_: Any) -> Any:
        raise AssertionError("no reference or teacher in this stage")

    def eval_generator(self, model: Any, batch_size: int) -> Any:
        raise AssertionError("the RL loop does not evaluate")


class Says:
    """A group-level reward function: 1 when the answer says 'yes'."""

    def __init__(self, context: Any = None) -> None:
        pass

    def __call__(self, groups: Sequence[Any]) -> list[list[RewardResult]]:
        return [[RewardResult(float("yes" in t.final_text)) for t in g.trajectories] for g in groups]

    def close(self) -> None:
        pass


@pytest.fixture
def setup(tokenizer, monkeypatch):
    monkeypatch.setitem(REWARD_FNS, "says_yes", Says)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    script = [
        (tokenizer("yes", add_special_tokens=False)["input_ids"] + [im_end], None),
        (tokenizer("no!", add_special_tokens=False)["input_ids"] + [im_end], None),
    ]
    script = [(t, [-0.25 * (i + 1) for i in range(len(t))]) for t, _ in script]
    stage = RLStage(
        name="rl",
        prompts=[DataConfig(task="math", n=20)],
        steps=3,
        prompts_per_step=2,
        group_size=2,
        max_new_tokens=8,
        temperature=0.9,
        save_every=2,
        reward={"type": "says_yes"},
    )
    return stage, ScriptedGenerator(script), script


def test_the_loop_hands_the_learner_exactly_the_generated_tokens(tokenizer, setup, tmp_path):
    stage, generator, script = setup
    backend = FakeBackend(tokenizer, generator)
    out = run_rl(stage, backend, "start-model", tmp_path / "run")
    (policy,) = backend.policies
    assert out == tmp_path / "run" / "model" and json.loads((out / "config.json").read_text()) == {"steps": 3}
    assert generator.syncs == [0, 1, 2, 3]  # synced at the start and after every update, with its version
    assert [p.temperature for p in generator.params] == [0.9] * 3
    assert len(policy.calls) == 3 and policy.steps == 3
    for (batch, loss, config), step_prompts in zip(policy.calls, _chunks(generator.prompts, 2), strict=True):
        assert loss == "grpo" and config["icepop"] == (0.5, 2.0) and config["kl_coef"] == 0.0
        assert batch.temperature == 0.9
        assert batch.num_tokens == sum(sum(s.mask) for s in batch.sequences) == 2 * sum(len(t) for t, _ in script)
        for i, seq in enumerate(batch.sequences):
            prompt, (completion, logprobs) = step_prompts[i // 2], script[i % 2]
            assert seq.tokens == prompt + completion  # token in, token out: no re-tokenisation
            assert seq.mask == [0] * len(prompt) + [1] * len(completion)
            assert seq.values["inf_logprobs"] == [0.0] * len(prompt) + logprobs
            sign = 1 if i % 2 == 0 else -1  # rewards [1, 0]: advantages +-0.7071 on the completion only
            expected = [0.0] * len(prompt) + [sign * 0.70710575] * len(completion)
            assert seq.values["advantages"] == pytest.approx(expected)
            assert seq.group == batch.sequences[i - i % 2].group
    # the prompt ids are the chat-format encoding of the sampled prompts
    assert all(p[-len(_opener(tokenizer)) :] == _opener(tokenizer) for p in generator.prompts)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step_00000002"]


def test_a_resumed_loop_restores_the_policy_and_replays_the_same_prompts(tokenizer, setup, tmp_path):
    stage, generator, _ = setup
    run_rl(stage, FakeBackend(tokenizer, generator), "start-model", tmp_path / "run")
    straight = generator.prompts[-2:]
    (tmp_path / "run" / "model" / "config.json").unlink()  # as if killed after the step-2 checkpoint
    again = ScriptedGenerator(generator.script)
    backend = FakeBackend(tokenizer, again)
    run_rl(stage, backend, "start-model", tmp_path / "run")
    (policy,) = backend.policies
    assert policy.loaded == [tmp_path / "run" / "checkpoints" / "step_00000002"]
    assert len(policy.calls) == 1 and policy.steps == 3  # one more step, from the restored state
    assert again.syncs == [2, 3] and again.prompts == straight


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _opener(tokenizer: Any) -> list[int]:
    return encode_prompt(tokenizer, [{"role": "user", "content": "x"}], enable_thinking=False)[-2:]


def test_old_checkpoints_are_pruned_to_keep_last(tokenizer, setup, tmp_path):
    stage, generator, _ = setup
    stage = stage.model_copy(update={"steps": 6, "save_every": 1, "keep_last": 2})
    run_rl(stage, FakeBackend(tokenizer, generator), "start-model", tmp_path / "run")
    # steps 1-5 were checkpointed (the last step writes the model instead); the two newest remain
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000004", "step_00000005"]


def test_reward_hacking_is_reported_when_the_reward_rises_alone():
    from cascade_rl.loops.rl import warn_on_reward_hacking

    rising = [{"reward": 0.2 + 0.05 * i, "spec_reward": 0.4} for i in range(10)]
    # first fifth (2 steps) vs last fifth: reward 0.225 -> 0.625 (+0.400), verifier 0.4 -> 0.4 (+0.000)
    message = warn_on_reward_hacking("rlhf", rising)
    assert message is not None and "rose by +0.400" in message and "moved +0.000" in message
    honest = [{"reward": 0.2 + 0.05 * i, "spec_reward": 0.3 + 0.02 * i} for i in range(10)]
    assert warn_on_reward_hacking("rlhf", honest) is None  # the verifier rose too (+0.16)
    assert warn_on_reward_hacking("rlhf", rising[:3]) is None  # too few steps to tell


class AlwaysRight(Says):
    def __call__(self, groups: Sequence[Any]) -> list[list[RewardResult]]:
        return [[RewardResult(1.0) for _ in g.trajectories] for g in groups]


def test_a_curriculum_retires_mastered_prompts_and_a_resume_continues_it(tokenizer, setup, tmp_path, monkeypatch):
    from cascade_rl.config import CurriculumConfig, RewardConfig
    from cascade_rl.logging import read_metrics

    stage, generator, _ = setup
    monkeypatch.setitem(REWARD_FNS, "always_right", AlwaysRight)
    stage = stage.model_copy(
        update={
            "reward": RewardConfig(type="always_right"),
            "dynamic_filtering": False,
            "curriculum": CurriculumConfig(solved_visits=1),  # one all-solved visit retires a prompt
            "steps": 4,
        }
    )
    run = tmp_path / "run"
    run_rl(stage, FakeBackend(tokenizer, generator), "start-model", run)
    steps = _chunks(generator.prompts, 2)  # one generate call of 2 prompts per step (nothing filtered)
    for s, prompts in enumerate(steps):
        assert not any(p in earlier for earlier in steps[:s] for p in prompts)  # retired prompts never return
    distinct = [len({tuple(p) for step in steps[: s + 1] for p in step}) for s in range(4)]
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["curriculum/mastered"] for r in rows] == distinct == [r["curriculum/seen"] for r in rows]
    assert [r["curriculum/active"] for r in rows] == [0.0] * 4 and (run / "curriculum" / "step_2.json").is_file()
    (run / "model" / "config.json").unlink()  # as if killed after the step-2 checkpoint
    again = ScriptedGenerator(generator.script)
    run_rl(stage, FakeBackend(tokenizer, again), "start-model", run)
    assert again.prompts == generator.prompts[4:]  # the retired prompts of steps 1-2 stay retired
    (run / "model" / "config.json").unlink()
    (run / "curriculum" / "step_2.json").unlink()
    with pytest.raises(FileNotFoundError, match="curriculum state of the step-2 checkpoint is missing"):
        run_rl(stage, FakeBackend(tokenizer, ScriptedGenerator(generator.script)), "start-model", run)


class OverlapGenerator(ScriptedGenerator):
    """Flags each generate call's start, so a learner can wait to see the next step generated meanwhile."""

    def __init__(self, script: list[tuple[list[int], list[float]]]) -> None:
        super().__init__(script)
        self.started: list[threading.Event] = [threading.Event() for _ in range(10)]
        self.calls = 0

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        self.started[self.calls].set()
        self.calls += 1
        return super().generate(prompts, params)


class WaitingPolicy(RecordingPolicy):
    """Step s's update returns only once step s + 1's generation has started (or after a timeout); the last
    step has no next one and does not wait."""

    def __init__(self, generator: OverlapGenerator, stage_steps: int) -> None:
        super().__init__()
        self.generator, self.stage_steps, self.overlapped = generator, stage_steps, []

    def forward_backward(self, batch: TrainBatch, loss: str, config: Mapping[str, Any] | None = None) -> dict:
        step = len(self.calls)
        has_next = step + 1 < self.stage_steps
        self.overlapped.append(has_next and self.generator.started[step + 1].wait(timeout=30.0))
        return super().forward_backward(batch, loss, config)


def test_asynchronous_rollouts_generate_the_next_step_while_the_learner_trains(tokenizer, setup, tmp_path):
    stage, generator, _ = setup
    stage = stage.model_copy(update={"steps": 4, "save_every": 2, "max_staleness": 1})
    overlap = OverlapGenerator(generator.script)
    backend = FakeBackend(tokenizer, overlap)
    backend.policy = lambda *a, **k: backend.policies.append(WaitingPolicy(overlap, 4)) or backend.policies[-1]  # type: ignore[method-assign]
    run_rl(stage, backend, "start-model", tmp_path / "run")
    (policy,) = backend.policies
    # every update but the last saw the next step's rollouts start meanwhile, from the previous version
    assert policy.overlapped == [True, True, True, False]
    assert overlap.syncs == [0, 1, 2, 3, 4]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]  # step s trained on version s - 1


def test_lockstep_rollouts_never_overlap_the_learner(tokenizer, setup, tmp_path):
    stage, generator, _ = setup
    overlap = OverlapGenerator(generator.script)
    backend = FakeBackend(tokenizer, overlap)
    backend.policy = lambda *a, **k: backend.policies.append(WaitingPolicy(overlap, 3)) or backend.policies[-1]  # type: ignore[method-assign]
    for event in overlap.started:  # no waiting: the learner would wait 2 s per step for nothing
        event.wait = lambda timeout=None, e=event: e.is_set()  # type: ignore[method-assign]
    run_rl(stage, backend, "start-model", tmp_path / "run")
    assert backend.policies[0].overlapped == [False, False, False]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["staleness"] for r in rows] == [0.0, 0.0, 0.0]


def test_stale_rollouts_need_an_importance_correction():
    with pytest.raises(ValueError, match="icepop band or use the tis"):
        RLStage(prompts=[DataConfig(task="math", n=4)], max_staleness=1, icepop=None)
    RLStage(prompts=[DataConfig(task="math", n=4)], max_staleness=1, icepop=None, advantage="tis")

"""Reliability: non-finite steps are refused and counted, full disks and unwritable folders end runs clearly."""

from __future__ import annotations

import errno
import math

import pytest
import torch

from cascade_rl.algo import step_losses
from cascade_rl.checkpoint import latest_checkpoint, read_checkpoint_state
from cascade_rl.config import DataConfig, EngineConfig, ModelConfig, OptimConfig, SFTStage
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.engines.base import TrainBatch, TrainSequence
from cascade_rl.loops.common import CheckpointWriteError, NonFiniteTrainingError, check_writable
from cascade_rl.loops.sft import run_sft
from cascade_rl.model.load import save
from cascade_rl.model.tiny import build_tiny
from tests.conftest import TINY_QWEN3, small_corpus


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    model, tokenizer = build_tiny("qwen3", corpus=small_corpus(), vocab_size=600, **TINY_QWEN3)
    return save(model, tokenizer, tmp_path_factory.mktemp("start") / "model")


def _stage(**fields) -> SFTStage:
    return SFTStage(
        data=[DataConfig(task="math", n=40, thinking="off")],
        pack_length=256,
        packs_per_step=1,
        max_steps=8,
        save_every=2,
        optim=OptimConfig(lr=1e-3),
        **fields,
    )


def _poison_from(monkeypatch, first_bad_step: int) -> list[int]:
    """The SFT loss becomes NaN from the given step on (counted in calls); returns the call counter."""
    calls = [0]
    nll = step_losses.STEP_LOSSES["nll"]

    def fn(logprobs_SL, t, norm, config):
        calls[0] += 1
        loss, metrics = nll.fn(logprobs_SL, t, norm, config)
        return (loss * math.nan, metrics) if calls[0] >= first_bad_step else (loss, metrics)

    monkeypatch.setitem(step_losses.STEP_LOSSES, "nll", step_losses.StepLoss(fn, nll.entropy))
    return calls


def test_a_non_finite_step_is_not_applied(start, monkeypatch):
    backend = LocalBackend(EngineConfig(), ModelConfig(spec=str(start)))
    policy = backend.policy(start, OptimConfig(lr=1e-3), total_steps=4)
    before = [p.detach().clone() for p in policy.model.parameters()]
    _poison_from(monkeypatch, 1)
    seq = TrainSequence(list(range(20, 40)), [0] * 4 + [1] * 16)
    policy.forward_backward(TrainBatch([seq], 16.0, 1.0), "nll")
    assert policy.optim_step() == {"nonfinite_update": 1.0, "lr": 1e-3}
    assert all(torch.equal(a, b) for a, b in zip(before, policy.model.parameters(), strict=True))
    assert all(p.grad is None for p in policy.model.parameters())  # nothing carried into the next step
    assert policy.scheduler.last_epoch == 1  # the schedule keeps its pace


def test_consecutive_non_finite_steps_stop_the_run_with_the_last_good_checkpoint(start, monkeypatch, tmp_path, capsys):
    backend = LocalBackend(EngineConfig(), ModelConfig(spec=str(start)))
    _poison_from(monkeypatch, 5)  # steps 1-4 train (checkpoints at 2 and 4), steps 5 and 6 are NaN
    with pytest.raises(NonFiniteTrainingError) as info:
        run_sft(_stage(max_nonfinite_steps=2), backend, start, tmp_path / "run")
    message = " ".join(str(info.value).split())
    assert "2 consecutive steps with a non-finite loss or gradient (the last at step 6)" in message
    assert f"last good checkpoint is {tmp_path / 'run' / 'checkpoints' / 'step_00000004'}" in message
    said = " ".join(capsys.readouterr().out.split())
    assert "step 5 had a non-finite loss or gradient; not applied (1 in a row, 1 in all)" in said
    ckpt = latest_checkpoint(tmp_path / "run")
    assert read_checkpoint_state(ckpt)["step"] == 4 and not (tmp_path / "run" / "model").exists()
    # the checkpoint is good: a resumed run loads it and its weights are finite
    policy = backend.policy(start, OptimConfig(lr=1e-3), total_steps=8)
    policy.load_state(ckpt)
    assert all(torch.isfinite(p).all() for p in policy.model.parameters())


def test_a_full_disk_during_a_checkpoint_ends_the_run_clearly(start, monkeypatch, tmp_path):
    from cascade_rl.engines import local

    backend = LocalBackend(EngineConfig(), ModelConfig(spec=str(start)))
    real = local.LocalPolicy.save_state
    writes = [0]

    def fill_up(self, path):
        writes[0] += 1
        if writes[0] == 2:  # the step-4 checkpoint: the disk is full half-way
            (path / "trainer_state.pt").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, path)

    monkeypatch.setattr(local.LocalPolicy, "save_state", fill_up)
    with pytest.raises(CheckpointWriteError) as info:
        run_sft(_stage(), backend, start, tmp_path / "run")
    message = " ".join(str(info.value).split())
    assert "the step-4 checkpoint could not be written" in message and "No space left on device" in message
    assert f"the previous checkpoint is {tmp_path / 'run' / 'checkpoints' / 'step_00000002'}" in message
    # the previous checkpoint is the latest and complete; nothing of the failed one is left
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000002"]
    monkeypatch.setattr(local.LocalPolicy, "save_state", real)
    out = run_sft(_stage(), backend, start, tmp_path / "run")  # the same command resumes from step 2
    assert (out / "config.json").is_file()


def test_an_unwritable_run_folder_is_refused_before_any_work(tmp_path):
    from cascade_rl.config import load_config
    from cascade_rl.loops.pipeline import run_pipeline

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the run folder should go")  # root ignores permissions; this it cannot
    with pytest.raises(
        CheckpointWriteError, match=r"the run folder .*not-a-folder/run is not writable \(Not a directory\)"
    ):
        check_writable(blocker / "run")
    recipe = {"output_dir": str(blocker / "run"), "stages": [{"type": "sft", "data": [{"task": "math", "n": 4}]}]}
    with pytest.raises(CheckpointWriteError, match="choose another output_dir"):
        run_pipeline(load_config(recipe))


def test_a_reward_worker_killed_mid_batch_is_retried():
    """A verification worker dies (OOM killer, a crash): the batch is verified again, every result in order."""
    import os
    import signal
    import threading
    import time

    from cascade_rl.rewards import base

    program = "```python\nimport time\ntime.sleep(0.5)\nprint(int(input()) * 2)\n```<|im_end|>"
    specs = [{"type": "code", "cases": [{"input": str(i), "output": str(2 * i)}], "timeout": 10} for i in range(8)]
    texts = [program] * 7 + ["```python\nprint(0)\n```<|im_end|>"]  # the last one is wrong
    base.verify_batch(["1", "2"], [{"type": "math", "answer": "1"}] * 2, workers=2)  # the pool is up

    def kill_a_worker() -> None:
        time.sleep(0.3)
        pool = base._pools[2]
        os.kill(next(iter(pool._processes)), signal.SIGKILL)

    first_pool = base._pools[2]
    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    results = base.verify_batch(texts, specs, workers=2)
    killer.join()
    assert base._pools[2] is not first_pool  # the broken pool was replaced and the batch run again
    assert [r.score for r in results] == [1.0] * 7 + [0.0]
    base.shutdown_pools()

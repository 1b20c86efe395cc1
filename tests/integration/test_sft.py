"""SFT on tiny models: packing is exact, the loss falls, a SIGKILLed run resumes bit for bit, bad data is named.

Models are fp32 on the CPU with hidden size 64 so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.algo.losses import nll_loss
from cascade_rl.config import EngineConfig, ModelConfig, SFTStage, load_config
from cascade_rl.data.sources import DataSourceError
from cascade_rl.data.tasks import make_split
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.engines.base import TrainBatch, TrainSequence
from cascade_rl.engines.local import LocalPolicy, LocalScorer, OptimSettings, supports_packing
from cascade_rl.engines.microbatch import MicroBatch, make_microbatches
from cascade_rl.loops.sft import build_samples, run_sft
from cascade_rl.model.tiny import tiny_config

REPO = Path(__file__).resolve().parents[2]

TINY: dict[str, dict[str, Any]] = {
    "qwen3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, head_dim=16),
    # the router's load-balancing loss is a product of batch means, not a sum over samples: off here, where
    # the tests check that layouts and micro-batch splits leave the (additive) SFT loss unchanged
    "qwen3_moe": dict(
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        head_dim=16,
        router_aux_loss_coef=0.0,
    ),
    # every layer kind of the family (Mamba2, MoE, attention) once or twice; chunk_size 32 so the
    # longer samples below span several SSM chunks
    "nemotron_h": dict(hidden_size=64, head_dim=16, mamba_num_heads=4, mamba_head_dim=16),
}
# lengths chosen so that samples start mid-chunk and cross SSM chunk boundaries; masks leave a
# prompt of 3 tokens unsupervised
LENGTHS = (17, 45, 6, 70, 2, 33)
PROMPT = 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU spinning threads slow them down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(family: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    config = tiny_config(family, tokenizer, **TINY[family])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def random_sequences(vocab_size: int, lengths: tuple[int, ...], seed: int = 0) -> list[TrainSequence]:
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for n in lengths:
        tokens = torch.randint(10, vocab_size, (n,), generator=gen).tolist()
        seqs.append(TrainSequence(tokens, [0] * min(n, PROMPT) + [1] * max(0, n - PROMPT)))
    return seqs


def supervised(seqs: list[TrainSequence]) -> float:
    return float(sum(sum(s.mask[1:]) for s in seqs))


def token_mean_loss(scorer: LocalScorer, seqs: list[TrainSequence], num_tokens: float) -> float:
    """The SFT objective of ``seqs`` as their micro-batches compute it, normalised by ``num_tokens``."""
    total = 0.0
    with torch.no_grad():
        for mb in scorer.microbatches(seqs):
            logprobs_SL, _, _ = scorer.forward_SL(mb, 1.0)
            mask_SL = torch.zeros_like(logprobs_SL)
            for s, i in enumerate(mb.indices):
                mask_SL[s, 1 : len(seqs[i].tokens)] = torch.tensor(seqs[i].mask[1:], dtype=torch.float32)
            total += float(nll_loss(logprobs_SL, mask_SL, num_tokens)[0])
    return total


def max_token_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True))


def leak_diffs(
    scorer: LocalScorer, mb: MicroBatch, seqs: list[TrainSequence], alone: list[list[float]]
) -> tuple[float, float]:
    """Max |log-prob difference| to the one-by-one results on supervised tokens, for the first sample
    of the row and for the samples after it (only those can see other samples)."""
    with torch.no_grad():
        logprobs_SL, _, _ = scorer.forward_SL(mb, 1.0)
    rows = {
        i: [lp * m for lp, m in zip(logprobs_SL[s, : len(seqs[i].tokens)].tolist(), seqs[i].mask, strict=True)]
        for s, i in enumerate(mb.indices)
    }
    first, *later = mb.indices
    return (
        max_token_diff([rows[first]], [alone[first]]),
        max_token_diff([rows[i] for i in later], [alone[i] for i in later]),
    )


def gradients(policy: LocalPolicy, batches: list[list[TrainSequence]], num_tokens: float) -> dict[str, torch.Tensor]:
    """Gradients accumulated over ``batches`` (one forward_backward each) with one global normaliser."""
    policy.optimizer.zero_grad(set_to_none=True)
    for seqs in batches:
        batch = TrainBatch(seqs, num_tokens=num_tokens, num_sequences=len(seqs))
        policy.forward_backward(batch, "nll")
    grads = {n: p.grad.detach().clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    policy.optimizer.zero_grad(set_to_none=True)
    return grads


def max_grad_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(max abs difference, max abs value) over every parameter's gradient."""
    assert a.keys() == b.keys() and a
    diff = max(float((a[n] - b[n]).abs().max()) for n in a)
    scale = max(float(a[n].abs().max()) for n in a)
    return diff, scale


# --------------------------------------------------------------------------- packing is exact


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_packed_microbatch_equals_samples_one_by_one(family, tokenizer):
    model = tiny_model(family, tokenizer)
    seqs = random_sequences(len(tokenizer), LENGTHS)
    scorer = LocalScorer(model, token_budget=4096, layout="packed")
    (mb,) = scorer.microbatches(seqs)  # all six samples in ONE row
    assert mb.attention_mask is None and tuple(mb.input_ids.shape) == (1, sum(LENGTHS))
    assert mb.position_ids[0, :20].tolist() == [*range(17), 0, 1, 2]

    packed = scorer.logprobs(seqs)
    alone = [scorer.logprobs([s])[0] for s in seqs]
    assert max_token_diff(packed, alone) < 1e-5
    n = supervised(seqs)
    loss_packed = token_mean_loss(scorer, seqs, n)
    loss_alone = sum(token_mean_loss(scorer, [s], n) for s in seqs)
    assert loss_packed == pytest.approx(loss_alone, abs=1e-5)
    # random init: the mean NLL is close to log(vocab)
    assert abs(loss_packed - math.log(len(tokenizer))) < 0.3

    # Control: the same row with one running position count has no document boundary, so later
    # samples attend to earlier ones. The comparison above must be able to see that.
    leaky = replace(mb, position_ids=torch.arange(mb.input_ids.shape[1])[None])
    first, later = leak_diffs(scorer, leaky, seqs, alone)
    assert first < 1e-5 and later > 1e-2, (first, later)


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe", "nemotron_h"])
def test_padded_rows_equal_samples_one_by_one(family, tokenizer):
    model = tiny_model(family, tokenizer)
    seqs = random_sequences(len(tokenizer), LENGTHS)
    scorer = LocalScorer(model, token_budget=4096, layout="padded")
    (mb,) = scorer.microbatches(seqs)  # one right-padded row per sample
    assert mb.attention_mask is not None
    assert tuple(mb.input_ids.shape) == (len(LENGTHS), max(LENGTHS))
    assert mb.attention_mask.sum(1).tolist() == [LENGTHS[i] for i in mb.indices]

    padded = scorer.logprobs(seqs)
    alone = [scorer.logprobs([s])[0] for s in seqs]
    assert max_token_diff(padded, alone) < 1e-5
    n = supervised(seqs)
    assert token_mean_loss(scorer, seqs, n) == pytest.approx(
        sum(token_mean_loss(scorer, [s], n) for s in seqs), abs=1e-5
    )


@pytest.mark.parametrize(
    ("family", "layout"),
    [
        ("qwen3", "packed"),
        ("qwen3", "padded"),
        ("qwen3_moe", "packed"),
        ("qwen3_moe", "padded"),
        ("nemotron_h", "padded"),
    ],
)
def test_gradients_of_a_batch_equal_sum_over_samples(family, layout, tokenizer):
    model = tiny_model(family, tokenizer)
    policy = LocalPolicy(model, tokenizer, OptimSettings(lr=1e-3, total_steps=1), token_budget=4096, layout=layout)
    seqs = random_sequences(len(tokenizer), LENGTHS, seed=1)
    assert len(policy.microbatches(seqs)) == 1  # one forward/backward holds every sample
    n = supervised(seqs)
    together = gradients(policy, [seqs], n)
    one_by_one = gradients(policy, [[s] for s in seqs], n)
    diff, scale = max_grad_diff(together, one_by_one)
    assert scale > 1e-3  # gradients are not trivially zero
    assert diff < 1e-6


def test_nemotron_h_is_never_packed(tokenizer):
    model = tiny_model("nemotron_h", tokenizer)
    assert not supports_packing(model)
    assert LocalScorer(model).layout == "padded"
    with pytest.raises(ValueError, match="Mamba"):
        LocalScorer(model, layout="packed")

    # Why: packed with position resets, the Mamba state still flows from one sample into the next.
    seqs = random_sequences(len(tokenizer), LENGTHS)
    scorer = LocalScorer(model, token_budget=4096)
    alone = [scorer.logprobs([s])[0] for s in seqs]
    (forced,) = make_microbatches(seqs, 4096, packed=True, pad_id=scorer.pad_id)
    first, later = leak_diffs(scorer, forced, seqs, alone)
    assert first < 1e-5 and later > 1e-2, (first, later)


# --------------------------------------------------------------------------- run_sft end to end


def write_jsonl(path: Path, records: list[dict[str, Any]], bad_lines: dict[int, str] | None = None) -> Path:
    """One record per line; ``bad_lines`` maps 1-based line numbers to raw text inserted there."""
    lines = [json.dumps(r) for r in records]
    for line_no, raw in sorted((bad_lines or {}).items()):
        lines.insert(line_no - 1, raw)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def math_records(n_problems: int) -> list[dict[str, Any]]:
    return [
        p.sft_record(thinking) for p in make_split("math", "train", n_problems, seed=0) for thinking in (True, False)
    ]


def start(tokenizer: PreTrainedTokenizerBase, folder: Path, seed: int = 0) -> Path:
    """A tiny qwen3 saved as the HF folder a stage starts from."""
    from cascade_rl.model.load import save

    return save(tiny_model("qwen3", tokenizer, seed=seed), tokenizer, folder)


BACKEND = LocalBackend(EngineConfig(), ModelConfig())


def sft_stage(data_path: Path, **fields: Any) -> SFTStage:
    stage: dict[str, Any] = {
        "type": "sft",
        "data": [{"path": str(data_path)}],
        "pack_length": 512,
        "packs_per_step": 2,
        "optim": {"lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 2, "warmup_start_lr": 3e-4},
        "seed": 7,
    }
    stage.update(fields)
    return load_config({"stages": [stage]}).stages[0]


def metrics_by_step(run_dir: Path) -> dict[int, dict[str, Any]]:
    """The last line logged for every step (a resumed run appends the steps it repeats)."""
    rows: dict[int, dict[str, Any]] = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return rows


@pytest.fixture(scope="module")
def math_jsonl(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "math.jsonl", math_records(100))


def test_run_sft_on_jsonl_loss_falls(math_jsonl, tokenizer, tmp_path):
    stage = sft_stage(math_jsonl, max_steps=16, save_every=100)
    out = run_sft(stage, BACKEND, start(tokenizer, tmp_path / "init"), tmp_path / "run")
    assert (out / "config.json").is_file() and out == tmp_path / "run" / "model"
    rows = metrics_by_step(tmp_path / "run")
    assert sorted(rows) == list(range(1, 17))
    losses = [rows[s]["loss"] for s in range(1, 17)]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert abs(losses[0] - math.log(len(tokenizer))) < 0.3
    assert last < first - 2.0, (first, last)
    # every step trains on two packs of at most 512 tokens
    assert all(0 < rows[s]["supervised_tokens"] < 1024 for s in rows)


CHILD = """
import sys, time, torch
from pathlib import Path
sys.path.insert(0, {repo!r})
torch.set_num_threads({threads})
from tests.integration import test_sft as t
from tests.conftest import small_corpus
from cascade_rl.model.load import prepare_tokenizer
from cascade_rl.model.tiny import train_tokenizer
from cascade_rl.logging import MetricsLogger

class StallAfter(MetricsLogger):
    # logs normally, then hangs once step {stall} is logged: the parent kills the process there,
    # with steps after the last checkpoint done and lost, as in a real crash
    def log(self, metrics, step, *, stage=None):
        super().log(metrics, step, stage=stage)
        if step == {stall}:
            Path({marker!r}).touch()
            time.sleep(120)

tokenizer = prepare_tokenizer(train_tokenizer(small_corpus(), vocab_size=600))
stage = t.sft_stage(Path({data!r}), max_steps={steps}, save_every={save_every})
run_dir = Path({run_dir!r})
t.run_sft(stage, t.BACKEND, t.start(tokenizer, Path({init!r})), run_dir, logger=StallAfter(run_dir))
"""


def test_resume_after_sigkill_matches_uninterrupted_run(math_jsonl, tokenizer, tmp_path):
    steps, save_every, stall = 8, 4, 6
    stage = sft_stage(math_jsonl, max_steps=steps, save_every=save_every)
    out_a = run_sft(stage, BACKEND, start(tokenizer, tmp_path / "init_a"), tmp_path / "a")

    run_b, marker = tmp_path / "b", tmp_path / "stalled"
    code = CHILD.format(
        repo=str(REPO),
        threads=torch.get_num_threads(),
        stall=stall,
        marker=str(marker),
        data=str(math_jsonl),
        steps=steps,
        save_every=save_every,
        run_dir=str(run_b),
        init=str(tmp_path / "init_b"),
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600  # a guard against a hung child, not a speed check
        ckpt = run_b / "checkpoints" / f"step_{save_every:08d}"
        while not (ckpt.is_dir() and marker.exists()):
            if child.poll() is not None:
                pytest.fail(f"child exited early ({child.returncode}): {child.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "child never reached the stall point"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        child.stderr.close()
    assert not (run_b / "model").exists()  # it really died mid-run
    killed_steps = [json.loads(line)["step"] for line in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert killed_steps == list(range(1, stall + 1))

    # another init on purpose: every weight must come from the checkpoint
    out_b = run_sft(stage, BACKEND, start(tokenizer, tmp_path / "init_other", seed=123), run_b)
    logged_steps = [json.loads(line)["step"] for line in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert logged_steps == [*range(1, stall + 1), *range(save_every + 1, steps + 1)]  # resumed at step 5, not 1 or 7

    a, b = metrics_by_step(tmp_path / "a"), metrics_by_step(run_b)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    loss_diffs = [abs(a[step]["loss"] - b[step]["loss"]) for step in range(1, steps + 1)]
    assert max(loss_diffs) <= 1e-6, loss_diffs
    assert [a[step]["lr"] for step in a] == [b[step]["lr"] for step in a]
    assert b[steps]["loss"] < b[1]["loss"] - 1.0  # the compared steps did train
    weights_a = load_file(str(out_a / "model.safetensors"))
    weights_b = load_file(str(out_b / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


# --------------------------------------------------------------------------- data errors


def test_bad_jsonl_line_is_named_or_skipped(tokenizer, tmp_path, capsys):
    bad = {7: '{"messages": [{"role": "user", "content": "hi"}', 12: '{"messages": [{"role": "bot", "content": "x"}]}'}
    path = write_jsonl(tmp_path / "bad.jsonl", math_records(20), bad)

    with pytest.raises(DataSourceError, match=f"^{re.escape(str(path))}:7: invalid JSON"):
        run_sft(sft_stage(path, max_steps=2), BACKEND, start(tokenizer, tmp_path / "init"), tmp_path / "raise")
    assert not (tmp_path / "raise" / "metrics.jsonl").exists()

    stage = sft_stage(path, max_steps=2, data=[{"path": str(path), "on_error": "skip"}])
    samples, report = build_samples(stage, tokenizer)
    assert len(samples) == 40
    row = next(line.split() for line in report.splitlines() if line.startswith("bad.jsonl"))
    assert row == ["bad.jsonl", "42", "40", "2", "0", "0"]  # read, used, skipped, truncated, dropped
    assert f"skipped in bad.jsonl: {path}:7: invalid JSON" in report
    assert f"skipped in bad.jsonl: {path}:12: message 0: unknown role 'bot'" in report

    capsys.readouterr()
    run_sft(stage, BACKEND, tmp_path / "init", tmp_path / "skip")
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["bad.jsonl", "42", "40", "2", "0", "0"] in printed  # the run reports what it skipped
    rows = metrics_by_step(tmp_path / "skip")
    assert sorted(rows) == [1, 2] and all(math.isfinite(r["loss"]) for r in rows.values())


def test_skip_reason_with_brackets_does_not_crash_the_run(tokenizer, tmp_path):
    bad = {3: '{"messages": [{"role": "[/b]", "content": "x"}]}'}
    path = write_jsonl(tmp_path / "brackets.jsonl", math_records(5), bad)
    stage = sft_stage(path, max_steps=1, data=[{"path": str(path), "on_error": "skip"}])
    run_sft(stage, BACKEND, start(tokenizer, tmp_path / "init"), tmp_path / "run")
    assert sorted(metrics_by_step(tmp_path / "run")) == [1]

"""SFT packing benchmark: packing efficiency and training throughput, ours vs padded batching vs TRL.

Part 1 packs a long-tailed, chat-like length distribution (log-normal, clipped to 50-4000 tokens)
into 8192-token sequences with ``cascade_rl.data.packing.pack``, with TRL's ``pack_dataset`` (BFD),
and into padded batches of 8.

Part 2 trains the same tiny model (same config and initial weights, fp32, CPU) on the same
synthetic token sequences (same supervised tokens, ~30% of every sample an unsupervised prompt)
with ``PACKS_PER_STEP`` packs of at most ``CAPACITY`` tokens per optimizer step:
  * ours exactly as ``run_sft`` builds it (``step_plan`` + ``build_policy`` + ``LocalPolicy.forward_backward``
    with ``nll_loss``); the engine picks the micro-batch layout (``auto``);
  * ours with the other layout forced (packed rows with position-id document masking, or padded rows);
  * TRL ``SFTTrainer`` with ``packing=True`` (BFD, padding-free), one pack per micro-batch and
    gradient accumulation over ``PACKS_PER_STEP`` micro-batches.
The first ``WARMUP_STEPS`` steps of every run are not timed. Rates are supervised tokens per second
of process CPU time with one torch thread (the default), which on an idle core equals wall-clock
time and, unlike wall time, does not move when other jobs share the machine.

Usage: .venv/bin/python bench/sft_packing.py [--profile] [--threads N]
The last line printed is ``ratio: X.XX`` = ours (as run_sft trains) over TRL, tokens per CPU second.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import logging
import os
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import clocks, print_table, quiet, step_clock, trl_cpu_args
from cascade_rl.algo.losses import nll_loss
from cascade_rl.config import DataConfig, OptimConfig, SFTStage
from cascade_rl.data.packing import pack
from cascade_rl.engines.base import TrainBatch, TrainSequence
from cascade_rl.engines.local import LocalPolicy
from cascade_rl.loops.common import build_policy
from cascade_rl.loops.sft import step_plan
from cascade_rl.model.tiny import default_corpus, tiny_config, train_tokenizer

# Part 1: packing efficiency on chat-like lengths
N_SAMPLES, MEDIAN, SIGMA, MIN_LEN, MAX_LEN = 5000, 600, 0.9, 50, 4000
PACK_CAPACITY, PAD_BATCH = 8192, 8
# Part 2: throughput on the same distribution scaled down 10x
TRAIN_SAMPLES, TRAIN_MEDIAN, TRAIN_MIN, TRAIN_MAX = 400, 60, 20, 400
CAPACITY, PACKS_PER_STEP, EPOCHS, WARMUP_STEPS = 2048, 2, 3, 3
PROMPT_FRACTION = 0.3  # leading share of every sample left unsupervised, like a chat prompt
LR, BETAS = 1e-4, (0.9, 0.98)
SEED = 0


def chat_lengths(n: int, median: float, lo: int, hi: int, seed: int) -> list[int]:
    """Log-normal lengths (sigma ``SIGMA``) clipped to [lo, hi]: most samples short, a long tail."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median), SIGMA, n), lo, hi).astype(int).tolist()


# --------------------------------------------------------------------------- part 1: packing efficiency


def packing_efficiency() -> None:
    from datasets import Dataset
    from trl import pack_dataset

    lengths = chat_lengths(N_SAMPLES, MEDIAN, MIN_LEN, MAX_LEN, SEED)
    total = sum(lengths)
    rows: list[list[str]] = []

    def row(name: str, n_rows: int, slots: int, seconds: float) -> None:
        rows.append([name, str(n_rows), f"{total:,}", f"{slots:,}", f"{100 * total / slots:.2f}%", f"{seconds:.3f}"])

    t0 = time.perf_counter()
    bins = pack(lengths, PACK_CAPACITY)
    ours_s = time.perf_counter() - t0
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    row(f"ours pack() BFD, {PACK_CAPACITY}", len(bins), len(bins) * PACK_CAPACITY, ours_s)

    dataset = Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})
    t0 = time.perf_counter()
    packed = pack_dataset(dataset, seq_length=PACK_CAPACITY, strategy="bfd")
    trl_s = time.perf_counter() - t0
    trl_lengths = [len(ids) for ids in packed["input_ids"]]
    assert sum(trl_lengths) == total, "TRL dropped tokens"  # every sample fits: nothing truncated
    row(f"TRL pack_dataset bfd, {PACK_CAPACITY}", len(trl_lengths), len(trl_lengths) * PACK_CAPACITY, trl_s)

    order = list(range(len(lengths)))
    random.Random(SEED).shuffle(order)
    batches = [order[i : i + PAD_BATCH] for i in range(0, len(order), PAD_BATCH)]
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    row(f"padded, random batches of {PAD_BATCH}", len(batches) * PAD_BATCH, slots, 0.0)
    by_length = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_batches = [by_length[i : i + PAD_BATCH] for i in range(0, len(by_length), PAD_BATCH)]
    slots = sum(len(b) * max(lengths[i] for i in b) for b in sorted_batches)
    row(f"padded, length-sorted batches of {PAD_BATCH}", len(sorted_batches) * PAD_BATCH, slots, 0.0)

    print(
        f"== packing efficiency: {N_SAMPLES} samples, log-normal (median {MEDIAN}, sigma {SIGMA}) "
        f"clipped to [{MIN_LEN}, {MAX_LEN}], mean {total / len(lengths):.0f} tokens, seed {SEED}"
    )
    print_table(["method", "rows", "tokens", "slots", "efficiency", "pack_s"], rows)
    print(
        "(packed rows count as full capacity; both packed paths run padding-free, so their compute has no pad "
        "at all and the fill only sets how many rows a token budget needs)"
    )


# --------------------------------------------------------------------------- part 2: throughput


@dataclass
class Run:
    name: str
    step_tokens: list[float] = field(default_factory=list)  # supervised tokens of every optimizer step
    step_wall: list[float] = field(default_factory=list)  # wall seconds of every step (data, fwd, bwd, optimizer)
    step_cpu: list[float] = field(default_factory=list)  # process CPU seconds of every step
    slots: int = 0  # token positions computed (real + pad), all steps
    real: int = 0  # real token positions computed, all steps
    attn_cells: int = 0  # query-key pairs the attention kernels compute (incl. masked ones), all steps

    def rate(self, seconds: list[float]) -> float:
        """Supervised tokens per second over the timed (post warm-up) steps."""
        return sum(self.step_tokens[WARMUP_STEPS:]) / sum(seconds[WARMUP_STEPS:])


def train_samples(vocab_size: int) -> list[TrainSequence]:
    lengths = chat_lengths(TRAIN_SAMPLES, TRAIN_MEDIAN, TRAIN_MIN, TRAIN_MAX, SEED + 1)
    gen = torch.Generator().manual_seed(SEED)
    samples = []
    for n in lengths:
        prompt = max(1, int(PROMPT_FRACTION * n))
        tokens = torch.randint(10, vocab_size, (n,), generator=gen).tolist()
        samples.append(TrainSequence(tokens, [0] * prompt + [1] * (n - prompt)))
    return samples


def _nll(logprobs_SL: torch.Tensor, tensors: dict[str, torch.Tensor], *, num_tokens: float) -> tuple:
    return nll_loss(logprobs_SL, tensors["mask"], num_tokens)


def ours_step(policy: LocalPolicy, seqs: list[TrainSequence]) -> float:
    """One optimizer step exactly as ``run_sft`` takes it; returns its supervised tokens."""
    num_tokens = float(sum(sum(s.mask[1:]) for s in seqs))
    batch = TrainBatch(seqs, num_tokens=num_tokens, num_sequences=len(seqs))
    policy.forward_backward(batch, partial(_nll, num_tokens=num_tokens))
    policy.optim_step()
    return num_tokens


def ours_policy(model: Any, tokenizer: Any, samples: list[TrainSequence], layout: str | None) -> tuple:
    """(policy, step plan) of our SFT stage; ``layout`` None builds the policy exactly as ``run_sft`` does."""
    stage = SFTStage(
        data=[DataConfig(task="math")],  # unused: the samples are given
        pack_length=CAPACITY,
        packs_per_step=PACKS_PER_STEP,
        epochs=EPOCHS,
        optim=OptimConfig(lr=LR, betas=BETAS, weight_decay=0.0, grad_clip=1.0),
        seed=SEED,
    )
    plan = step_plan(samples, stage)
    if layout is None:
        return build_policy(model, tokenizer, stage.optim, len(plan), stage.pack_length), plan
    optim = stage.optim
    policy = LocalPolicy(
        model,
        tokenizer,
        lr=optim.lr,
        total_steps=len(plan),
        betas=optim.betas,
        weight_decay=optim.weight_decay,
        grad_clip=optim.grad_clip,
        token_budget=stage.pack_length,
        layout=layout,
    )
    return policy, plan


def run_ours(name: str, model: Any, tokenizer: Any, samples: list[TrainSequence], layout: str | None) -> Run:
    policy, plan = ours_policy(model, tokenizer, samples, layout)
    run = Run(f"{name} [{policy.layout}]")
    for indices in plan:
        seqs = [samples[i] for i in indices]
        for mb in policy.microbatches(seqs):
            run.slots += mb.input_ids.numel()
            run.real += int(mb.valid_SL.sum()) + len(mb.indices)
            run.attn_cells += mb.input_ids.shape[0] * mb.input_ids.shape[1] ** 2
        wall, cpu = clocks()
        run.step_tokens.append(ours_step(policy, seqs))
        run.step_wall.append(time.perf_counter() - wall)
        run.step_cpu.append(time.process_time() - cpu)
    return run


def trl_dataset(samples: list[TrainSequence]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "input_ids": [s.tokens for s in samples],
            # TRL labels are unshifted token ids, -100 where not trained: the same tokens as our masks
            "labels": [[t if m else -100 for t, m in zip(s.tokens, s.mask, strict=True)] for s in samples],
        }
    )


def trl_trainer(model: Any, tokenizer: Any, samples: list[TrainSequence], out_dir: str, epochs: float) -> Any:
    from trl import SFTConfig, SFTTrainer

    class Timed(SFTTrainer):
        """Counts the supervised tokens of every micro-batch; ``step_clock`` times every optimizer step."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.pending_tokens = 0.0
            self.bench = Run("TRL SFTTrainer packing=True [bfd, padding-free]")

        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            self.pending_tokens += float((inputs["labels"][:, 1:] != -100).sum())
            rows, width = inputs["input_ids"].shape
            self.bench.slots += rows * width
            self.bench.real += rows * width  # padding-free, pad_to_multiple_of=None: no pad positions
            self.bench.attn_cells += rows * width**2
            return super().compute_loss(model, inputs, *args, **kwargs)

        def end_step(self, wall: float, cpu: float) -> None:
            """One optimizer step done (``wall`` / ``cpu`` seconds): record it with its supervised tokens."""
            self.bench.step_wall.append(wall)
            self.bench.step_cpu.append(cpu)
            self.bench.step_tokens.append(self.pending_tokens)
            self.pending_tokens = 0.0

    config = SFTConfig(
        output_dir=out_dir,
        packing=True,
        packing_strategy="bfd",
        padding_free=True,
        max_length=CAPACITY,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=PACKS_PER_STEP,
        num_train_epochs=epochs,
        # no gradient checkpointing (TRL's default is on), constant LR, AdamW as ours: see trl_cpu_args
        **trl_cpu_args(lr=LR, betas=BETAS, grad_clip=1.0, seed=SEED),
    )
    trainer = Timed(model=model, args=config, train_dataset=trl_dataset(samples), processing_class=tokenizer)
    trainer.add_callback(step_clock(trainer.end_step))
    return trainer


def check_trl_packs_without_leaks(model: Any, tokenizer: Any, samples: list[TrainSequence], out_dir: str) -> float:
    """Max |log-prob| difference between TRL's first packed training micro-batch and its samples run alone."""
    trainer = trl_trainer(model, tokenizer, samples, out_dir, epochs=1)
    batch = next(iter(trainer.get_train_dataloader()))
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    model = trainer.model.eval()
    with torch.no_grad():
        together = model(**batch, fused_lm_head=True).log_probs[0]
        starts = [*(batch["position_ids"][0] == 0).nonzero().flatten().tolist(), batch["input_ids"].shape[1]]
        assert len(starts) > 2, "the micro-batch holds one sample only"
        worst = 0.0
        for a, b in itertools.pairwise(starts):
            alone = model(
                input_ids=batch["input_ids"][:, a:b], labels=batch["labels"][:, a:b], fused_lm_head=True
            ).log_probs[0]
            worst = max(worst, float((together[a : b - 1] - alone).abs().max()))
    return worst


def run_trl(model: Any, tokenizer: Any, samples: list[TrainSequence], out_dir: str) -> Run:
    trainer = trl_trainer(model, tokenizer, samples, out_dir, epochs=EPOCHS)
    trainer.train()
    return trainer.bench


def print_profile(title: str, prof: Any) -> None:
    print(f"\n== profile, {title}: torch ops by self CPU time")
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=40, max_shapes_column_width=50
    )
    print("\n".join(line for line in table.splitlines() if not line.startswith("-")))


def profile_steps(make_model: Callable[[], Any], tokenizer: Any, samples: list[TrainSequence], out_dir: str) -> None:
    """Top torch ops of two post-warm-up steps of each system, and Python hot spots of ours."""
    from torch.profiler import ProfilerActivity, profile

    for layout in ("packed", "padded"):
        policy, plan = ours_policy(make_model(), tokenizer, samples, layout)
        for indices in plan[:WARMUP_STEPS]:
            ours_step(policy, [samples[i] for i in indices])
        steps = plan[WARMUP_STEPS : WARMUP_STEPS + 2]
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for indices in steps:
                ours_step(policy, [samples[i] for i in indices])
        print_profile(f"ours [{layout}], 2 steps", prof)
        py = cProfile.Profile()
        py.enable()
        for indices in steps:
            ours_step(policy, [samples[i] for i in indices])
        py.disable()
        text = io.StringIO()
        pstats.Stats(py, stream=text).sort_stats("tottime").print_stats(8)
        print(f"== profile, ours [{layout}], 2 steps: Python functions by own time")
        print("\n".join(line for line in text.getvalue().splitlines()[4:] if line.strip()))

    with quiet():
        trainer = trl_trainer(make_model(), tokenizer, samples, out_dir, epochs=1)
        trainer.args.max_steps = WARMUP_STEPS
        trainer.train()  # warm-up in a first trainer, then profile two steps of a fresh one
        trainer = trl_trainer(make_model(), tokenizer, samples, out_dir, epochs=1)
        trainer.args.max_steps = 2
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            trainer.train()
    print_profile("TRL, 2 steps (incl. trainer start)", prof)


def throughput(profile_it: bool) -> tuple[float, float]:
    """Returns (ours as run_sft trains / TRL, ours packed / TRL) in supervised tokens per CPU second."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    tokenizer = train_tokenizer(default_corpus(n_per_domain=40), vocab_size=1024)
    config = tiny_config("qwen3", tokenizer)
    torch.manual_seed(SEED)
    initial = AutoModelForCausalLM.from_config(config, dtype=torch.float32).state_dict()

    def make_model() -> Any:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(initial)
        return model

    samples = train_samples(len(tokenizer))
    n_params = sum(p.numel() for p in make_model().parameters())
    lengths = [len(s.tokens) for s in samples]
    supervised = sum(sum(s.mask[1:]) for s in samples)
    print(
        f"\n== SFT throughput: tiny qwen3 ({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab "
        f"{config.vocab_size}, {n_params / 1e6:.2f}M params, attention {make_model().config._attn_implementation}), "
        f"fp32 CPU, {torch.get_num_threads()} thread(s); {len(samples)} samples of {min(lengths)}-{max(lengths)} "
        f"tokens ({sum(lengths):,} tokens, {supervised:,} supervised); {PACKS_PER_STEP} packs of <= {CAPACITY} "
        f"tokens per optimizer step; {EPOCHS} epochs; first {WARMUP_STEPS} steps not timed"
    )
    with tempfile.TemporaryDirectory() as out_dir:
        with quiet():
            leak = check_trl_packs_without_leaks(make_model(), tokenizer, samples, out_dir)
        print(f"TRL padding-free check: packed micro-batch vs its samples alone, max |log-prob diff| = {leak:.2e}")
        auto = run_ours("ours, as run_sft builds it", make_model(), tokenizer, samples, layout=None)
        other = "padded" if auto.name.endswith("[packed]") else "packed"
        forced = run_ours("ours, layout forced", make_model(), tokenizer, samples, layout=other)
        with quiet():
            trl = run_trl(make_model(), tokenizer, samples, out_dir)
        if profile_it:
            profile_steps(make_model, tokenizer, samples, out_dir)

    runs = [auto, forced, trl]
    rows = [
        [
            run.name,
            str(len(run.step_tokens)),
            f"{sum(run.step_tokens):,.0f}",
            f"{100 * run.real / max(run.slots, 1):.1f}%",
            f"{run.attn_cells / run.real:,.0f}",
            f"{sum(run.step_cpu[WARMUP_STEPS:]):.1f}",
            f"{run.rate(run.step_cpu):,.0f}",
            f"{run.rate(run.step_wall):,.0f}",
        ]
        for run in runs
    ]
    header = ["system", "steps", "sup. tokens", "non-pad", "attn pairs/token", "cpu_s", "tok/cpu_s", "tok/wall_s"]
    print_table(header, rows)
    print(
        "(tok/cpu_s: supervised tokens per second of process CPU time over the timed steps, the headline, robust "
        "to other load on a shared machine; tok/wall_s: the same per wall-clock second)"
    )
    for run in runs[1:]:
        assert sum(run.step_tokens) == sum(auto.step_tokens), "the systems did not train on the same tokens"
    packed = auto if auto.name.endswith("[packed]") else forced
    print(f"ours packed / TRL: {packed.rate(packed.step_cpu) / trl.rate(trl.step_cpu):.2f}")
    return auto.rate(auto.step_cpu) / trl.rate(trl.step_cpu), packed.rate(packed.step_cpu) / trl.rate(trl.step_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="also profile a few steps of ours and of TRL")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = work done)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    packing_efficiency()
    ratio, _ = throughput(args.profile)
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()

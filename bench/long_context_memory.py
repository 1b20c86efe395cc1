"""Long-context training memory: peak memory and time of ONE training step against context length.

One sequence of T tokens (the first 10% an unsupervised prompt, the rest supervised), one forward + backward of
the SFT loss (mean token NLL), on a tiny qwen3 on the CPU in fp32 with one torch thread, for
  * ``ours``: ``LocalPolicy.forward_backward`` with the ``nll`` step loss, layout padded (the LM head runs in
    1024-row chunks, each checkpointed, so no [T, V] logits exist);
  * ``ours+ckpt``: the same with ``activation_checkpointing`` (each decoder layer recomputed in backward);
  * ``transformers``: ``model(input_ids, labels=labels).loss.backward()``, which builds [T, V] fp32 logits and
    their log-softmax.
Model: qwen3, hidden 64, 2 layers, 2 attention heads of 32 (1 KV head), MLP 192, tied embeddings, SDPA; the
vocabulary is 32K and 128K (the head's [T, V] term is what grows with it). Every configuration runs in a fresh
subprocess: a warm-up step on 256 tokens (kernels initialised, gradient buffers allocated), then the measured
step. Its memory is the step's peak RSS minus the RSS right before it, i.e. what the step itself adds (the
peak is reset right before the step: ``/proc/self/clear_refs``, then ``VmHWM``; elsewhere ``ru_maxrss``).

A plain-transformers step whose [T, V] tensors would not fit in this machine's free memory is not run (that
would invite the OOM killer): its memory is extrapolated linearly in T from the two longest measured steps of
the same vocabulary (memory is linear in T there, see the table) and marked ``~``.

Usage: .venv/bin/python bench/long_context_memory.py [--lengths 1024,2048] [--vocabs 32768]
About 5 minutes on 2 cores. The last line is ``ratio: X.XX`` = plain transformers' step memory over ours
(without activation checkpointing) at 16K tokens with the 128K vocabulary.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = dict(
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
)
LENGTHS = (1024, 2048, 4096, 8192, 16384)
VOCABS = (32768, 131072)
METHODS = ("ours", "ours+ckpt", "transformers")
PROMPT_SHARE = 0.1
WARMUP_TOKENS = 256
# fp32 [T, V] tensors alive at once in a plain step's backward (log-softmax output, its gradient, the logits')
TRANSFORMERS_TV_COPIES = 3
MB = 1 << 20


def _rss_bytes() -> int:
    """The resident set size now (Linux /proc; elsewhere the peak so far, the best available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _peak_bytes()


def _reset_peak() -> None:
    """Start the peak-RSS count afresh (Linux), so a warm-up's peak is not taken for the step's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_bytes() -> int:
    """The peak RSS since the last ``_reset_peak`` (Linux ``VmHWM``), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError):
        return 8 << 30


def _build(vocab: int, length: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from cascade_rl.model.tiny import tiny_config, train_tokenizer

    tokenizer = train_tokenizer([f"warm up sentence {i}" for i in range(50)], vocab_size=300)  # ids only
    config = tiny_config("qwen3", tokenizer, **MODEL)
    config.vocab_size, config.max_position_embeddings = vocab, max(length, WARMUP_TOKENS)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval(), tokenizer


def _tokens(length: int, vocab: int) -> tuple[list[int], list[int]]:
    import torch

    generator = torch.Generator().manual_seed(length)
    tokens = torch.randint(10, vocab, (length,), generator=generator).tolist()
    prompt = int(length * PROMPT_SHARE)
    return tokens, [0] * prompt + [1] * (length - prompt)


def _step_fn(method: str, model: Any, tokenizer: Any, length: int) -> Any:
    """A function running one training step on ``(tokens, mask)`` and returning its loss."""
    import torch

    from cascade_rl.engines.base import TrainBatch, TrainSequence
    from cascade_rl.engines.local import LocalPolicy, OptimSettings

    if method == "transformers":

        def plain(tokens: list[int], mask: list[int]) -> float:
            ids = torch.tensor([tokens])
            labels = torch.where(torch.tensor([mask], dtype=torch.bool), ids, torch.full_like(ids, -100))
            loss = model(input_ids=ids, labels=labels).loss  # the output (and its [T, V] logits) is dropped here
            loss.backward()
            return float(loss.detach())

        return plain
    policy = LocalPolicy(
        model,
        tokenizer,
        OptimSettings(lr=1e-3, total_steps=1),
        token_budget=max(length, WARMUP_TOKENS),
        layout="padded",
        activation_checkpointing=method == "ours+ckpt",
    )

    def ours(tokens: list[int], mask: list[int]) -> float:
        seq = TrainSequence(tokens, mask)
        metrics = policy.forward_backward(TrainBatch([seq], float(sum(mask[1:])), 1.0), "nll")
        return metrics["loss"]

    return ours


def child(method: str, length: int, vocab: int) -> dict[str, float]:
    """One configuration, measured in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    model, tokenizer = _build(vocab, length)
    step = _step_fn(method, model, tokenizer, length)
    step(*_tokens(WARMUP_TOKENS, vocab))  # kernels initialised, .grad buffers allocated
    model.zero_grad(set_to_none=False)
    tokens, mask = _tokens(length, vocab)
    gc.collect()
    _reset_peak()
    before = _rss_bytes()
    start = time.perf_counter()
    loss = step(tokens, mask)
    seconds = time.perf_counter() - start
    return {"peak_mb": (_peak_bytes() - before) / MB, "seconds": seconds, "loss": loss}


def _run(method: str, length: int, vocab: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", method, str(length), str(vocab)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} T={length} V={vocab} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _plain_bytes(length: int, vocab: int) -> int:
    """What a plain-transformers step's [T, V] tensors take at their peak."""
    return TRANSFORMERS_TV_COPIES * length * vocab * 4


def _extrapolate(points: dict[int, float], length: int) -> float:
    if len(points) < 2:
        return float("nan")
    (t1, m1), (t2, m2) = sorted(points.items())[-2:]
    return m2 + (m2 - m1) / (t2 - t1) * (length - t2)


Key = tuple[int, int, str]  # (vocab, length, method)


def measure(lengths: list[int], vocabs: list[int], jobs: int) -> dict[Key, dict[str, Any]]:
    """Every configuration in its own subprocess; ``jobs`` at a time, except those needing much of the free RAM."""
    free = _available_bytes()
    keys = [(v, t, m) for v in vocabs for t in lengths for m in METHODS]
    plain = {k: _plain_bytes(k[1], k[0]) for k in keys if k[2] == "transformers"}
    skipped = [k for k, need in plain.items() if need > 0.75 * free]  # would invite the OOM killer
    heavy = [k for k, need in plain.items() if 0.2 * free < need <= 0.75 * free]  # run alone
    light = [k for k in keys if k not in skipped and k not in heavy]
    results: dict[Key, dict[str, Any]] = {}

    def run(key: Key) -> None:
        results[key] = _run(key[2], key[1], key[0])
        r = results[key]
        print(
            f"  {key[2]:12} V={key[0]:>6} T={key[1]:>5}: {r['peak_mb']:7.0f} MB {r['seconds']:6.1f} s", file=sys.stderr
        )

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run, light))
    for key in heavy:
        run(key)
    for vocab, length, method in skipped:
        done = {t: r["peak_mb"] for (v, t, m), r in results.items() if v == vocab and m == method}
        estimate = _extrapolate(done, length)
        results[(vocab, length, method)] = {"peak_mb": estimate, "seconds": float("nan"), "estimated": True}
    return results


def report(results: dict[Key, dict[str, Any]], lengths: list[int], vocabs: list[int]) -> None:
    from bench._common import print_table

    def mem(r: dict[str, Any]) -> str:
        return f"~{r['peak_mb']:.0f}" if r.get("estimated") else f"{r['peak_mb']:.0f}"

    def sec(r: dict[str, Any]) -> str:
        return "-" if r.get("estimated") else f"{r['seconds']:.2f}"

    header = ["vocab", "tokens", *(f"{m} MB" for m in METHODS), *(f"{m} s" for m in METHODS), "loss ours/plain"]
    rows = []
    for vocab in vocabs:
        for length in lengths:
            rs = [results[(vocab, length, m)] for m in METHODS]
            losses = "-" if rs[2].get("estimated") else f"{rs[0]['loss']:.4f}/{rs[2]['loss']:.4f}"
            rows.append([f"{vocab // 1024}K", length, *map(mem, rs), *map(sec, rs), losses])
    print_table(header, rows)
    if any(r.get("estimated") for r in results.values()):
        print("~ extrapolated (linear in T from the two longest measured steps): its [T, V] tensors exceed free RAM")
    key_v, key_t = max(vocabs), max(lengths)
    ratio = results[(key_v, key_t, "transformers")]["peak_mb"] / results[(key_v, key_t, "ours")]["peak_mb"]
    print(f"ratio: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "LENGTH", "VOCAB"), help=argparse.SUPPRESS)
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--vocabs", default=",".join(map(str, VOCABS)))
    parser.add_argument("--jobs", type=int, default=2, help="configurations measured at once (one per core)")
    args = parser.parse_args()
    if args.child:
        method, length, vocab = args.child
        print(json.dumps(child(method, int(length), int(vocab))))
        return
    lengths = sorted(int(x) for x in args.lengths.split(","))
    vocabs = sorted(int(x) for x in args.vocabs.split(","))
    start = time.perf_counter()
    results = measure(lengths, vocabs, args.jobs)
    print(f"qwen3 {MODEL}, fp32, CPU, 1 thread; one step on T tokens ({time.perf_counter() - start:.0f} s in all)")
    report(results, lengths, vocabs)


if __name__ == "__main__":
    main()

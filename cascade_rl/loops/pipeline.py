"""Cascade RL: stages in order, each from the previous checkpoint, every domain evaluated after each.

Run folder::

    recipe.yaml              the resolved recipe (every default explicit)
    base/model               the starting model as an HF folder
    stages/NN-name/          checkpoints/, metrics.jsonl, model/ (the stage's output), eval.json, samples.jsonl
    ledger.json / ledger.md  stage x domain scores, best checkpoint per domain, forgetting
    teachers.json            MOPD teachers chosen from the ledger
    plots/                   ledger heatmap, reward curves

Interrupted at any point (Ctrl-C, kill -9), the same command resumes: a stage whose model folder
exists is finished and skipped, a stage with checkpoints continues from the newest one, and an
evaluation is rerun only if its result was never written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from cascade_rl.config import EvalConfig, MOPDStage, PipelineConfig, RLStage, SFTStage, dump_config
from cascade_rl.engines.local import LocalScorer
from cascade_rl.eval.ledger import Ledger, LedgerRow, choose_teachers
from cascade_rl.eval.runner import evaluate, scores_to_json
from cascade_rl.logging import MetricsLogger, console
from cascade_rl.loops.common import is_finished, save_final
from cascade_rl.loops.objectives import TeacherRouter
from cascade_rl.loops.rl import run_rl
from cascade_rl.loops.sft import run_sft
from cascade_rl.model import load
from cascade_rl.plots import ledger_heatmap, reward_curves


class RecipeMismatchError(RuntimeError):
    """A run folder that holds a different recipe than the one asked to resume."""


@dataclass
class PipelineResult:
    ledger: Ledger
    final_model: Path
    run_dir: Path
    teachers: dict[str, dict[str, str]]
    plots: list[Path]
    stage_times: dict[str, float]


def _check_recipe(config: PipelineConfig, run_dir: Path) -> None:
    path = run_dir / "recipe.yaml"
    resolved = config.model_dump(mode="json")
    if path.is_file():
        previous = yaml.safe_load(path.read_text())
        if previous != resolved:
            raise RecipeMismatchError(
                f"{run_dir} holds a run of a different recipe; use another output_dir or delete the folder"
            )
        return
    dump_config(config, path)


def _dtype(config: PipelineConfig) -> str:
    if config.model.dtype != "auto":
        return config.model.dtype
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def _evaluate_into(
    ledger: Ledger, name: str, model_dir: Path, eval_cfg: EvalConfig, stage_dir: Path, dtype: str, wall: float
) -> None:
    """Evaluate a finished model once; the result file makes it idempotent across resumes."""
    result_file = stage_dir / "eval.json"
    if not result_file.is_file():
        model, tokenizer = load(model_dir, dtype=dtype)
        scores = evaluate(model, tokenizer, eval_cfg, samples_file=stage_dir / "samples.jsonl", label=f"eval:{name}")
        tmp = result_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(scores_to_json(scores), indent=2))
        tmp.replace(result_file)
    scores = json.loads(result_file.read_text())
    ledger.add(
        LedgerRow(
            stage=name,
            checkpoint=str(model_dir),
            scores={s["key"]: s["avg"] for s in scores},
            counts={s["key"]: s["prompts"] * s["samples"] for s in scores},
            errors={s["key"]: s["stderr"] for s in scores if "stderr" in s},
            wall_time=wall,
        )
    )


def build_teachers(stage: MOPDStage, config: PipelineConfig, ledger: Ledger, dtype: str) -> tuple[TeacherRouter, dict]:
    from cascade_rl.data.build import domain_of

    domains = sorted({domain_of(p) for p in stage.prompts})
    thinking = stage.thinking if stage.thinking in config.eval.thinking else config.eval.thinking[0]
    chosen = choose_teachers(ledger, domains, thinking, stage.teachers)
    default = stage.default_teacher or max(ledger.rows, key=lambda r: sum(r.scores.values())).checkpoint
    paths = {**chosen, "__default__": default}

    def factory(path: str):
        return lambda: LocalScorer(load(path, dtype=dtype)[0].eval())

    if stage.teachers_on_demand:
        scorers = {d: factory(p) for d, p in paths.items()}
    else:
        cache: dict[str, LocalScorer] = {}
        for p in dict.fromkeys(paths.values()):
            cache[p] = LocalScorer(load(p, dtype=dtype)[0].eval())
        scorers = {d: cache[p] for d, p in paths.items()}
    return TeacherRouter(scorers, default="__default__"), {"domains": chosen, "default": default}


def _check_tokenizer(student_dir: Path, teacher_dirs: list[str]) -> None:
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(student_dir).get_vocab()
    for t in dict.fromkeys(teacher_dirs):
        if AutoTokenizer.from_pretrained(t).get_vocab() != vocab:
            raise ValueError(
                f"teacher {t} does not share the student's tokenizer ({student_dir}); MOPD needs one vocabulary"
            )


def run_pipeline(config: PipelineConfig) -> PipelineResult:
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_recipe(config, run_dir)
    dtype = _dtype(config)
    ledger = Ledger.load(run_dir)
    base_dir = run_dir / "base" / "model"
    if not is_finished(base_dir):
        model, tokenizer = (
            load(
                config.model.spec,
                dtype=dtype,
                seed=config.model.seed,
                vocab_size=config.model.vocab_size,
                **config.model.tiny,
            )
            if config.model.spec.startswith("tiny:")
            else load(config.model.spec, dtype=dtype)
        )
        save_final(model, tokenizer, base_dir)
    if not ledger.has("base"):
        _evaluate_into(ledger, "base", base_dir, config.eval, run_dir / "base", dtype, 0.0)
        ledger.save(run_dir)
    current, teachers_used, times = base_dir, {}, {}
    for index, stage in enumerate(config.stages):
        stage_dir = run_dir / "stages" / f"{index:02d}-{stage.name}"
        model_dir = stage_dir / "model"
        started = time.perf_counter()
        if not is_finished(model_dir):
            console.rule(f"stage {index + 1}/{len(config.stages)}: {stage.name} ({stage.type})")
            model, tokenizer = load(current, dtype=dtype)
            with MetricsLogger(stage_dir) as logger:
                if isinstance(stage, SFTStage):
                    run_sft(stage, model, tokenizer, stage_dir, logger=logger)
                else:
                    router = None
                    if isinstance(stage, MOPDStage):
                        router, teachers_used[stage.name] = build_teachers(stage, config, ledger, dtype)
                        used = teachers_used[stage.name]
                        _check_tokenizer(current, [*used["domains"].values(), used["default"]])
                        (run_dir / "teachers.json").write_text(json.dumps(teachers_used, indent=2))
                    assert isinstance(stage, RLStage)
                    run_rl(stage, model, tokenizer, stage_dir, teachers=router, logger=logger)
            del model
        times[stage.name] = time.perf_counter() - started
        if not ledger.has(stage.name):
            _evaluate_into(ledger, stage.name, model_dir, config.eval, stage_dir, dtype, times[stage.name])
            ledger.save(run_dir)
        current = model_dir
    plots = _plots(config, run_dir, ledger)
    if (run_dir / "teachers.json").is_file():
        teachers_used = json.loads((run_dir / "teachers.json").read_text())
    return PipelineResult(ledger, current, run_dir, teachers_used, plots, times)


def _plots(config: PipelineConfig, run_dir: Path, ledger: Ledger) -> list[Path]:
    folder = run_dir / "plots"
    folder.mkdir(exist_ok=True)
    metrics = {
        s.name: run_dir / "stages" / f"{i:02d}-{s.name}" / "metrics.jsonl"
        for i, s in enumerate(config.stages)
        if s.type != "sft"
    }
    return [ledger_heatmap(ledger, folder / "ledger.png"), reward_curves(metrics, folder / "reward_curves.png")]

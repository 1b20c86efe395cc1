"""Cascade RL: stages in order, each from the previous checkpoint, every domain evaluated after each.

Run folder::

    recipe.yaml              the resolved recipe (every default explicit)
    base/model               the starting model as an HF folder
    stages/NN-name/          checkpoints/, metrics.jsonl, model/ (the stage's output), eval.json, samples.jsonl,
                             wall_time.txt (seconds the run that finished the stage spent on it)
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cascade_rl.config import MOPDStage, PipelineConfig, RewardModelStage, RLStage, SFTStage, dump_config
from cascade_rl.data.build import prompt_domains
from cascade_rl.engines.backend import Backend, build_backend, resolve_dtype, tiny_options
from cascade_rl.eval.ledger import BASE, Ledger, LedgerRow, best_overall, choose_teachers
from cascade_rl.eval.parallel import Evaluator, make_evaluator
from cascade_rl.eval.runner import TEST, scores_to_json
from cascade_rl.files import write_text_atomic
from cascade_rl.logging import MetricsLogger, console
from cascade_rl.loops.common import check_writable, is_finished
from cascade_rl.loops.objectives import TeacherRouter
from cascade_rl.loops.preflight import preflight
from cascade_rl.loops.rl import run_rl
from cascade_rl.loops.sft import run_sft
from cascade_rl.plots import ledger_heatmap, reward_curves

STAGE_TIME = "wall_time.txt"


class RecipeMismatchError(RuntimeError):
    """A run folder that holds a different recipe than the one asked to resume."""


@dataclass
class PipelineResult:
    ledger: Ledger
    final_model: Path
    run_dir: Path
    teachers: dict[str, dict[str, str]]
    plots: list[Path]
    stage_times: dict[str, float]  # seconds per stage, from the run that finished it (none recorded: absent)


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


def _validation_domains(config: PipelineConfig, index: int) -> set[str]:
    """The domains whose validation sets the model of stage ``index`` (-1: the base) is scored on: those a later
    MOPD stage chooses its teachers for; a model no MOPD stage can pick (the base, unless ``base_as_teacher``)
    needs none."""
    later = [s for s in config.stages[index + 1 :] if isinstance(s, MOPDStage) and (index >= 0 or s.base_as_teacher)]
    return {d for s in later for d in prompt_domains(s.prompts, "rl") if d not in s.teachers}


def _evaluate_into(
    ledger: Ledger,
    evaluator: Evaluator,
    name: str,
    model_dir: Path,
    config: PipelineConfig,
    stage_dir: Path,
    wall: float,
    index: int,
) -> None:
    """Evaluate a finished model once; the result file makes it idempotent across resumes."""
    result_file = stage_dir / "eval.json"
    if not result_file.is_file():
        stage_dir.mkdir(parents=True, exist_ok=True)
        scores = evaluator.evaluate(
            model_dir,
            config.eval,
            validation=_validation_domains(config, index),
            samples_file=stage_dir / "samples.jsonl",
            label=f"eval:{name}",
        )
        write_text_atomic(result_file, json.dumps(scores_to_json(scores), indent=2))
    scores = json.loads(result_file.read_text())
    test = [s for s in scores if s.get("split", TEST) == TEST]
    ledger.add(
        LedgerRow(
            stage=name,
            checkpoint=str(model_dir),
            scores={s["key"]: s["avg"] for s in test},
            counts={s["key"]: s["prompts"] * s["samples"] for s in test},
            errors={s["key"]: s["stderr"] for s in test if "stderr" in s},
            validation={s["key"]: s["avg"] for s in scores if s.get("split", TEST) != TEST},
            episodes={
                s["key"]: {"turns": s["turns"], "tool_errors": s["tool_errors"]}
                for s in test
                if s.get("turns", 1.0) > 1.0 or s.get("tool_errors", 0.0) > 0
            },
            wall_time=wall,
        )
    )


def build_teachers(
    stage: MOPDStage, config: PipelineConfig, ledger: Ledger, backend: Backend
) -> tuple[TeacherRouter, dict]:
    """One scorer per distinct teacher checkpoint: explicit ones, else each domain's best on validation."""
    domains = prompt_domains(stage.prompts, "rl")
    thinking = stage.thinking if stage.thinking in config.eval.thinking else config.eval.thinking[0]
    chosen = choose_teachers(
        ledger,
        domains,
        thinking,
        stage.teachers,
        include_base=stage.base_as_teacher,
        fallback=stage.default_teacher is not None,
    )
    default = stage.default_teacher
    if default is None and not chosen:
        default = best_overall(ledger, stage.base_as_teacher).checkpoint
    paths = {**chosen, **({"__default__": default} if default else {})}
    loaded = {p: backend.scorer(p, offload=stage.teachers_on_demand) for p in dict.fromkeys(paths.values())}
    router = TeacherRouter({d: loaded[p] for d, p in paths.items()}, default="__default__" if default else None)
    return router, {"domains": chosen, "default": default}


def _check_tokenizer(student_dir: Path, teacher_dirs: list[str]) -> None:
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(student_dir).get_vocab()
    for t in dict.fromkeys(teacher_dirs):
        if AutoTokenizer.from_pretrained(t).get_vocab() != vocab:
            raise ValueError(
                f"teacher {t} does not share the student's tokenizer ({student_dir}); MOPD needs one vocabulary"
            )


def _base_model(config: PipelineConfig, run_dir: Path) -> Path:
    """The starting model as an HF folder in the run (every stage then starts from a folder)."""
    from cascade_rl.model import load, save

    base_dir = run_dir / BASE / "model"
    if not is_finished(base_dir):
        m = config.model
        model, tokenizer = load(m.spec, dtype=resolve_dtype(m.dtype), **tiny_options(m))
        from cascade_rl.checkpoint import atomic_directory

        with atomic_directory(base_dir) as tmp:
            save(model, tokenizer, tmp)
        del model
    return base_dir


@dataclass
class StageContext:
    """What a stage runner gets: where it runs, the model it starts from, the run's record so far."""

    index: int
    stage_dir: Path
    start: Path
    config: PipelineConfig
    ledger: Ledger
    backend: Backend
    teachers_used: dict[str, dict]
    logger: MetricsLogger


def _sft(stage: SFTStage, ctx: StageContext) -> None:
    run_sft(stage, ctx.backend, ctx.start, ctx.stage_dir, logger=ctx.logger)


def _rl(stage: RLStage, ctx: StageContext) -> None:
    run_rl(stage, ctx.backend, ctx.start, ctx.stage_dir, logger=ctx.logger)


def _mopd(stage: MOPDStage, ctx: StageContext) -> None:
    run_dir = Path(ctx.config.output_dir)
    router, used = build_teachers(stage, ctx.config, ctx.ledger, ctx.backend)
    ctx.teachers_used[stage.name] = used
    _check_tokenizer(ctx.start, [*used["domains"].values(), *([used["default"]] if used["default"] else [])])
    write_text_atomic(run_dir / "teachers.json", json.dumps(ctx.teachers_used, indent=2))
    run_rl(stage, ctx.backend, ctx.start, ctx.stage_dir, teachers=router, logger=ctx.logger)


def _reward_model(stage: RewardModelStage, ctx: StageContext) -> None:
    from cascade_rl.loops.reward_model import run_reward_model

    run_reward_model(stage, ctx.backend, ctx.start, ctx.stage_dir, logger=ctx.logger)


# Stage type -> (runner, whether its output is the policy the next stage starts from and the ledger scores)
STAGE_RUNNERS: dict[str, tuple[Callable[[Any, StageContext], None], bool]] = {
    "sft": (_sft, True),
    "rl": (_rl, True),
    "mopd": (_mopd, True),
    "reward_model": (_reward_model, False),  # a reward for later stages, not a policy
}


def stage_dir_of(config: PipelineConfig, index: int) -> Path:
    return Path(config.output_dir) / "stages" / f"{index:02d}-{config.stages[index].name}"


def resolve_stage_refs(stage: Any, config: PipelineConfig) -> Any:
    """``stage:NAME`` in a stage's reward arguments means the model folder stage NAME wrote (a reward model)."""
    reward = getattr(stage, "reward", None)
    if reward is None:
        return stage
    names = {s.name: i for i, s in enumerate(config.stages)}
    args = dict(reward.args)
    for key, value in reward.args.items():
        if isinstance(value, str) and value.startswith("stage:"):
            args[key] = str(stage_dir_of(config, names[value.removeprefix("stage:")]) / "model")
    return stage.model_copy(update={"reward": reward.model_copy(update={"args": args})})


def run_pipeline(config: PipelineConfig, backend: Backend | None = None) -> PipelineResult:
    """Run the cascade (resuming what a previous run of the same recipe left); ``backend`` defaults to the
    one the recipe's ``engine`` section names."""
    from cascade_rl.rewards.sandbox import set_min_isolation

    run_dir = Path(config.output_dir)
    check_writable(run_dir)
    _check_recipe(config, run_dir)
    set_min_isolation(config.sandbox.min_isolation)
    preflight(config)
    if backend is not None:
        return _run_stages(config, backend, run_dir)
    backend = build_backend(config.engine, config.model)
    try:
        return _run_stages(config, backend, run_dir)
    finally:
        backend.close()  # the engines it started (actors, vLLM processes)


def _run_stages(config: PipelineConfig, backend: Backend, run_dir: Path) -> PipelineResult:
    evaluator = make_evaluator(config.eval, config.engine, config.model, backend)
    try:
        return _stages(config, backend, evaluator, run_dir)
    finally:
        evaluator.close()


def _stages(config: PipelineConfig, backend: Backend, evaluator: Evaluator, run_dir: Path) -> PipelineResult:
    ledger = Ledger.load(run_dir)
    base_dir = _base_model(config, run_dir)
    if config.eval.base and not ledger.has(BASE):
        _evaluate_into(ledger, evaluator, BASE, base_dir, config, run_dir / BASE, 0.0, -1)
        ledger.save(run_dir)
    current, teachers_used, times = base_dir, {}, {}
    for index, stage in enumerate(config.stages):
        stage_dir = stage_dir_of(config, index)
        model_dir = stage_dir / "model"
        runner, is_policy = STAGE_RUNNERS[stage.type]
        timing = stage_dir / STAGE_TIME
        if not is_finished(model_dir):
            console.rule(f"stage {index + 1}/{len(config.stages)}: {stage.name} ({stage.type})")
            started = time.perf_counter()
            with MetricsLogger(stage_dir) as logger:
                ctx = StageContext(index, stage_dir, current, config, ledger, backend, teachers_used, logger)
                runner(resolve_stage_refs(stage, config), ctx)
            times[stage.name] = time.perf_counter() - started
            write_text_atomic(timing, f"{times[stage.name]:.3f}\n")
        elif timing.is_file():  # a stage finished by an earlier run reports that run's time
            times[stage.name] = float(timing.read_text())
        if not is_policy:
            continue
        if not ledger.has(stage.name):
            wall = times.get(stage.name, 0.0)
            _evaluate_into(ledger, evaluator, stage.name, model_dir, config, stage_dir, wall, index)
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
        if s.type in ("rl", "mopd")
    }
    return [ledger_heatmap(ledger, folder / "ledger.png"), reward_curves(metrics, folder / "reward_curves.png")]

"""Preflight: every stage's inputs checked before the first stage starts.

A recipe that names a missing file, a spec type without a verifier or a MOPD domain that no ledger
column will ever score would otherwise fail only when its stage starts, hours into the run. Here
every stage's prompts are loaded and their specs validated, SFT sources are found, every MOPD
teacher domain is resolved, and, when any prompt runs code, the sandbox's isolation is checked
against the recipe's minimum and printed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from cascade_rl.config import DataConfig, EvalConfig, MOPDStage, PipelineConfig, RewardModelStage, RLStage, SFTStage
from cascade_rl.data.build import check_prompt_spec, prompts_for
from cascade_rl.data.pairs import pair_source
from cascade_rl.data.sources import DataSourceError
from cascade_rl.data.tasks import TASKS, get_task
from cascade_rl.logging import console
from cascade_rl.rewards import SpecError
from cascade_rl.rewards.reward_fn import reward_types
from cascade_rl.types import Prompt


class PreflightError(ValueError):
    """Problems found before any training; the message lists every one of them."""


def _load(config: DataConfig, split: str, where: str, problems: list[str]) -> list[Prompt]:
    try:
        return prompts_for(config, split)
    except (DataSourceError, KeyError, ValueError) as exc:
        problems.append(f"{where}: {exc}")
        return []


def _check_specs(prompts: Iterable[Prompt], where: str, problems: list[str]) -> set[str]:
    """Validate every prompt (reporting the first bad one of the source); returns the spec types seen."""
    kinds: set[str] = set()
    for p in prompts:
        try:
            check_prompt_spec(p.spec, p.env)
        except (SpecError, ValueError) as exc:
            problems.append(f"{where}: prompt {p.uid}: {exc}")
            break
        kinds.add(p.spec["type"])
        if p.env == "python_tool":
            kinds.add("code")  # the model runs code through the tool: the sandbox must be fit for it
    return kinds


def _sft_sources(stage: SFTStage | RewardModelStage, where: str, problems: list[str]) -> None:
    for j, data in enumerate(stage.data):
        if data.task is not None:
            try:
                get_task(data.task)
            except KeyError as exc:
                problems.append(f"{where}.data.{j}: {exc.args[0]}")
        elif not Path(data.path or "").exists():
            problems.append(f"{where}.data.{j}: data not found: {data.path}")


def _pair_files(stage: RewardModelStage, where: str, problems: list[str]) -> None:
    """Preference files are read in full (a reward-model stage usually starts hours in, after SFT)."""
    for key, sources in (("data", stage.data), ("eval_data", stage.eval_data)):
        for j, data in enumerate(sources):
            if data.task is not None and data.task in TASKS and not hasattr(get_task(data.task), "pair_of"):
                problems.append(f"{where}.{key}.{j}: task {data.task!r} makes no preference pairs")
            if data.path is not None and Path(data.path).exists():
                try:
                    pair_source(data, "train")
                except DataSourceError as exc:
                    problems.append(f"{where}.{key}.{j}: {exc}")


def _teacher_domains(
    stage: MOPDStage, where: str, domains: Sequence[str], evaluated: set[str], problems: list[str]
) -> None:
    for domain, path in stage.teachers.items():
        if not (Path(path) / "config.json").is_file():
            problems.append(f"{where}.teachers.{domain}: no model folder at {path}")
    if stage.default_teacher and not (Path(stage.default_teacher) / "config.json").is_file():
        problems.append(f"{where}.default_teacher: no model folder at {stage.default_teacher}")
    for domain in domains:
        if domain not in stage.teachers and domain not in evaluated and stage.default_teacher is None:
            problems.append(
                f"{where}: MOPD domain {domain!r} has no teacher: no ledger column will score it "
                f"(evaluated domains: {', '.join(sorted(evaluated)) or 'none'}); add it to eval.domains / "
                "eval.validation, name its teacher in the stage's 'teachers', or set a 'default_teacher'"
            )


def _eval_sets(config: EvalConfig, problems: list[str]) -> tuple[set[str], set[str]]:
    """(domains with validation scores, spec types) of the evaluation sets."""
    from cascade_rl.eval.runner import validation_sets

    kinds: set[str] = set()
    for j, data in enumerate(config.domains):
        kinds |= _check_specs(_load(data, "test", f"eval.domains.{j}", problems), f"eval.domains.{j}", problems)
    validated: set[str] = set()
    for j, data in enumerate(validation_sets(config)):
        prompts = _load(data, "validation", f"eval.validation.{j}", problems)
        kinds |= _check_specs(prompts, f"eval.validation.{j}", problems)
        validated |= {p.domain for p in prompts}
    return validated, kinds


def _check_stage_refs(stage: RLStage | MOPDStage, earlier: Sequence[object], where: str, problems: list[str]) -> None:
    """A ``stage:NAME`` reward argument must name a stage that runs before this one."""
    names = [getattr(s, "name", "") for s in earlier]
    for key, value in stage.reward.args.items():
        if isinstance(value, str) and value.startswith("stage:") and value.removeprefix("stage:") not in names:
            problems.append(
                f"{where}.reward.args.{key}: {value!r} names no earlier stage (earlier: {', '.join(names) or 'none'})"
            )


def preflight(config: PipelineConfig, stages: Sequence[int] | None = None) -> None:
    """Check the recipe's stages (all, or the given indices) and the evaluation sets; raise with every problem."""
    problems: list[str] = []
    validated, kinds = _eval_sets(config.eval, problems)
    for i, stage in enumerate(config.stages):
        if stages is not None and i not in stages:
            continue
        where = f"stages.{i} ({stage.name})"
        if isinstance(stage, SFTStage | RewardModelStage):
            _sft_sources(stage, where, problems)
            if isinstance(stage, RewardModelStage):
                _pair_files(stage, where, problems)
            continue
        assert isinstance(stage, RLStage | MOPDStage)
        if stage.reward.type not in reward_types():
            problems.append(f"{where}.reward.type: unknown {stage.reward.type!r}; registered: {reward_types()}")
        _check_stage_refs(stage, config.stages[:i], where, problems)
        domains: set[str] = set()
        for j, data in enumerate(stage.prompts):
            loaded = _load(data, "rl", f"{where}.prompts.{j}", problems)
            kinds |= _check_specs(loaded, f"{where}.prompts.{j}", problems)
            domains |= {p.domain for p in loaded}
        if isinstance(stage, MOPDStage):
            _teacher_domains(stage, where, sorted(domains), validated, problems)
    if "code" in kinds and not problems:
        _check_sandbox(problems)
    if problems:
        raise PreflightError("the recipe cannot run:\n" + "\n".join(f"  {p}" for p in problems))


def _check_sandbox(problems: list[str]) -> None:
    """Code runs in this recipe: say which isolation is in effect, and refuse a level below the minimum."""
    from cascade_rl.rewards.sandbox import ISOLATION_LEVELS, available_isolation, describe_isolation, isolation_level
    from cascade_rl.rewards.sandbox import min_isolation as required

    console.print(describe_isolation(), highlight=False)
    order = list(ISOLATION_LEVELS)
    if order.index(isolation_level(available_isolation())) < order.index(required()):
        problems.append(f"{describe_isolation()}: model-written code would run below the required isolation")

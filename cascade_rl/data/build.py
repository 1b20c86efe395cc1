"""Recipe data configs -> SFT records and RL / eval prompts (files or procedural tasks)."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path

from cascade_rl.config import DataConfig
from cascade_rl.data.sources import DataSourceError, Record, SourceStats, blend, read_records, validate_record
from cascade_rl.data.tasks import make_split
from cascade_rl.logging import console
from cascade_rl.types import Prompt


def thinking_modes(config: DataConfig) -> tuple[bool, ...]:
    """The thinking modes a source's ``thinking`` field allows (SFT variants; evaluation modes)."""
    return {"both": (True, False), "on": (True,), "off": (False,)}[config.thinking]


def task_options(config: DataConfig) -> dict[str, int]:
    """The data entry's task options (only the ones it sets)."""
    return {} if config.context_length is None else {"context_length": config.context_length}


def _task_records(config: DataConfig) -> tuple[list[Record], SourceStats]:
    assert config.task is not None
    modes = thinking_modes(config)
    split = config.split or "sft"  # disjoint from the RL prompts, validation and test sets
    problems = make_split(
        config.task, split, config.n, seed=config.seed, difficulty=config.difficulty, **task_options(config)
    )  # type: ignore[arg-type]
    records = [validate_record(p.sft_record(thinking)) for p in problems for thinking in modes]
    name = f"task:{config.task}@{config.difficulty}"
    return records, SourceStats(name=name, read=len(records), used=len(records))


def sft_records(
    configs: Sequence[DataConfig], *, mode: str = "epochs", seed: int = 0
) -> tuple[list[Record], list[SourceStats]]:
    """Every source read and validated, then blended by weight; per-source counts for the report."""
    per_source, stats = [], []
    for config in configs:
        if config.task is not None:
            records, stat = _task_records(config)
        else:
            records, stat = read_records(Path(config.path or ""), on_error=config.on_error)
            if not records:  # an empty source is a mistake to report, not a source to blend silently away
                detail = f"all {stat.read} records were malformed and skipped" if stat.read else "it holds no records"
                raise DataSourceError(f"{config.path}: no usable SFT records ({detail})")
            if config.domain:
                records = [Record(r.messages, r.tools, config.domain) for r in records]
        per_source.append(records)
        stats.append(stat)
    total = sum(len(r) for r in per_source) if mode == "ratio" else None
    mixed = blend(per_source, [c.weight for c in configs], mode=mode, total=total, seed=seed)  # type: ignore[arg-type]
    return mixed, stats


def _file_prompts(config: DataConfig) -> list[Prompt]:
    """RL prompt files: JSONL of ``{"messages", "spec", "domain"?, "tools"?, "id"?}``."""
    path = Path(config.path or "")
    if not path.is_file():
        raise DataSourceError(f"{path}: prompt file not found")
    prompts, skipped = [], []
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                record = validate_record(obj, require_assistant=False)
                spec = obj["spec"]
                if not isinstance(spec, dict) or "type" not in spec:
                    raise ValueError("'spec' must be a mapping with a 'type' (the verifier)")
                domain, env = obj.get("domain"), obj.get("env")
                for key, value in (("domain", domain), ("env", env)):
                    if value is not None and (not isinstance(value, str) or not value):
                        raise ValueError(f"'{key}' must be a non-empty string, got {value!r}")
                check_prompt_spec(spec, config.env or env or "single_turn")
            except (UnicodeDecodeError, ValueError, KeyError) as exc:
                reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
                if config.on_error == "raise":
                    raise DataSourceError(f"{path}:{line_no}: {reason}") from None
                skipped.append(f"{path}:{line_no}: {reason}")
                continue
            prompts.append(
                Prompt(
                    record.messages,
                    spec,
                    resolve_domain(config, domain),
                    record.tools,
                    str(obj.get("id", f"{path.name}:{line_no}")),
                    env=config.env or env or "single_turn",
                )
            )
    if not prompts:
        detail = f"all {len(skipped)} lines were malformed and skipped" if skipped else "it holds no records"
        raise DataSourceError(f"{path}: no usable prompts ({detail})")
    if skipped:
        console.print(
            f"{path}: {len(prompts)} prompts used, {len(skipped)} malformed lines skipped (first: {skipped[0]})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return prompts


def check_prompt_spec(spec: dict, env: str) -> None:
    """The environment exists and takes the spec; a spec it does not score itself needs a verifier.

    Raises ``ValueError`` (``SpecError`` for spec problems) naming what is wrong.
    """
    from cascade_rl.envs import env_class
    from cascade_rl.rewards import check_spec

    factory = env_class(env)
    if hasattr(factory, "check_spec"):
        factory.check_spec(spec)
    if not getattr(factory, "rewards_itself", False):
        check_spec(spec)


def resolve_domain(config: DataConfig, record_domain: str | None = None) -> str:
    """THE domain of a prompt or record (its ledger column, its MOPD teacher, its routing): the config's
    ``domain`` when set, else the record's own ``domain``, else the task name or the file stem."""
    return config.domain or record_domain or config.task or Path(config.path or "").stem


def prompts_for(config: DataConfig, split: str) -> list[Prompt]:
    """Prompts of one config: a task's ``config.split`` (default ``split``: rl, validation or test), or a
    prompt file (all its records). Every prompt's ``domain`` comes from ``resolve_domain``."""
    key: tuple = (config, split)
    if config.path is not None and Path(config.path).is_file():
        stat = Path(config.path).stat()
        key += (stat.st_mtime_ns, stat.st_size)  # an edited file is read again
    return list(_prompts_cached(*key))


@functools.lru_cache(maxsize=128)
def _prompts_cached(config: DataConfig, split: str, *_file_version: int) -> tuple[Prompt, ...]:
    if config.task is None:
        return tuple(_file_prompts(config))
    chosen = config.split or split
    problems = make_split(
        config.task, chosen, config.n, seed=config.seed, difficulty=config.difficulty, **task_options(config)
    )  # type: ignore[arg-type]
    return tuple(
        dataclasses.replace(p.to_prompt(), domain=resolve_domain(config), env=config.env or p.env) for p in problems
    )


def prompt_domains(configs: Sequence[DataConfig], split: str) -> list[str]:
    """The domains the configs' prompts resolve to (a mixed file contributes each of its records' domains)."""
    return sorted({p.domain for c in configs for p in prompts_for(c, split)})

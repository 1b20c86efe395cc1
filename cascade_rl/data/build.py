"""Recipe data configs -> SFT records and RL / eval prompts (files or procedural tasks)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from cascade_rl.config import DataConfig
from cascade_rl.data.sources import DataSourceError, Record, SourceStats, blend, read_records, validate_record
from cascade_rl.data.tasks import make_split
from cascade_rl.logging import console
from cascade_rl.types import Prompt


def _task_records(config: DataConfig) -> tuple[list[Record], SourceStats]:
    assert config.task is not None
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[config.thinking]
    problems = make_split(config.task, "train", config.n, seed=config.seed, difficulty=config.difficulty)
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
            except (UnicodeDecodeError, ValueError, KeyError) as exc:
                reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
                if config.on_error == "raise":
                    raise DataSourceError(f"{path}:{line_no}: {reason}") from None
                skipped.append(f"{path}:{line_no}: {reason}")
                continue
            domain = config.domain or obj.get("domain") or domain_of(config)
            prompts.append(
                Prompt(record.messages, spec, domain, record.tools, str(obj.get("id", f"{path.name}:{line_no}")))
            )
    if skipped:
        console.print(
            f"{path}: {len(prompts)} prompts used, {len(skipped)} malformed lines skipped (first: {skipped[0]})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return prompts


def prompts_for(config: DataConfig, split: str = "train") -> list[Prompt]:
    """Prompts of one config: a task's train or held-out eval split, or a prompt file.

    A prompt's domain (its ledger column and MOPD teacher) is the config's ``domain`` when set, else
    a prompt file record's own ``domain``, else ``domain_of(config)`` (the task name or file stem).
    """
    if config.task is not None:
        problems = make_split(config.task, split, config.n, seed=config.seed, difficulty=config.difficulty)  # type: ignore[arg-type]
        prompts = [p.to_prompt() for p in problems]
        if config.domain:
            prompts = [dataclasses.replace(p, domain=config.domain) for p in prompts]
        return prompts
    return _file_prompts(config)


def domain_of(config: DataConfig) -> str:
    """The domain a data config stands for: its ``domain``, else the task name, else the file stem."""
    return config.domain or config.task or Path(config.path or "").stem

"""Corrupt-data drill: seeded random corruptions of SFT records, RL prompts, preference pairs and recipes.

Every run either stops before any training with ``file:line: reason`` (or the recipe field's path),
or, with ``on_error: skip``, skips and counts exactly the bad records. Never a traceback of another
kind, never a silent drop: read = used + skipped.
"""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade_rl.config import ConfigError, DataConfig, load_config
from cascade_rl.data.build import sft_records
from cascade_rl.data.pairs import pair_source
from cascade_rl.data.sources import DataSourceError, read_records
from cascade_rl.data.tasks import make_split
from cascade_rl.loops.preflight import PreflightError, preflight

SFT = [p.sft_record(False) for p in make_split("tool_call", "sft", 6, seed=0)]
PROMPTS = [{"messages": list(p.messages), "spec": p.spec, "tools": p.tools} for p in make_split("math", "rl", 6)]
PAIRS = [
    {"prompt": list(p.prompt), "chosen": p.chosen, "rejected": p.rejected}
    for p in pair_source(DataConfig(task="chat", n=6), "train")[0]
]
WRONG = [7, 2.5, True, None, [], {}, ["x"], {"k": 1}, ""]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key / index path inside a JSON value."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple, value: Any, delete: bool = False) -> None:
    for key in path[:-1]:
        obj = obj[key]
    if delete:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


def corrupt_line(record: dict, rng: random.Random, huge: bool) -> bytes:
    """One record, damaged in one of several ways (some leave it valid: a drill must tell them apart)."""
    kinds = ["truncate", "wrong_type", "missing", "unknown_spec", "utf8", "not_object"]
    kind = "huge" if huge else rng.choice(kinds)
    obj = copy.deepcopy(record)
    if kind in ("wrong_type", "missing"):
        path = rng.choice(_paths(obj))
        _set(obj, path, rng.choice(WRONG), delete=kind == "missing")
    if kind == "unknown_spec" and "spec" in obj:
        obj["spec"]["type"] = "haiku"
    if kind == "not_object":
        return json.dumps([obj]).encode()
    if kind == "huge":  # a 20 MB line, half the time not even JSON
        blob = "x" * (20 << 20)
        return blob.encode() if rng.random() < 0.5 else json.dumps({**obj, "pad": blob}).encode()
    line = json.dumps(obj).encode()
    if kind == "truncate":
        return line[: rng.randrange(1, len(line) - 1)]
    if kind == "utf8":
        cut = rng.randrange(len(line))
        return line[:cut] + b"\xff\xfe" + line[cut:]
    return line


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def _drill_file(tmp_path: Path, records: list[dict], seed: int) -> tuple[Path, int]:
    """A JSONL file of good records with one corrupted line at a random place; (path, its line number)."""
    rng = random.Random(seed)
    lines = [json.dumps(r).encode() for r in records]
    at = rng.randrange(len(lines))
    lines[at] = corrupt_line(records[at], rng, huge=seed % 40 == 0)  # 20 MB lines now and then: slow to write
    path = tmp_path / f"data-{seed}.jsonl"
    _write(path, lines)
    return path, at + 1


@pytest.mark.parametrize("seed", range(120))
def test_sft_records(tmp_path, seed):
    path, line = _drill_file(tmp_path, SFT, seed)
    try:
        records, stats = sft_records([DataConfig(path=str(path))])
    except DataSourceError as exc:
        assert str(exc).startswith(f"{path}:{line}: "), exc  # the damaged line, by number
    else:
        assert len(records) == len(SFT)  # the corruption left a valid record: nothing was lost
        return
    records, (stats,) = sft_records([DataConfig(path=str(path), on_error="skip")])
    assert (stats.read, stats.used, stats.skipped) == (len(SFT), len(SFT) - 1, 1)
    assert stats.reasons[0].startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("seed", range(120))
def test_rl_prompts_stop_in_preflight(tmp_path, seed):
    path, line = _drill_file(tmp_path, PROMPTS, seed + 1000)
    recipe = {"stages": [{"type": "rl", "prompts": [{"path": str(path)}]}], "output_dir": str(tmp_path / "run")}
    try:
        preflight(load_config(recipe))
    except PreflightError as exc:
        text = str(exc)
        assert f"{path}:{line}: " in text or f"prompt data-{seed + 1000}.jsonl:{line}: " in text, text
    else:
        return  # still a valid prompt
    skip = {**recipe, "stages": [{"type": "rl", "prompts": [{"path": str(path), "on_error": "skip"}]}]}
    preflight(load_config(skip))  # the bad line is skipped and counted (what prompts_for prints)
    from cascade_rl.data.build import prompts_for

    assert len(prompts_for(DataConfig(path=str(path), on_error="skip"), "rl")) == len(PROMPTS) - 1


@pytest.mark.parametrize("seed", range(60))
def test_preference_pairs_stop_in_preflight(tmp_path, seed):
    """A reward-model stage usually starts after SFT: its pair files are checked before the first stage."""
    path, line = _drill_file(tmp_path, PAIRS, seed + 2000)
    stage = {"type": "reward_model", "data": [{"path": str(path)}], "steps": 1}
    recipe = {"stages": [{"type": "sft", "data": [{"task": "chat", "n": 4}]}, stage], "output_dir": str(tmp_path)}
    try:
        preflight(load_config(recipe))
    except PreflightError as exc:
        assert f"stages.1 (reward_model).data.0: {path}:{line}: " in str(exc), exc
    else:
        assert len(pair_source(DataConfig(path=str(path)), "train")[0]) == len(PAIRS)  # still a valid pair
        return
    pairs, stats = pair_source(DataConfig(path=str(path), on_error="skip"), "train")
    assert (stats.read, stats.used, stats.skipped, len(pairs)) == (len(PAIRS), len(PAIRS) - 1, 1, len(PAIRS) - 1)
    assert stats.reasons[0].startswith(f"{path}:{line}: ")


def test_empty_and_truncated_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataSourceError, match=r"empty.jsonl: no usable SFT records \(it holds no records\)"):
        sft_records([DataConfig(path=str(empty))])
    recipe = {"stages": [{"type": "rl", "prompts": [{"path": str(empty)}]}]}
    with pytest.raises(PreflightError, match=r"empty\.jsonl: no usable prompts"):
        preflight(load_config(recipe))
    bad = tmp_path / "bad.jsonl"
    _write(bad, [b"{", b"[1]"])
    with pytest.raises(DataSourceError, match="all 2 records were malformed and skipped"):
        sft_records([DataConfig(path=str(bad), on_error="skip")])
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table = pa.Table.from_pylist([{"messages": r["messages"]} for r in SFT * 400])
    whole = tmp_path / "whole.parquet"
    pq.write_table(table, whole, row_group_size=200)
    assert len(read_records(whole)[0]) == len(SFT) * 400
    for cut in (0.1, 0.5, 0.9):
        truncated = tmp_path / f"cut{cut}.parquet"
        data = whole.read_bytes()
        truncated.write_bytes(data[: int(len(data) * cut)])
        with pytest.raises(DataSourceError, match=re.escape(str(truncated))):
            read_records(truncated)


RECIPE = {
    "output_dir": "runs/x",
    "eval": {"domains": [{"task": "math", "n": 4}], "samples": 2},
    "stages": [
        {"type": "sft", "data": [{"task": "math", "n": 10}], "optim": {"lr": 1e-3}},
        {"type": "rl", "prompts": [{"task": "math", "n": 10}], "steps": 2},
        {"type": "mopd", "prompts": [{"task": "math", "n": 10}], "steps": 2},
    ],
}


@pytest.mark.parametrize("seed", range(60))
def test_recipes(tmp_path, seed):
    rng = random.Random(seed)
    tree = copy.deepcopy(RECIPE)
    kind = rng.choice(["wrong_type", "missing", "unknown_key", "yaml"])
    path = tmp_path / "recipe.yaml"
    if kind == "yaml":
        text = yaml.safe_dump(tree)
        path.write_text(text[: rng.randrange(1, len(text))] + rng.choice(["[", ": :", "\t- ", "{"]))
    else:
        target = rng.choice(_paths(tree))
        if kind == "unknown_key":
            parent = target[:-1] if not isinstance(_get(tree, target), dict) else target
            if isinstance(_get(tree, parent), dict):
                _set(tree, (*parent, "colour"), "blue")
        else:
            _set(tree, target, rng.choice(WRONG), delete=kind == "missing")
        path.write_text(yaml.safe_dump(tree))
    try:
        load_config(path)
    except ConfigError as exc:
        for line in str(exc).splitlines():  # each problem names the file, and its line or the field path
            assert re.match(rf"{re.escape(str(path))}(:\d+:\d+)?: ", line), line


def _get(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj

"""Recipe data -> RL prompts: prompt files, task prompts, and one domain label per prompt."""

from __future__ import annotations

import json

import pytest

from cascade_rl.config import DataConfig
from cascade_rl.data.build import prompt_domains, prompts_for, resolve_domain
from cascade_rl.data.sources import DataSourceError

USER = [{"role": "user", "content": "2 + 3?"}]


def _write(path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def test_prompt_file_fields_and_domain_precedence(tmp_path):
    path = tmp_path / "stem_mix.jsonl"
    _write(
        path,
        [
            {"messages": USER, "spec": {"type": "math", "answer": "5"}, "id": "q1"},
            {"messages": USER, "spec": {"type": "math", "answer": "5"}, "domain": "olympiad"},
            "",  # blank lines are not records
        ],
    )
    plain = prompts_for(DataConfig(path=str(path)), "rl")
    assert [p.uid for p in plain] == ["q1", "stem_mix.jsonl:2"]
    assert plain[0].messages == tuple(USER) and plain[0].spec == {"type": "math", "answer": "5"}
    # no config domain: a record's own domain, else the file's stem
    assert [p.domain for p in plain] == ["stem_mix", "olympiad"]
    # one resolver: the domains a mixed file stands for (ledger columns, MOPD teachers, routing) are its
    # prompts' domains, never the stem alone
    assert prompt_domains([DataConfig(path=str(path))], "rl") == ["olympiad", "stem_mix"]
    # a config domain wins over everything
    named = DataConfig(path=str(path), domain="math")
    assert [p.domain for p in prompts_for(named, "rl")] == ["math", "math"]
    assert prompt_domains([named], "test") == ["math"] == [resolve_domain(named, "olympiad")]


def test_task_prompts_take_the_config_domain():
    assert {p.domain for p in prompts_for(DataConfig(task="mcqa", n=5), "rl")} == {"mcqa"}
    renamed = DataConfig(task="mcqa", n=5, domain="stem_mcqa")
    assert {p.domain for p in prompts_for(renamed, "rl")} == set(prompt_domains([renamed], "rl")) == {"stem_mcqa"}


def test_task_prompts_come_from_the_purpose_split():
    from cascade_rl.data.tasks import split_of

    config = DataConfig(task="instruct", n=30)
    for split in ("rl", "validation", "test"):
        assert {split_of("instruct", p.messages[-1]["content"]) for p in prompts_for(config, split)} == {split}
    pinned = DataConfig(task="instruct", n=30, split="train")  # the recipe's split wins over the default
    assert {split_of("instruct", p.messages[-1]["content"]) for p in prompts_for(pinned, "rl")} <= {"sft", "rl"}


def test_an_edited_prompt_file_is_read_again(tmp_path):
    path = tmp_path / "p.jsonl"
    _write(path, [{"messages": USER, "spec": {"type": "math", "answer": "5"}}])
    assert len(prompts_for(DataConfig(path=str(path)), "rl")) == 1
    _write(path, [{"messages": USER, "spec": {"type": "math", "answer": "5"}}] * 3)
    assert len(prompts_for(DataConfig(path=str(path)), "rl")) == 3


def test_bad_prompt_lines_are_named_or_skipped(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    _write(
        path,
        [
            {"messages": USER, "spec": {"type": "math", "answer": "5"}},
            "{not json",
            {"messages": USER, "spec": {"answer": "5"}},
            {"messages": USER},
        ],
    )
    with pytest.raises(DataSourceError, match=r"p\.jsonl:2: "):
        prompts_for(DataConfig(path=str(path)), "rl")
    assert len(prompts_for(DataConfig(path=str(path), on_error="skip"), "rl")) == 1
    said = capsys.readouterr().out
    assert "1 prompts used, 3 malformed lines skipped (first: " in said and "p.jsonl:2: " in said
    _write(path, [{"messages": USER, "spec": {"answer": "5"}}])
    with pytest.raises(DataSourceError, match=r"p\.jsonl:1: 'spec' must be a mapping with a 'type'"):
        prompts_for(DataConfig(path=str(path)), "rl")
    _write(path, [{"messages": USER}])
    with pytest.raises(DataSourceError, match=r"p\.jsonl:1: missing 'spec'"):
        prompts_for(DataConfig(path=str(path)), "rl")
    with pytest.raises(DataSourceError, match="prompt file not found"):
        prompts_for(DataConfig(path=str(tmp_path / "absent.jsonl")), "rl")

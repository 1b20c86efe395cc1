"""Record validation, the three readers, the length policy, blends and reports."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_rl.data.sources import (
    MAX_KEPT_REASONS,
    BlendSpec,
    DataSourceError,
    Record,
    RecordError,
    SourceStats,
    apply_length_policy,
    blend,
    domain_token_report,
    format_report,
    load_blend,
    read_records,
    validate_record,
)

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}


def chat(*extra: dict, **top: object) -> dict:
    return {"messages": [USER, ASSISTANT, *extra], **top}


def write_jsonl(path: Path, lines: list[bytes | str | dict]) -> Path:
    raw = []
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        raw.append(line if isinstance(line, bytes) else line.encode())
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


# --------------------------------------------------------------------------- validate_record


def test_validate_normalises_tool_calls_content_parts_and_nulls():
    record = validate_record(
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
                {"role": "user", "content": "weather?", "tool_calls": None, "reasoning_content": None},
                {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "need a tool",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "get", "arguments": '{"city": "Oslo"}'}},
                        {"name": "now", "arguments": {}, "id": 7},
                    ],
                },
                {"role": "tool", "content": "rain"},
                {"role": "assistant", "content": "It rains."},
            ],
            "tools": '[{"name": "get", "parameters": "{\\"type\\": \\"object\\"}"}]',
            "domain": "tool_calling",
            "id": "ignored extra column",
        }
    )
    assert record.domain == "tool_calling"
    assert record.messages[0] == {"role": "system", "content": "be brief"}
    assert record.messages[1] == {"role": "user", "content": "weather?"}
    assert record.messages[2] == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "need a tool",
        "tool_calls": [
            {"type": "function", "function": {"name": "get", "arguments": {"city": "Oslo"}}},
            {"type": "function", "function": {"name": "now", "arguments": {}}, "id": "7"},
        ],
    }
    assert record.tools == ({"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}},)
    assert validate_record(record.to_dict()) == record


def test_validate_defaults_domain_and_empty_tools():
    record = validate_record(chat(tools=[], domain=None))
    assert record == Record(messages=(USER, ASSISTANT), tools=None, domain="general")


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([], "expected an object with a 'messages' list, got list"),
        ({"conversations": []}, "missing 'messages' (found 'conversations'"),
        ({"messages": "hi"}, "'messages' must be a list of message objects, got str"),
        ({"messages": []}, "'messages' is empty"),
        (
            chat({"role": "bot", "content": "x"}),
            "message 2: unknown role 'bot' (expected one of system, user, assistant, tool, developer)",
        ),
        ({"messages": [{"role": "user"}, ASSISTANT]}, "message 0: missing 'content'"),
        ({"messages": [{"content": "x"}, ASSISTANT]}, "message 0: missing 'role'"),
        ({"messages": [USER, {"role": "assistant", "content": None}]}, "message 1: missing 'content'"),
        (
            chat(USER, {"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}),
            "message 3: tool call 0 has no function name",
        ),
        (
            chat({"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{oops"}]}),
            "message 2: tool call 0 arguments is not valid JSON",
        ),
        (
            chat({"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "[1, 2]"}]}),
            "message 2: tool call 0 arguments must be a JSON object, got list",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": [{"name": "f"}]}, ASSISTANT]},
            "message 0: only assistant messages may have tool_calls (role is 'user')",
        ),
        (
            chat({"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}),
            "message 2: content part 0 has type 'image_url'; only text parts are supported",
        ),
        (chat({"role": "user", "content": 3}), "message 2: 'content' must be a string or a list of text parts"),
        (chat(tools=[{"description": "no name"}]), "tool 0: missing function name"),
        (chat(domain=""), "'domain' must be a non-empty string"),
        ({"messages": [USER]}, "no assistant message to learn from"),
    ],
)
def test_validate_reports_precise_reasons(obj, reason):
    with pytest.raises(RecordError) as info:
        validate_record(obj)
    assert str(info.value).startswith(reason)


def test_prompt_only_records_pass_when_assistant_not_required():
    assert validate_record({"messages": [USER]}, require_assistant=False).messages == (USER,)


# --------------------------------------------------------------------------- JSONL


def test_jsonl_reads_records_and_ignores_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ["\ufeff" + json.dumps(chat()), "", "   ", chat(domain="math")])
    records, stats = read_records(path)
    assert [r.domain for r in records] == ["general", "math"]
    assert stats.as_dict() == {
        "name": "a.jsonl",
        "read": 2,
        "used": 2,
        "skipped": 0,
        "truncated": 0,
        "dropped": 0,
        "reasons": [],
    }


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        (b'{"messages": [', "invalid JSON: Expecting value at column 15"),
        (b'{"messages": "\xff"}', "invalid UTF-8 at byte 14 of the line (expected UTF-8 text)"),
        (b"[1, 2]", "expected one JSON object per line, got list"),
        (json.dumps({"messages": [USER]}).encode(), "no assistant message to learn from"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, bad_line, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [chat(), b"", bad_line, chat()])
    with pytest.raises(DataSourceError) as info:
        read_records(path)
    assert str(info.value) == f"{path}:3: {reason}"


def test_jsonl_skip_counts_and_keeps_first_reasons(tmp_path):
    lines: list[bytes | str | dict] = [chat()] + [b"not json"] * (MAX_KEPT_REASONS + 5) + [chat()]
    path = write_jsonl(tmp_path / "noisy.jsonl", lines)
    records, stats = read_records(path, on_error="skip", name="noisy")
    assert len(records) == 2
    assert (stats.name, stats.read, stats.used, stats.skipped) == (
        "noisy",
        MAX_KEPT_REASONS + 7,
        2,
        MAX_KEPT_REASONS + 5,
    )
    assert len(stats.reasons) == MAX_KEPT_REASONS
    assert stats.reasons[0] == f"{path}:2: invalid JSON: Expecting value at column 1"


def test_gzip_and_directory_sources(tmp_path):
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(chat(domain="b")) + "\n")
    write_jsonl(tmp_path / "a.jsonl", [chat(domain="a")])
    (tmp_path / "notes.txt").write_text("ignored")
    records, stats = read_records(tmp_path)
    assert [r.domain for r in records] == ["a", "b"]
    assert stats.read == 2


def test_unreadable_sources_say_what_was_expected(tmp_path):
    with pytest.raises(DataSourceError, match="no such file or directory"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataSourceError, match=r"unsupported file type \(expected one of .jsonl"):
        read_records(tmp_path / "data.csv")
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(DataSourceError, match="not a readable parquet file"):
        read_records(tmp_path / "fake.parquet")
    with pytest.raises(DataSourceError, match="DatasetDict"):
        read_records({"train": []})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_error must be"):
        read_records(tmp_path, on_error="ignore")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- parquet and datasets


def test_parquet_struct_nulls_do_not_read_as_present(tmp_path):
    rows = [
        chat(domain="plain"),
        {
            "messages": [
                USER,
                {"role": "assistant", "content": None, "tool_calls": [{"name": "f", "arguments": '{"x": 1}'}]},
                {"role": "tool", "content": "ok"},
                ASSISTANT,
            ],
            "domain": None,
        },
        {"messages": [USER, {"role": "bot", "content": "x"}], "domain": "bad"},
    ]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataSourceError) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path}:row 2: message 1: unknown role 'bot'")
    records, stats = read_records(path, on_error="skip")
    assert records[0].messages == (USER, ASSISTANT)  # Arrow filled tool_calls=None into these rows
    assert records[1].domain == "general"
    assert records[1].messages[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    ]
    assert (stats.read, stats.used, stats.skipped) == (3, 2, 1)


def test_hf_dataset_rows_are_located_by_index():
    from datasets import Dataset

    dataset = Dataset.from_list([chat(), {"messages": [USER, {"role": "user", "content": "again"}]}])
    with pytest.raises(DataSourceError) as info:
        read_records(dataset, name="hub/set")
    assert str(info.value) == "hub/set:row 1: no assistant message to learn from"
    records, stats = read_records(dataset, on_error="skip", name="hub/set")
    assert len(records) == 1 and stats.reasons == ["hub/set:row 1: no assistant message to learn from"]


# --------------------------------------------------------------------------- length policy


def test_length_policy_literal_outputs():
    ids, mask = [1, 2, 3, 4, 5], [0, 0, 1, 1, 1]
    assert apply_length_policy(ids, mask, 5, "error", where="x") == (ids, mask)
    assert apply_length_policy(ids, mask, 3, "truncate", where="x") == ([1, 2, 3], [0, 0, 1])
    assert apply_length_policy(ids, mask, 3, "drop", where="x") is None
    with pytest.raises(DataSourceError) as info:
        apply_length_policy(ids, mask, 3, "error", where="f.jsonl:7")
    assert str(info.value) == (
        "f.jsonl:7: sample has 5 tokens > max_len 3 (length policy 'error'; use truncate or drop)"
    )
    with pytest.raises(ValueError, match="same length"):
        apply_length_policy(ids, mask[:2], 3, "drop", where="x")


def test_stats_count_length_outcomes():
    stats = SourceStats(name="s", read=3, used=3)
    stats.note_length(5, ([1, 2, 3], [0, 1, 1]))
    stats.note_length(5, None)
    stats.note_length(2, ([1, 2], [0, 1]))
    assert (stats.used, stats.truncated, stats.dropped) == (2, 1, 1)


# --------------------------------------------------------------------------- blends


def numbered(domain: str, n: int) -> list[Record]:
    return [Record(messages=({"role": "user", "content": f"{domain}{i}"},), domain=domain) for i in range(n)]


def test_epochs_blend_counts_and_fractional_sample_without_replacement():
    a, b = numbered("a", 4), numbered("b", 10)
    mixed = blend([a, b], [1.5, 0.3], mode="epochs", seed=0)
    counts = Counter(r.messages[0]["content"] for r in mixed)
    assert len(mixed) == 6 + 3
    assert sorted(counts[f"a{i}"] for i in range(4)) == [1, 1, 2, 2]  # one pass + 2 distinct extras
    assert sum(counts[f"b{i}"] for i in range(10)) == 3 and max(counts[f"b{i}"] for i in range(10)) == 1
    assert blend([a, b], [1.5, 0.3], mode="epochs", seed=0) == mixed
    assert blend([a, b], [1.5, 0.3], mode="epochs", seed=1) != mixed
    assert len(blend([numbered("c", 3)], [1.5], mode="epochs", seed=0)) == 5  # 4.5 rounds half up


def test_ratio_blend_hits_total_and_repeats_only_when_needed():
    small, large = numbered("s", 2), numbered("l", 100)
    mixed = blend([small, large], [1, 1], mode="ratio", total=10, seed=3)
    domains = Counter(r.domain for r in mixed)
    assert domains == {"s": 5, "l": 5}
    small_counts = Counter(r.messages[0]["content"] for r in mixed if r.domain == "s")
    assert sorted(small_counts.values()) == [2, 3]  # whole passes first, then a distinct remainder
    large_counts = Counter(r.messages[0]["content"] for r in mixed if r.domain == "l")
    assert max(large_counts.values()) == 1
    three = blend([numbered("x", 9), numbered("y", 9), numbered("z", 9)], [1, 1, 1], mode="ratio", total=10, seed=0)
    assert sorted(Counter(r.domain for r in three).values()) == [3, 3, 4]


def test_source_selection_is_stable_when_a_source_is_added():
    a = numbered("a", 50)
    alone = {r.messages[0]["content"] for r in blend([a], [0.5], mode="epochs", seed=9)}
    with_other = blend([a, numbered("b", 5)], [0.5, 1], mode="epochs", seed=9)
    assert {r.messages[0]["content"] for r in with_other if r.domain == "a"} == alone


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.floats(min_value=0.01, max_value=10), min_size=1, max_size=5),
    total=st.integers(min_value=0, max_value=200),
)
def test_ratio_counts_sum_to_total_and_stay_within_one(weights, total):
    sources = [numbered(f"d{i}", 3) for i in range(len(weights))]
    counts = Counter(r.domain for r in blend(sources, weights, mode="ratio", total=total, seed=0))
    assert sum(counts.values()) == total
    for i, w in enumerate(weights):
        assert abs(counts[f"d{i}"] - total * w / sum(weights)) < 1


def test_blend_rejects_inconsistent_arguments():
    a = numbered("a", 2)
    with pytest.raises(ValueError, match="2 sources but 1 weights"):
        blend([a, a], [1], mode="epochs", seed=0)
    with pytest.raises(ValueError, match="needs total"):
        blend([a], [1], mode="ratio", seed=0)
    with pytest.raises(ValueError, match="total applies to mode 'ratio' only"):
        blend([a], [1], mode="epochs", total=3, seed=0)
    with pytest.raises(ValueError, match="source 1 is empty"):
        blend([a, []], [1, 1], mode="ratio", total=4, seed=0)
    with pytest.raises(ValueError, match="finite"):
        blend([a], [-1], mode="epochs", seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        BlendSpec("x.jsonl", weight=-2)


def test_load_blend_overrides_domain_and_reports(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [chat(domain="x"), chat(domain="y"), b"{bad"])
    write_jsonl(tmp_path / "c.jsonl", [chat(domain="code")])
    specs = [
        BlendSpec(tmp_path / "m.jsonl", weight=2, domain="math", on_error="skip", name="math-set"),
        BlendSpec(str(tmp_path / "c.jsonl")),
    ]
    records, stats = load_blend(specs, seed=0)
    assert Counter(r.domain for r in records) == {"math": 4, "code": 1}
    assert [(s.name, s.read, s.used, s.skipped) for s in stats] == [("math-set", 3, 2, 1), ("c.jsonl", 1, 1, 0)]

    report = domain_token_report(records, [60 if r.domain == "code" else 10 for r in records])
    assert report == {
        "code": {"samples": 1, "tokens": 60, "share": 0.6},
        "math": {"samples": 4, "tokens": 40, "share": 0.4},
    }
    text = format_report(stats, report)
    assert "math-set" in text and "c.jsonl" in text
    assert f"skipped in math-set: {tmp_path / 'm.jsonl'}:3: invalid JSON" in text
    assert "share" in text and "%" in text


def test_domain_token_report_literal():
    records = numbered("a", 2) + numbered("b", 1)
    assert domain_token_report(records, [1, 2, 7]) == {
        "b": {"samples": 1, "tokens": 7, "share": 0.7},
        "a": {"samples": 2, "tokens": 3, "share": 0.3},
    }
    with pytest.raises(ValueError, match="3 records but 2 token counts"):
        domain_token_report(records, [1, 2])

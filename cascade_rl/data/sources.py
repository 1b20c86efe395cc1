"""Chat records from JSONL, parquet and Hugging Face datasets; validation, length policy, blends.

A record is ``{"messages": [...], "tools": [...]?, "domain": str?}`` with OpenAI-shaped messages.
Every problem is reported with where it is (``file:line``, ``file:row N`` or ``name:row N``) and
what was expected, because a bad line in a million-line file is otherwise a day of bisecting.

Validated records are normalised so that downstream code (the chat template, packing) handles
one shape only:

* ``content`` is always a ``str`` (text parts are joined with ""; ``None`` on an assistant
  message that carries tool calls becomes "");
* tool calls are ``{"type": "function", "function": {"name": str, "arguments": dict}}`` (plus
  ``"id"`` when given); JSON-string arguments are decoded;
* tools are ``{"type": "function", "function": {...}}``;
* keys whose value is ``None`` are dropped: Arrow struct columns (parquet, ``datasets``) fill
  every key absent from a row with null, which must not read as "present".
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

if TYPE_CHECKING:
    from datasets import Dataset

ROLES = ("system", "user", "assistant", "tool", "developer")
TOOL_SHAPE = "{'type': 'function', 'function': {'name': ..., 'parameters': {...}}}"
MAX_KEPT_REASONS = 20
T = TypeVar("T")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)

OnError: TypeAlias = Literal["raise", "skip"]
LengthPolicy: TypeAlias = Literal["truncate", "drop", "error"]
BlendMode: TypeAlias = Literal["epochs", "ratio"]
Source: TypeAlias = "str | Path | Dataset | Iterable[Mapping[str, Any]]"


class RecordError(ValueError):
    """A record does not have the expected shape; the message says which part and why."""


class DataSourceError(ValueError):
    """A source cannot be read, or one of its rows is invalid; the message starts with its location."""


@dataclass(frozen=True)
class Record:
    """One validated, normalised chat sample."""

    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] | None = None
    domain: str = "general"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (what ``validate_record`` accepts back)."""
        out: dict[str, Any] = {"messages": list(self.messages), "domain": self.domain}
        if self.tools is not None:
            out["tools"] = list(self.tools)
        return out


@dataclass
class SourceStats:
    """What happened to one source: rows read, kept, skipped as invalid, cut or dropped for length."""

    name: str
    read: int = 0  # non-blank lines / rows seen
    used: int = 0  # valid records still in use (validation passed, not dropped for length)
    skipped: int = 0  # invalid rows skipped under on_error="skip"
    truncated: int = 0  # samples cut to max_len by the length policy
    dropped: int = 0  # samples removed by the length policy
    reasons: list[str] = field(default_factory=list)  # the first MAX_KEPT_REASONS skip reasons

    def note_length(self, before: int, result: tuple[list[int], list[int]] | None) -> None:
        """Count the outcome of ``apply_length_policy`` for a sample that had ``before`` tokens.

        A drop also lowers ``used``; call it once per tokenized sample (a record repeated by an
        epochs blend is counted each time it appears).
        """
        if result is None:
            self.dropped += 1
            self.used -= 1
        elif len(result[0]) < before:
            self.truncated += 1

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- validation


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _content_text(where: str, content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RecordError(f"{where}: 'content' must be a string or a list of text parts, got {_type_name(content)}")
    texts = []
    for k, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, Mapping) or part.get("type", "text") != "text":
            kind = part.get("type") if isinstance(part, Mapping) else _type_name(part)
            raise RecordError(f"{where}: content part {k} has type {kind!r}; only text parts are supported")
        text = part.get("text")
        if not isinstance(text, str):
            raise RecordError(f"{where}: content part {k} needs a string 'text', got {_type_name(text)}")
        texts.append(text)
    return "".join(texts)


def _json_object(where: str, what: str, value: Any) -> dict[str, Any]:
    """``value`` as a dict; JSON-object strings are decoded (datasets often store them so)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise RecordError(f"{where}: {what} is not valid JSON ({err})") from None
    if not isinstance(value, Mapping):
        raise RecordError(f"{where}: {what} must be a JSON object, got {_type_name(value)}")
    return dict(value)


def _tool_call(where: str, j: int, call: Any) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise RecordError(f"{where}: tool call {j} must be an object, got {_type_name(call)}")
    function = call.get("function")
    if function is None:
        function = call  # the flat {"name", "arguments"} form
    elif not isinstance(function, Mapping):
        raise RecordError(f"{where}: tool call {j} 'function' must be an object, got {_type_name(function)}")
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RecordError(f"{where}: tool call {j} has no function name")
    arguments = _json_object(where, f"tool call {j} arguments", function.get("arguments"))
    out: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call.get("id") is not None:
        out["id"] = str(call["id"])
    return out


def _message(i: int, message: Any) -> dict[str, Any]:
    where = f"message {i}"
    if not isinstance(message, Mapping):
        raise RecordError(f"{where}: expected an object with 'role' and 'content', got {_type_name(message)}")
    role = message.get("role")
    if role is None:
        raise RecordError(f"{where}: missing 'role'")
    if role not in ROLES:
        raise RecordError(f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
    out = {key: value for key, value in message.items() if value is not None}

    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise RecordError(f"{where}: 'tool_calls' must be a list, got {_type_name(calls)}")
        if calls and role != "assistant":
            raise RecordError(f"{where}: only assistant messages may have tool_calls (role is {role!r})")
        out["tool_calls"] = [_tool_call(where, j, call) for j, call in enumerate(calls)]
        if not calls:
            del out["tool_calls"]

    content = message.get("content")
    if content is None:
        if role != "assistant" or not out.get("tool_calls"):
            raise RecordError(f"{where}: missing 'content' (only an assistant message with tool_calls may omit it)")
        content = ""
    out["content"] = _content_text(where, content)

    reasoning = message.get("reasoning_content")
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise RecordError(f"{where}: 'reasoning_content' must be a string, got {_type_name(reasoning)}")
        if role != "assistant" and reasoning:
            raise RecordError(f"{where}: only assistant messages may have reasoning_content (role is {role!r})")
    return out


def _tools(value: Any) -> tuple[dict[str, Any], ...] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise RecordError(f"'tools' is a string but not valid JSON ({err})") from None
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise RecordError(f"'tools' must be a list of tool definitions, got {_type_name(value)}")
    tools = []
    for k, tool in enumerate(value):
        if not isinstance(tool, Mapping):
            raise RecordError(f"tool {k}: expected an object, got {_type_name(tool)}")
        function = tool.get("function", tool)
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RecordError(f"tool {k}: missing function name (expected {TOOL_SHAPE} or the bare inner object)")
        function = {key: val for key, val in function.items() if val is not None and key != "type"}
        if isinstance(function.get("parameters"), str):
            function["parameters"] = _json_object(f"tool {k}", "'parameters'", function["parameters"])
        tools.append({"type": "function", "function": function})
    return tuple(tools)


def validate_record(obj: Any, *, require_assistant: bool = True) -> Record:
    """Check one raw record and return its normalised form.

    Args:
        obj: the decoded JSON object / dataset row.
        require_assistant: SFT data needs at least one assistant turn to learn from; RL prompt
            sets (which end on a user turn) pass False.

    Raises:
        RecordError: with the failing part ("message 2: unknown role 'bot' (...)").
    """
    if not isinstance(obj, Mapping):
        raise RecordError(f"expected an object with a 'messages' list, got {_type_name(obj)}")
    messages = obj.get("messages")
    if messages is None:
        hint = (
            " (found 'conversations': convert ShareGPT from/value turns to role/content)"
            if ("conversations" in obj)
            else ""
        )
        raise RecordError(f"missing 'messages'{hint}")
    if not isinstance(messages, list | tuple):
        raise RecordError(f"'messages' must be a list of message objects, got {_type_name(messages)}")
    if not messages:
        raise RecordError("'messages' is empty")
    normalised = tuple(_message(i, message) for i, message in enumerate(messages))
    tools = _tools(obj.get("tools"))
    domain = obj.get("domain")
    if domain is None:
        domain = "general"
    if not isinstance(domain, str) or not domain:
        raise RecordError(f"'domain' must be a non-empty string, got {domain!r}")
    if require_assistant and not any(message["role"] == "assistant" for message in normalised):
        raise RecordError("no assistant message to learn from")
    return Record(messages=normalised, tools=tools, domain=domain)


# --------------------------------------------------------------------------- reading

# A row source yields (location, decoded object, reason it could not be decoded or None).
_Row: TypeAlias = tuple[str, Any, str | None]


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.strip()
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                line = line[3:].strip()
            if not line:
                continue
            where = f"{path}:{lineno}"
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                yield where, None, f"invalid UTF-8 at byte {err.start} of the line (expected UTF-8 text)"
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                yield where, None, f"invalid JSON: {err.msg} at column {err.colno}"
                continue
            if not isinstance(obj, dict):
                yield where, None, f"expected one JSON object per line, got {_type_name(obj)}"
                continue
            yield where, obj, None


def _parquet_rows(path: Path) -> Iterator[_Row]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a corrupt / non-parquet file
        raise DataSourceError(f"{path}: not a readable parquet file ({err})") from err
    row = 0
    batches = parquet.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as err:  # a truncated or damaged row group: name where reading stopped
            raise DataSourceError(f"{path}:row {row}: the parquet file is damaged from here on ({err})") from err
        for obj in batch.to_pylist():
            yield f"{path}:row {row}", obj, None
            row += 1


def _iterable_rows(rows: Iterable[Any], name: str) -> Iterator[_Row]:
    for index, obj in enumerate(rows):
        yield f"{name}:row {index}", obj, None


def _files(path: Path) -> list[Path]:
    suffixes = JSONL_SUFFIXES + PARQUET_SUFFIXES
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
        if not files:
            raise DataSourceError(f"{path}: directory holds no {', '.join(suffixes)} files")
        return files
    if not path.exists():
        raise DataSourceError(f"{path}: no such file or directory")
    if not path.name.endswith(suffixes):
        raise DataSourceError(f"{path}: unsupported file type (expected one of {', '.join(suffixes)})")
    return [path]


def _source_name(source: Any) -> str:
    if isinstance(source, str | Path):
        return Path(source).name
    info = getattr(source, "info", None)
    return getattr(info, "dataset_name", None) or "dataset"


def _row_sources(source: Any, name: str) -> Iterator[Iterator[_Row]]:
    if isinstance(source, str | Path):
        for path in _files(Path(source)):
            yield _jsonl_rows(path) if path.name.endswith(JSONL_SUFFIXES) else _parquet_rows(path)
    elif isinstance(source, Mapping):
        raise DataSourceError(f"{name}: got a mapping (a DatasetDict?); pass one split, e.g. ds['train']")
    elif isinstance(source, Iterable):
        yield _iterable_rows(source, name)
    else:
        raise DataSourceError(
            f"expected a path, a datasets.Dataset or an iterable of records, got {_type_name(source)}"
        )


def read_validated(
    source: Source,
    validate: Callable[[dict[str, Any], str], T],
    *,
    on_error: OnError = "raise",
    name: str | None = None,
) -> tuple[list[T], SourceStats]:
    """Every row of a source through ``validate(row, where)``, which raises ``ValueError`` (a ``RecordError``)
    naming what is wrong with a row.

    Args:
        source: a ``.jsonl`` / ``.jsonl.gz`` / ``.parquet`` file, a directory of them (read in
            sorted order), a ``datasets.Dataset`` or any iterable of row mappings.
        on_error: "raise" stops at the first bad row with ``DataSourceError("{where}: {reason}")``;
            "skip" drops it, counts it and keeps the first ``MAX_KEPT_REASONS`` reasons.
        name: label for stats and error locations of in-memory datasets (default: file name).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    stats = SourceStats(name=name or _source_name(source))
    out: list[T] = []
    for rows in _row_sources(source, stats.name):
        for where, obj, reason in rows:
            stats.read += 1
            if reason is None:
                try:
                    out.append(validate(obj, where))
                    continue
                except ValueError as err:
                    reason = str(err)
            if on_error == "raise":
                raise DataSourceError(f"{where}: {reason}")
            stats.skipped += 1
            if len(stats.reasons) < MAX_KEPT_REASONS:
                stats.reasons.append(f"{where}: {reason}")
    stats.used = len(out)
    return out, stats


def read_records(
    source: Source,
    *,
    on_error: OnError = "raise",
    name: str | None = None,
    require_assistant: bool = True,
) -> tuple[list[Record], SourceStats]:
    """Read and validate every chat record of a source (``read_validated`` with ``validate_record``;
    ``require_assistant``: see there)."""
    return read_validated(
        source, lambda obj, _: validate_record(obj, require_assistant=require_assistant), on_error=on_error, name=name
    )


# --------------------------------------------------------------------------- length policy


def apply_length_policy(
    ids: list[int], mask: list[int], max_len: int, policy: LengthPolicy, *, where: str
) -> tuple[list[int], list[int]] | None:
    """Fit one tokenized sample into ``max_len`` tokens.

    "truncate" keeps the first ``max_len`` tokens (the prompt survives, the tail of the answer
    goes; the mask may then hold no trainable token, which the caller may want to drop);
    "drop" returns None; "error" raises. Samples that fit are returned unchanged.
    """
    if len(ids) != len(mask):
        raise ValueError(f"{where}: ids and mask must have the same length, got {len(ids)} and {len(mask)}")
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if len(ids) <= max_len:
        return ids, mask
    if policy == "truncate":
        return ids[:max_len], mask[:max_len]
    if policy == "drop":
        return None
    if policy == "error":
        raise DataSourceError(
            f"{where}: sample has {len(ids)} tokens > max_len {max_len} (length policy 'error'; use truncate or drop)"
        )
    raise ValueError(f"length policy must be one of truncate, drop, error; got {policy!r}")


# --------------------------------------------------------------------------- blends


@dataclass(frozen=True, eq=False)
class BlendSpec:
    """One source of a data blend."""

    path_or_dataset: Source
    weight: float = 1.0  # epochs mode: passes over the source (1.5 = once + half); ratio mode: relative share
    domain: str | None = None  # overrides the domain of every record; None keeps each record's own
    on_error: OnError = "raise"
    name: str | None = None  # label in stats and reports; None = the file name

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"blend weight must be a finite number >= 0, got {self.weight}")

    def read(self, *, require_assistant: bool = True) -> tuple[list[Record], SourceStats]:
        records, stats = read_records(
            self.path_or_dataset, on_error=self.on_error, name=self.name, require_assistant=require_assistant
        )
        if self.domain is not None:
            records = [dataclasses.replace(record, domain=self.domain) for record in records]
        return records, stats


def _take(records: list[Record], count: int, rng: random.Random) -> list[Record]:
    """``count`` records: whole passes over ``records`` plus a without-replacement sample of the rest.

    So no record appears more than once more than any other, unlike i.i.d. draws with replacement.
    """
    if count == 0:
        return []
    whole, rest = divmod(count, len(records))
    return records * whole + rng.sample(records, rest)


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Largest-remainder split: each count is floor or ceil of total*w/sum(w), and they sum to total."""
    weight_sum = sum(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def blend(
    records_per_source: Sequence[list[Record]],
    weights: Sequence[float],
    *,
    mode: BlendMode,
    total: int | None = None,
    seed: int,
) -> list[Record]:
    """Mix sources into one deterministically shuffled list.

    mode "epochs": source i contributes round(weight_i * len(source_i)) records: floor(weight_i)
        full passes, the fractional part sampled without replacement. ``total`` must be None.
    mode "ratio": exactly ``total`` records, source i supplying total * w_i / sum(w) of them
        (largest-remainder rounding, so counts are within 1 of that and sum to ``total``). A
        source asked for more records than it has is repeated in whole passes before sampling
        the remainder without replacement; only then does a record appear twice.

    Each source samples from its own stream derived from ``seed`` and its index, so adding a
    source does not change what the others contribute. The global ``random`` state is untouched.
    """
    if len(records_per_source) != len(weights):
        raise ValueError(f"got {len(records_per_source)} sources but {len(weights)} weights")
    for w in weights:
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"blend weights must be finite and >= 0, got {list(weights)}")
    if mode == "epochs":
        if total is not None:
            raise ValueError("total applies to mode 'ratio' only; in mode 'epochs' weights set the size")
        # round half up (not banker's rounding): weight 1.5 over 3 records gives 5, not 4
        sizes = [len(records) for records in records_per_source]
        counts = [math.floor(w * n + 0.5) for w, n in zip(weights, sizes, strict=True)]
    elif mode == "ratio":
        if total is None or total < 0:
            raise ValueError(f"mode 'ratio' needs total >= 0 records, got {total}")
        if sum(weights) <= 0:
            raise ValueError("mode 'ratio' needs at least one positive weight")
        counts = _apportion(total, weights)
    else:
        raise ValueError(f"blend mode must be 'epochs' or 'ratio', got {mode!r}")

    mixed: list[Record] = []
    for i, (records, count) in enumerate(zip(records_per_source, counts, strict=True)):
        if count and not records:
            raise ValueError(f"source {i} is empty but its weight {weights[i]} asks for {count} records")
        mixed.extend(_take(records, count, random.Random(f"{seed}:source:{i}")))
    random.Random(f"{seed}:shuffle").shuffle(mixed)
    return mixed


def load_blend(
    specs: Sequence[BlendSpec],
    *,
    mode: BlendMode = "epochs",
    total: int | None = None,
    seed: int = 0,
    require_assistant: bool = True,
) -> tuple[list[Record], list[SourceStats]]:
    """Read every spec and ``blend`` them; returns the mixed records and one stats entry per spec."""
    read = [spec.read(require_assistant=require_assistant) for spec in specs]
    records = blend(
        [records for records, _ in read], [spec.weight for spec in specs], mode=mode, total=total, seed=seed
    )
    return records, [stats for _, stats in read]


# --------------------------------------------------------------------------- reports


def domain_token_report(records: Sequence[Record], token_counts: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per domain: {"samples", "tokens", "share"} where share is the domain's fraction of all tokens.

    Domains are ordered by token count, largest first. ``token_counts[i]`` belongs to ``records[i]``.
    """
    if len(records) != len(token_counts):
        raise ValueError(f"got {len(records)} records but {len(token_counts)} token counts")
    totals: dict[str, list[int]] = {}
    for record, tokens in zip(records, token_counts, strict=True):
        entry = totals.setdefault(record.domain, [0, 0])
        entry[0] += 1
        entry[1] += int(tokens)
    all_tokens = sum(tokens for _, tokens in totals.values())
    ordered = sorted(totals.items(), key=lambda item: (-item[1][1], item[0]))
    return {
        domain: {"samples": samples, "tokens": tokens, "share": tokens / all_tokens if all_tokens else 0.0}
        for domain, (samples, tokens) in ordered
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    # first column left-aligned (names), the rest right-aligned (numbers)
    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(width) if k == 0 else str(cell).rjust(width)
            for k, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), "  ".join("-" * width for width in widths), *(line(row) for row in rows)]


def format_report(stats: Sequence[SourceStats], domain_report: Mapping[str, Mapping[str, Any]]) -> str:
    """Plain-text tables of per-source counts and per-domain token shares, for the console and logs."""
    source_rows = [[s.name, str(s.read), str(s.used), str(s.skipped), str(s.truncated), str(s.dropped)] for s in stats]
    lines = _table(["source", "read", "used", "skipped", "truncated", "dropped"], source_rows)
    for s in stats:
        shown = s.reasons[:3]
        lines.extend(f"  skipped in {s.name}: {reason}" for reason in shown)
        if s.skipped > len(shown):
            lines.append(f"  ... and {s.skipped - len(shown)} more skipped in {s.name}")
    domain_rows = [
        [domain, str(entry["samples"]), str(entry["tokens"]), f"{100 * entry['share']:.1f}%"]
        for domain, entry in domain_report.items()
    ]
    lines.append("")
    lines.extend(_table(["domain", "samples", "tokens", "share"], domain_rows))
    return "\n".join(lines)

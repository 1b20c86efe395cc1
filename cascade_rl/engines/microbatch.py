"""Turn TrainSequences into model inputs (packed, padded or shared-prefix) and per-sequence [S, L] views.

Packed micro-batches put several sequences in one row with position ids restarting at 0, which
transformers turns into document masking (no sample attends to another). Models whose layers carry
state along the sequence (Mamba in ``nemotron_h``) cannot be packed that way, so they get
right-padded rows instead. Shared-prefix rows hold the sequences of one group (the rollouts of one
prompt): their common prefix once, then each member's own tokens, with a 4D mask letting every member
see the prefix and itself only and positions continuing from the prefix, so the prompt's layers run
once per group instead of once per rollout. Either way the loss sees one row per sequence, columns
aligned with tokens, so per-sequence reductions (MOPD's 1/|y|) work unchanged.

Only scored tokens (``mask == 1``) go through the LM head: a micro-batch lists the hidden states
whose next-token distribution is needed (``rows_N``) and the token each must predict (``targets_N``);
the head, log-softmax and entropy on prompt and padding positions would be thrown away.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cascade_rl.data.packing import pack
from cascade_rl.engines.base import TrainSequence

# Model types whose layers carry state across positions, so position-id document masking is not enough.
UNPACKABLE_MODEL_TYPES = frozenset({"nemotron_h", "mamba", "mamba2", "falcon_h1", "jamba", "bamba", "zamba2"})


@dataclass
class MicroBatch:
    """Model inputs for some sequences plus how to read their per-token outputs.

    Entry ``(s, j)`` of the ``[S, L]`` views is token ``j`` of sequence ``indices[s]``: where
    ``scored_SL`` is set, ``gather_SL`` is its index into the ``N`` scored predictions.
    """

    indices: list[int]  # positions of these sequences in the TrainBatch
    input_ids: torch.Tensor  # [R, T]
    position_ids: torch.Tensor  # [R, T]
    # padded: [R, T] (1 = real token); shared-prefix: [R, 1, T, T] bool (True = may attend); packed: None
    attention_mask: torch.Tensor | None
    rows_N: torch.Tensor  # [N] long: flat index into the [R * T] hidden states predicting each scored token
    targets_N: torch.Tensor  # [N] long: the token that prediction is scored on
    gather_SL: torch.Tensor  # [S, L] long: index into N (0 where not scored)
    scored_SL: torch.Tensor  # [S, L] bool: the token has a prediction in N
    valid_SL: torch.Tensor  # [S, L] bool: a real token after position 0 (scored or not)
    real_RT: torch.Tensor | None = None  # [R, T] bool: a real (non-padding) input position; None = all real
    # Run only to keep data-parallel ranks in step (every rank must run as many forwards): it scores
    # nothing that is kept and its loss is 0.
    filler: bool = False


class _Scoring:
    """Collects, sequence by sequence, which hidden state predicts which token."""

    def __init__(self, count: int, width: int, scored_only: bool) -> None:
        self.scored_only = scored_only
        self.rows: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.n = 0
        self.gather = torch.zeros(count, width, dtype=torch.long)
        self.scored = torch.zeros(count, width, dtype=torch.bool)
        self.valid = torch.zeros(count, width, dtype=torch.bool)

    def add(self, s: int, seq: TrainSequence, columns: torch.Tensor) -> None:
        """``columns[j]`` is the flat index of token ``j``'s hidden state, which predicts token ``j + 1``."""
        n = len(seq.tokens)
        self.valid[s, 1:n] = True
        wanted = torch.tensor(seq.mask[1:n], dtype=torch.bool)
        j = (wanted if self.scored_only else torch.ones_like(wanted)).nonzero().squeeze(-1) + 1
        self.rows.append(columns[j - 1])
        self.targets.append(torch.tensor(seq.tokens)[j])
        self.gather[s, j] = torch.arange(self.n, self.n + len(j))
        self.scored[s, j] = True
        self.n += len(j)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.cat(self.rows) if self.rows else torch.zeros(0, dtype=torch.long)
        targets = torch.cat(self.targets) if self.targets else torch.zeros(0, dtype=torch.long)
        return rows, targets, self.gather, self.scored, self.valid


def _width(seqs: Sequence[TrainSequence], indices: Sequence[int]) -> int:
    return max(len(seqs[i].tokens) for i in indices)


def _packed(seqs: Sequence[TrainSequence], indices: list[int], scored_only: bool) -> MicroBatch:
    ids: list[int] = []
    positions: list[int] = []
    scoring = _Scoring(len(indices), _width(seqs, indices), scored_only)
    for s, i in enumerate(indices):
        tokens = seqs[i].tokens
        scoring.add(s, seqs[i], torch.arange(len(ids), len(ids) + len(tokens)))
        ids.extend(tokens)
        positions.extend(range(len(tokens)))
    return MicroBatch(indices, torch.tensor([ids]), torch.tensor([positions]), None, *scoring.finish())


def _padded(seqs: Sequence[TrainSequence], indices: list[int], pad_id: int, scored_only: bool) -> MicroBatch:
    width = _width(seqs, indices)
    rows = len(indices)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros(rows, width, dtype=torch.long)
    scoring = _Scoring(rows, width, scored_only)
    for s, i in enumerate(indices):
        n = len(seqs[i].tokens)
        ids[s, :n] = torch.tensor(seqs[i].tokens)
        attention[s, :n] = 1
        scoring.add(s, seqs[i], s * width + torch.arange(n))
    positions = torch.arange(width).expand(rows, width).clone()
    return MicroBatch(indices, ids, positions, attention, *scoring.finish(), real_RT=attention.bool())


# --------------------------------------------------------------------------- shared prefix


@dataclass
class _Row:
    """One shared-prefix row: ``prefix`` tokens (common to all members), then each member's rest."""

    prefix: int
    members: list[int] = field(default_factory=list)
    width: int = 0


def attention_pair_cost(config: Any) -> float:
    """FLOPs of one attended (query, key) pair relative to one token's projections and MLP, per layer.

    A shared-prefix row is attended densely (the mask hides pairs, the kernel still computes them),
    so packing a group's rollouts together trades this quadratic cost for the saved prefix tokens.
    """
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    # MoE layers run only the routed experts' MLPs per token
    mlp = getattr(config, "moe_intermediate_size", 0) * getattr(config, "num_experts_per_tok", 0)
    mlp = mlp or getattr(config, "intermediate_size", None) or 4 * hidden
    linear = 2 * hidden * 2 * (heads + kv_heads) * head_dim + 2 * 3 * hidden * mlp  # q, o, k, v; gated MLP
    return 4 * heads * head_dim / linear  # q.k and p.v per pair


def _common_prefix(seqs: Sequence[TrainSequence], members: Sequence[int]) -> int:
    """Length of the prefix every member starts with, leaving each at least one token of its own."""
    first = seqs[members[0]].tokens
    n = min(len(seqs[i].tokens) for i in members) - 1
    for i in members[1:]:
        n = next((j for j, (a, b) in enumerate(zip(first[:n], seqs[i].tokens, strict=False)) if a != b), n)
    return n


def _worth_extending(row: _Row, own: int, token_budget: int, pair_cost: float) -> bool:
    """Whether ``own`` more tokens should join ``row`` rather than start a new row.

    Joining saves recomputing the prefix in a new row (``prefix`` tokens and its attention), but the
    dense mask then also computes the masked pairs between the new tokens and the row's other
    members (``2 * own * rest``). Both sides in token units, one pair costing ``pair_cost`` tokens.
    """
    if row.width + own > token_budget:
        return False
    rest = row.width - row.prefix
    return pair_cost * 2 * own * rest <= row.prefix * (1 + pair_cost * row.prefix)


def _group_rows(seqs: Sequence[TrainSequence], members: list[int], token_budget: int, pair_cost: float) -> list[_Row]:
    prefix = _common_prefix(seqs, members)
    rows: list[_Row] = []
    for i in members:
        own = len(seqs[i].tokens) - prefix
        if not rows or not _worth_extending(rows[-1], own, token_budget, pair_cost):
            rows.append(_Row(prefix, width=prefix))
        rows[-1].members.append(i)
        rows[-1].width += own
    return rows


def _segment_mask(segment: torch.Tensor) -> torch.Tensor:
    """[R, T] segment ids (0 = prefix, k = member k, -1 = padding) -> [R, 1, T, T] bool attention mask.

    A query sees earlier keys of the prefix and of its own segment. Padding queries see at least
    themselves, so no softmax row is empty (an all-masked row gives NaN, and NaN x 0 in backward
    would still poison the gradients).
    """
    width = segment.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    query, key = segment[:, :, None], segment[:, None, :]
    return (causal & ((key == 0) | (key == query)))[:, None]


def _shared(seqs: Sequence[TrainSequence], rows: list[_Row], pad_id: int, scored_only: bool) -> MicroBatch:
    indices = sorted(i for row in rows for i in row.members)
    slot = {i: s for s, i in enumerate(indices)}
    width = max(row.width for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    scoring = _Scoring(len(indices), _width(seqs, indices), scored_only)
    for r, row in enumerate(rows):
        p = row.prefix
        ids[r, :p] = torch.tensor(seqs[row.members[0]].tokens[:p], dtype=torch.long)
        positions[r, :p] = torch.arange(p)
        segment[r, :p] = 0
        start = p
        for k, i in enumerate(row.members, start=1):
            own = seqs[i].tokens[p:]
            end = start + len(own)
            ids[r, start:end] = torch.tensor(own)
            positions[r, start:end] = torch.arange(p, p + len(own))  # as if right after the prefix
            segment[r, start:end] = k
            scoring.add(slot[i], seqs[i], r * width + torch.cat([torch.arange(p), torch.arange(start, end)]))
            start = end
    return MicroBatch(indices, ids, positions, _segment_mask(segment), *scoring.finish(), real_RT=segment >= 0)


def _groups(seqs: Sequence[TrainSequence]) -> list[list[int]]:
    """Members of every group with at least two sequences (one alone shares nothing)."""
    groups: dict[int, list[int]] = {}
    for i, seq in enumerate(seqs):
        if seq.group is not None:
            groups.setdefault(seq.group, []).append(i)
    return [members for members in groups.values() if len(members) > 1]


# --------------------------------------------------------------------------- micro-batches


def _by_width(widths: Mapping[int, int], token_budget: int) -> list[list[int]]:
    """Widest first, rows join a micro-batch while rows x widest fits the budget (a wider row is alone)."""
    batches: list[list[int]] = []
    for i in sorted(widths, key=lambda i: (-widths[i], i)):
        if batches and (len(batches[-1]) + 1) * widths[batches[-1][0]] <= token_budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def make_microbatches(
    seqs: Sequence[TrainSequence],
    token_budget: int,
    *,
    packed: bool = False,
    shared_prefix: bool = False,
    pad_id: int = 0,
    scored_only: bool = True,
    pair_cost: float = 0.0,
) -> list[MicroBatch]:
    """Group sequences into micro-batches of at most ``token_budget`` tokens (one longer sequence
    gets a micro-batch of its own). Packed: best-fit-decreasing bins. Padded: length-sorted rows
    while rows x longest fits the budget. ``shared_prefix``: every group of two or more sequences
    goes into shared-prefix rows (a row grows while ``_worth_extending``; rows are then batched like
    padded ones); sequences without a group stay padded.

    ``scored_only``: predict only tokens with ``mask == 1`` (others read 0); otherwise every token.
    """
    if not seqs:
        return []
    if packed:
        capacity = max(token_budget, *(len(s.tokens) for s in seqs))
        return [_packed(seqs, sorted(b), scored_only) for b in pack([len(s.tokens) for s in seqs], capacity)]
    out: list[MicroBatch] = []
    alone = set(range(len(seqs)))
    if shared_prefix:
        rows = [row for members in _groups(seqs) for row in _group_rows(seqs, members, token_budget, pair_cost)]
        widths = {r: row.width for r, row in enumerate(rows)}
        out += [_shared(seqs, [rows[r] for r in b], pad_id, scored_only) for b in _by_width(widths, token_budget)]
        alone -= {i for row in rows for i in row.members}
    lengths = {i: len(seqs[i].tokens) for i in sorted(alone)}
    out += [_padded(seqs, sorted(b), pad_id, scored_only) for b in _by_width(lengths, token_budget)]
    return out


def values_SL(seqs: Sequence[TrainSequence], mb: MicroBatch) -> dict[str, torch.Tensor]:
    """Per-token quantities of the micro-batch's sequences as [S, L] float32 tensors, plus ``mask``."""
    width = mb.gather_SL.shape[1]
    names = set().union(*(seqs[i].values.keys() for i in mb.indices))
    out = {name: torch.zeros(len(mb.indices), width) for name in ["mask", *sorted(names)]}
    for s, i in enumerate(mb.indices):
        seq = seqs[i]
        n = len(seq.tokens)
        out["mask"][s, :n] = torch.tensor(seq.mask, dtype=torch.float32)
        for name in names:
            if name in seq.values:
                out[name][s, :n] = torch.tensor(seq.values[name], dtype=torch.float32)
    out["mask"][:, 0] = 0.0
    out["mask"] *= mb.valid_SL
    return out

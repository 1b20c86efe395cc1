"""Turn TrainSequences into model inputs (packed or padded) and per-sequence [S, L] views.

Packed micro-batches put several sequences in one row with position ids restarting at 0, which
transformers turns into document masking (no sample attends to another). Models whose layers carry
state along the sequence (Mamba in ``nemotron_h``) cannot be packed that way, so they get
right-padded rows instead. Either way the loss sees one row per sequence, columns aligned with
tokens, so per-sequence reductions (MOPD's 1/|y|) work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cascade_rl.data.packing import pack
from cascade_rl.engines.base import TrainSequence

# Model types whose layers carry state across positions, so position-id document masking is not enough.
UNPACKABLE_MODEL_TYPES = frozenset({"nemotron_h", "mamba", "mamba2", "falcon_h1", "jamba", "bamba", "zamba2"})


@dataclass
class MicroBatch:
    """Model inputs for some sequences plus how to read their per-token outputs.

    ``gather_SL`` indexes the flattened ``[rows * T]`` prediction positions: entry ``(s, j)`` is the
    position whose next-token prediction is token ``j`` of sequence ``s`` (``valid_SL`` marks real ones).
    """

    indices: list[int]  # positions of these sequences in the TrainBatch
    input_ids: torch.Tensor  # [R, T]
    position_ids: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor | None  # [R, T] for padded rows; None when packed
    targets: torch.Tensor  # [R, T] next token at every position (0 where none)
    gather_SL: torch.Tensor  # [S, L] long
    valid_SL: torch.Tensor  # [S, L] bool


def _packed(seqs: Sequence[TrainSequence], indices: list[int]) -> MicroBatch:
    ids: list[int] = []
    targets: list[int] = []
    positions: list[int] = []
    width = max(len(seqs[i].tokens) for i in indices)
    gather = torch.zeros(len(indices), width, dtype=torch.long)
    valid = torch.zeros(len(indices), width, dtype=torch.bool)
    for s, i in enumerate(indices):
        tokens = seqs[i].tokens
        start = len(ids)
        ids.extend(tokens)
        targets.extend([*tokens[1:], 0])
        positions.extend(range(len(tokens)))
        n = len(tokens)
        gather[s, 1:n] = torch.arange(start, start + n - 1)
        valid[s, 1:n] = True
    return MicroBatch(
        indices=indices,
        input_ids=torch.tensor([ids]),
        position_ids=torch.tensor([positions]),
        attention_mask=None,
        targets=torch.tensor([targets]),
        gather_SL=gather,
        valid_SL=valid,
    )


def _padded(seqs: Sequence[TrainSequence], indices: list[int], pad_id: int) -> MicroBatch:
    width = max(len(seqs[i].tokens) for i in indices)
    rows = len(indices)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    targets = torch.zeros(rows, width, dtype=torch.long)
    attention = torch.zeros(rows, width, dtype=torch.long)
    gather = torch.zeros(rows, width, dtype=torch.long)
    valid = torch.zeros(rows, width, dtype=torch.bool)
    for s, i in enumerate(indices):
        tokens = torch.tensor(seqs[i].tokens)
        n = len(tokens)
        ids[s, :n] = tokens
        targets[s, : n - 1] = tokens[1:]
        attention[s, :n] = 1
        gather[s, 1:n] = s * width + torch.arange(n - 1)
        valid[s, 1:n] = True
    positions = torch.arange(width).expand(rows, width).clone()
    return MicroBatch(indices, ids, positions, attention, targets, gather, valid)


def make_microbatches(
    seqs: Sequence[TrainSequence], token_budget: int, *, packed: bool, pad_id: int = 0
) -> list[MicroBatch]:
    """Group sequences into micro-batches of at most ``token_budget`` tokens (one longer sequence
    gets a micro-batch of its own). Packed: best-fit-decreasing bins. Padded: length-sorted rows
    while rows x longest fits the budget."""
    lengths = [len(s.tokens) for s in seqs]
    if not seqs:
        return []
    if packed:
        capacity = max(token_budget, max(lengths))
        return [_packed(seqs, sorted(b)) for b in pack(lengths, capacity)]
    order = sorted(range(len(seqs)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= token_budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [_padded(seqs, sorted(g), pad_id) for g in groups]


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

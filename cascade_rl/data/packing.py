"""Sequence packing for SFT: bin assignment and collation of packed / padded batches.

Label convention (both collators): labels come back ALREADY SHIFTED, aligned with the logits
positions, so the loss is ``logprob(logits[t], labels[t])`` with no further shift:
``labels[t] = input_ids[t + 1]`` when token ``t + 1`` belongs to the same sample and is
supervised (``loss_mask[t + 1] == 1``), else ``ignore_index``. The last token of every
sample gets ``ignore_index``, so no sample learns to predict the next sample's first token.
A loss mask marks the tokens to be *predicted*, e.g. the assistant's reply tokens.

Packed rows also carry ``position_ids`` restarting at 0 and ``cu_seqlens`` for varlen
attention, so samples in one row never attend to each other; the loss of a pack is then the
sum of its samples' losses.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence

import torch

Sample = tuple[Sequence[int], Sequence[int]]  # (token ids, loss mask), equal lengths


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing of sample lengths into bins of ``capacity`` tokens.

    Samples are placed longest first (ties: lower original index first). Each goes into the
    open bin with the least remaining space that still fits it (ties: the bin opened first);
    if none fits, a new bin is opened. Bins are returned in opening order, and indices within
    a bin in placement order (so non-increasing length).

    Deterministic, O(n log n): open bins are bucketed by remaining space, with a sorted list
    of the distinct remaining values (at most ``capacity`` of them) searched by bisection and a
    heap of bin numbers per value.

    Raises:
        ValueError: a length < 1 or > ``capacity`` (truncation is the caller's policy).
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    for i, n in enumerate(lengths):
        if n > capacity or n < 1:
            raise ValueError(f"sample {i} has length {n}, outside [1, capacity={capacity}]")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free_values: list[int] = []  # sorted distinct remaining capacities of open bins
    bins_by_free: dict[int, list[int]] = {}  # remaining capacity -> min-heap of bin numbers
    for i in order:
        n = lengths[i]
        pos = bisect.bisect_left(free_values, n)
        if pos < len(free_values):
            free = free_values[pos]
            heap = bins_by_free[free]
            b = heapq.heappop(heap)
            if not heap:
                del bins_by_free[free]
                del free_values[pos]
            bins[b].append(i)
            left = free - n
        else:
            b = len(bins)
            bins.append([i])
            left = capacity - n
        if left == 0:  # full bins never accept anything again: keep them out of the index
            continue
        heap = bins_by_free.get(left)
        if heap is None:
            bins_by_free[left] = [b]
            bisect.insort(free_values, left)
        else:
            heapq.heappush(heap, b)
    return bins


def _check_sample(i: int, ids: Sequence[int], mask: Sequence[int]) -> None:
    if len(ids) == 0:
        raise ValueError(f"sample {i} is empty")
    if len(ids) != len(mask):
        raise ValueError(f"sample {i}: {len(ids)} token ids but {len(mask)} loss-mask entries")


def _shifted_labels(ids: Sequence[int], mask: Sequence[int], ignore_index: int) -> list[int]:
    """labels[t] = ids[t+1] if mask[t+1] else ignore_index; the last position is always ignored."""
    labels = [ids[t + 1] if mask[t + 1] else ignore_index for t in range(len(ids) - 1)]
    labels.append(ignore_index)
    return labels


def collate_packed(
    samples: Sequence[Sample], capacity: int | None, pad_id: int, ignore_index: int = -100
) -> dict[str, torch.Tensor]:
    """Concatenate samples into one packed row.

    Returns (T = total length, or ``capacity`` when given):
        ``input_ids`` [1, T] int64; ``labels`` [1, T] int64, shifted (see module docstring);
        ``position_ids`` [1, T] int64, restarting at 0 at every sample;
        ``cu_seqlens`` [n + 1] int32, cumulative sample lengths from 0 (real samples only);
        ``seq_lens`` [n] int32 sample lengths.

    Right padding to ``capacity``: pad tokens are ``pad_id`` with ``ignore_index`` labels and
    position ids 0, 1, 2, … of their own, so position-id based segmentation sees them as a
    separate document. They are NOT a sample: ``cu_seqlens[-1]`` is the number of real
    tokens, and varlen attention simply never computes the pad positions.

    Raises:
        ValueError: empty sample, ids/mask length mismatch, or total length > ``capacity``.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    seq_lens: list[int] = []
    for i, (ids, mask) in enumerate(samples):
        _check_sample(i, ids, mask)
        input_ids.extend(ids)
        labels.extend(_shifted_labels(ids, mask, ignore_index))
        positions.extend(range(len(ids)))
        seq_lens.append(len(ids))
    total = len(input_ids)
    if capacity is not None:
        if total > capacity:
            raise ValueError(f"samples hold {total} tokens, more than capacity {capacity}")
        pad = capacity - total
        input_ids.extend([pad_id] * pad)
        labels.extend([ignore_index] * pad)
        positions.extend(range(pad))
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    cu_seqlens = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(lens, 0)
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "cu_seqlens": cu_seqlens,
        "seq_lens": lens,
    }


def collate_padded(samples: Sequence[Sample], pad_id: int, ignore_index: int = -100) -> dict[str, torch.Tensor]:
    """One sample per row, right-padded to the longest (the fallback when packing is off).

    Returns (B samples, Tmax = longest):
        ``input_ids`` [B, Tmax] int64 (``pad_id`` on padding);
        ``attention_mask`` [B, Tmax] int64, 1 on real tokens;
        ``labels`` [B, Tmax] int64, shifted as in ``collate_packed``, ``ignore_index`` on padding;
        ``position_ids`` [B, Tmax] int64 = 0 … Tmax-1 on every row (padding continues the
        count; attention_mask hides it).
    """
    if not samples:
        raise ValueError("collate_padded needs at least one sample")
    for i, (ids, mask) in enumerate(samples):
        _check_sample(i, ids, mask)
    t_max = max(len(ids) for ids, _ in samples)
    input_ids = torch.full((len(samples), t_max), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), t_max), ignore_index, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), t_max), dtype=torch.long)
    for b, (ids, mask) in enumerate(samples):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(list(ids), dtype=torch.long)
        labels[b, :n] = torch.tensor(_shifted_labels(ids, mask, ignore_index), dtype=torch.long)
        attention_mask[b, :n] = 1
    position_ids = torch.arange(t_max, dtype=torch.long).expand(len(samples), t_max).clone()
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": attention_mask,
    }

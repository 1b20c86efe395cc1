"""Sequence packing for SFT: best-fit-decreasing assignment of samples to packs.

The trainer turns a pack's samples into model rows itself (``engines.microbatch``: packed rows with
position ids restarting at 0, so no sample attends to another, or padded / shared-prefix rows).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence


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

"""Packing: literal bins, invariants, efficiency."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_rl.data.packing import pack

IGN = -100


# --------------------------------------------------------------------------- pack: literal answers


def test_pack_literal_example():
    # lengths [5,3,8,2,7,1], capacity 10. Placement order (length desc): 8(i2) 7(i4) 5(i0) 3(i1) 2(i3) 1(i5)
    #   8 -> new bin0 [2] (free 2);  7 -> new bin1 [4] (free 3);  5 -> new bin2 [0] (free 5)
    #   3 -> best fit is bin1 (free 3 is the least that fits) -> [4, 1] (free 0)
    #   2 -> bin0 (free 2) -> [2, 3] (free 0);  1 -> only bin2 left (free 5) -> [0, 5] (free 4)
    assert pack([5, 3, 8, 2, 7, 1], 10) == [[2, 3], [4, 1], [0, 5]]


def test_pack_is_best_fit_not_first_fit():
    # lengths [1,4,7,4], capacity 10. Order: 7(i2) 4(i1) 4(i3) 1(i0)
    #   7 -> bin0 (free 3);  4 -> bin1 (free 6);  4 -> bin1 (free 2)
    #   1 -> fits bin0 (free 3) and bin1 (free 2): best fit = bin1. First-fit would pick bin0.
    assert pack([1, 4, 7, 4], 10) == [[2], [1, 3, 0]]


def test_pack_ties_broken_by_index_and_bin_order():
    # lengths [3,3,3,1,1], capacity 4: the three 3s open bins 0,1,2 in index order (free 1 each);
    # the 1s tie on free space 1 in all bins -> the earliest-opened bin gets each in turn.
    assert pack([3, 3, 3, 1, 1], 4) == [[0, 3], [1, 4], [2]]
    # equal lengths are placed in index order: [4,4,2,2,6], capacity 8. Order 6(i4) 4(i0) 4(i1) 2(i2) 2(i3)
    #   6 -> bin0 (free 2); 4 -> bin1 (free 4); 4 -> bin1 (free 0); 2 -> bin0 (free 0); 2 -> bin2
    assert pack([4, 4, 2, 2, 6], 8) == [[4, 2], [0, 1], [3]]


def test_pack_edge_cases():
    assert pack([], 8) == []
    assert pack([8], 8) == [[0]]
    assert pack([8, 8], 8) == [[0], [1]]


def test_pack_rejects_oversized_sample_naming_it():
    with pytest.raises(ValueError, match=r"sample 2 has length 11"):
        pack([3, 4, 11, 2], 10)
    with pytest.raises(ValueError, match=r"sample 1 has length 0"):
        pack([3, 0], 10)


# --------------------------------------------------------------------------- pack: invariants


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=64), max_size=60),
    capacity=st.integers(min_value=64, max_value=160),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_pack_invariants(lengths: list[int], capacity: int, seed: int):
    bins = pack(lengths, capacity)
    flat = [i for b in bins for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert all(0 < load <= capacity for load in loads)
    # any-fit property: a bin is only opened when the item did not fit an earlier bin, and bins
    # only fill up, so any two bins together exceed the capacity (no two could be merged).
    for a in range(len(loads)):
        for b in range(a + 1, len(loads)):
            assert loads[a] + loads[b] > capacity
    for b in bins:  # placement order = non-increasing length
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    # only lengths matter: permuting the input permutes indices but keeps the bins' lengths
    perm = list(range(len(lengths)))
    random.Random(seed).shuffle(perm)
    shuffled = [lengths[p] for p in perm]
    as_lengths = [[lengths[i] for i in b] for b in bins]
    assert [[shuffled[i] for i in b] for b in pack(shuffled, capacity)] == as_lengths


def test_pack_efficiency_lognormal():
    rng = random.Random(0)
    lengths = [min(4000, max(50, int(rng.lognormvariate(6.5, 1.0)))) for _ in range(5000)]
    t0 = time.perf_counter()
    bins = pack(lengths, 8192)
    elapsed = time.perf_counter() - t0
    efficiency = sum(lengths) / (len(bins) * 8192)
    print(f"pack efficiency {efficiency:.5f} over {len(bins)} bins of 8192 ({elapsed * 1e3:.1f} ms)")
    assert efficiency >= 0.995

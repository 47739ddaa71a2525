"""IdMap against a plain dict under random writes; HalfVectors slot reuse."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import irene.index.idmap as idmap_mod
from irene.index.halfvec import HalfVectors
from irene.index.idmap import IdMap

KEYS = st.integers(0, 60)
OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "remove", "merge"]),
        st.lists(st.tuples(KEYS, st.integers(0, 1000)), max_size=12, unique_by=lambda t: t[0]),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, dtype=st.sampled_from([np.int8, np.int32, np.int64]))
def test_idmap_answers_like_a_dict(ops, dtype):
    original = idmap_mod._MERGE_MIN
    idmap_mod._MERGE_MIN = 4  # merge often: both parts and their boundary get exercised
    try:
        m, want = IdMap(dtype), {}
        for op, kv in ops:
            keys = np.array([k for k, _ in kv], dtype=np.int64)
            vals = np.array([v % 100 for _, v in kv], dtype=np.int64)
            if op == "put":
                old = m.put(keys, vals)
                assert old.tolist() == [want.get(k, -1) for k in keys.tolist()]
                want.update(zip(keys.tolist(), vals.tolist(), strict=True))
            elif op == "remove":
                old = m.remove(keys)
                assert old.tolist() == [want.pop(k, -1) for k in keys.tolist()]
            else:
                m.merge()
            assert len(m) == len(want)
            probe = np.arange(-2, 64, dtype=np.int64)
            assert m.get(probe).tolist() == [want.get(k, -1) for k in probe.tolist()]
            k, v = m.items()
            assert dict(zip(k.tolist(), v.tolist(), strict=True)) == want
    finally:
        idmap_mod._MERGE_MIN = original


def test_idmap_from_arrays_checks_its_input():
    m = IdMap.from_arrays([5, 1, 9], [50, 10, 90], np.int32)
    assert m.get([1, 5, 9, 2]).tolist() == [10, 50, 90, -1]
    with pytest.raises(ValueError, match="unique"):
        IdMap.from_arrays([1, 1], [0, 0])
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        IdMap.from_arrays([1, 2], [0])
    with pytest.raises(TypeError, match="signed integer"):
        IdMap(np.uint32)


def test_idmap_memory_is_arrays_not_objects():
    n = 100_000
    m = IdMap.from_arrays(np.arange(n) * 7, np.arange(n), np.int32)
    assert m.nbytes() < 13 * n  # 8 B key + 4 B value (+ an empty dict)


def test_halfvectors_reuse_freed_slots_and_round_to_fp16():
    hv = HalfVectors(4)
    x = np.arange(24, dtype=np.float32).reshape(6, 4) / 3
    slots = hv.put(x)
    assert slots.tolist() == list(range(6)) and len(hv) == 6
    hv.free(slots[[1, 4]])
    assert len(hv) == 4
    again = hv.put(x[:3])
    assert sorted(again.tolist()[:2]) == [1, 4] and again[2] == 6  # freed first, then new
    np.testing.assert_array_equal(hv.take(again), x[:3].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(hv.take(slots[[0, 5]]), hv.take([0, 5]))
    hv.free(again[:1])  # a snapshot saves the rows in slot order with the used slots
    used = np.setdiff1d(np.arange(7), again[:1])
    copy = HalfVectors.of(4, hv.rows().copy(), used)
    assert len(copy) == len(hv) == 6
    np.testing.assert_array_equal(copy.take(used), hv.take(used))
    assert copy.put(x[:1]).tolist() == again[:1].tolist()  # the freed slot is reused

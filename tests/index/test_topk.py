"""The one top-k merge: arrays in, arrays out, equal to sorting everything."""

from __future__ import annotations

import numpy as np

from irene.index.topk import empty, merge_topk, named


def test_merge_equals_a_full_sort_with_padding():
    rng = np.random.default_rng(0)
    parts = []
    for n in (5, 3, 0):  # three shards, one of them empty: padded to k
        s, i = empty(4, 5)
        s[:, :n] = -np.sort(-rng.standard_normal((4, n)), axis=1)
        i[:, :n] = rng.integers(0, 1 << 40, (4, n))
        parts.append((s, i))
    scores, ids = merge_topk(parts, 6)
    assert scores.shape == ids.shape == (4, 6) and ids.dtype == np.int64
    for r in range(4):
        every = sorted(
            (
                (float(p[0][r, j]), int(p[1][r, j]))
                for p in parts
                for j in range(5)
                if p[1][r, j] >= 0
            ),
            key=lambda t: -t[0],
        )[:6]
        got = [(float(a), int(b)) for a, b in zip(scores[r], ids[r], strict=True) if b >= 0]
        assert got == every
    assert (ids[:, 6 - 0 :] == -1).all()  # nothing beyond k


def test_merge_pads_when_fewer_candidates_than_k_and_named_drops_gone_ids():
    s = np.array([[0.9, 0.1]], np.float32)
    i = np.array([[7, 8]], np.int64)
    scores, ids = merge_topk([(s, i)], 4)
    assert ids.tolist() == [[7, 8, -1, -1]] and np.isneginf(scores[0, 2:]).all()
    names = {7: "seven"}  # 8 was deleted between search and lookup
    assert named(scores, ids, lambda x: [names.get(int(v)) for v in x]) == [
        [("seven", np.float32(0.9).item())]
    ]

"""Clustered batches (NGAME): the 2-means order keeps similar queries together, grouped rows
hold every pair once (plus padding), and they turn back into the pair rows the loss reads;
the mined-negative filter drops items the encoder ranks above every positive."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from irene.train import artifacts
from irene.train.batches import (
    TableBatches,
    cluster_order,
    drop_likely_positives,
    group_columns,
    group_rows,
    pair_columns,
    pair_rows,
    to_tensors,
)
from tests.helpers import random_pairs


def _blobs(n_blobs=8, per=32, d=16, seed=0):
    """Well-separated unit-norm blobs, rows shuffled; returns (emb, blob of each row)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, d))
    blob = rng.permutation(np.repeat(np.arange(n_blobs), per))
    emb = centres[blob] + 0.05 * rng.normal(size=(len(blob), d))
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32), blob


def test_cluster_order_is_a_permutation_that_recovers_blobs():
    emb, blob = _blobs()
    order = cluster_order(emb, leaf_size=32, seed=0)
    assert sorted(order.tolist()) == list(range(len(emb)))
    leaves = blob[order].reshape(8, 32)  # balanced halving: 256 rows -> 8 leaves of 32
    purity = np.mean([np.bincount(leaf).max() / 32 for leaf in leaves])
    assert purity >= 0.9, purity
    rand = blob[np.random.default_rng(1).permutation(len(blob))].reshape(8, 32)
    assert np.mean([np.bincount(r).max() / 32 for r in rand]) < 0.5  # what no clustering gives
    assert np.array_equal(order, cluster_order(emb, 32, seed=0))  # seeded


@pytest.mark.parametrize("n", [0, 1, 5])
def test_cluster_order_small_inputs(n):
    emb = np.ones((n, 4), dtype=np.float32)
    assert sorted(cluster_order(emb, leaf_size=2).tolist()) == list(range(n))


def _pairs(n=60, S=10, d=8, seed=0):
    q, Y, neg = random_pairs(n, S, d, density=0.25, m=3, seed=seed)
    return q, Y, pair_columns(q, Y, neg, max_positives=4)


def test_groups_hold_every_pair_in_cluster_order_and_round_trip(tmp_path):
    q, Y, pairs = _pairs()
    n, g = len(pairs["pos"]), 8
    rank = np.empty(len(q), dtype=np.int64)
    rank[cluster_order(q, g)] = np.arange(len(q))
    key = rank[pair_rows(Y)[0]]  # each pair's query rank
    groups = group_columns(pairs, key, g)
    G = -(-n // g)
    assert len(groups["pos"]) == G and groups["pos"].shape == (G, g)
    assert all(c.shape == (g, 8) for c in groups["q_emb"])
    flat = group_rows(groups)  # back to pair rows, in cluster order, padded by the start
    order = np.resize(np.argsort(key, kind="stable"), G * g)
    for k, v in pairs.items():
        assert np.array_equal(flat[k], v[order]), k
    # the queries inside a group are consecutive in the cluster order
    assert np.all(np.diff(key[order[:n]]) >= 0)
    # through Parquet parts (the table the executors read), then as the loss's tensors
    artifacts.write_table_parts(str(tmp_path / "g"), groups, rows_per_file=3, seed=0)
    back = artifacts.read_table_parts(str(tmp_path / "g"))
    got = to_tensors(group_rows(back))
    ref = to_tensors(flat)
    o_got = np.lexsort((got["q_emb"][:, 0].numpy(), got["pos"].numpy()))
    o_ref = np.lexsort((ref["q_emb"][:, 0].numpy(), ref["pos"].numpy()))
    for k in ref:
        assert got[k].dtype == ref[k].dtype and np.array_equal(got[k][o_got], ref[k][o_ref]), k


def test_batches_of_groups_keep_each_group_whole():
    _, _, pairs = _pairs()
    n = len(pairs["pos"])
    groups = group_columns({**pairs, "row": np.arange(n)}, np.arange(n), 4)
    seen = []
    for b in TableBatches(groups, seed=2).epoch(0, batch_size=3):
        rows = group_rows(b)
        assert len(rows["pos"]) == 4 * len(b["pos"]) and len(rows["q_emb"]) == len(rows["pos"])
        for grp in rows["row"].reshape(-1, 4):  # a group = 4 consecutive pairs (padding wraps)
            assert np.all(np.diff(grp) % n == 1)
        seen += rows["row"].tolist()
    assert set(seen) == set(range(n))


def test_drop_likely_positives_removes_mined_items_above_every_positive():
    # query i points along axis i; items: 0 = axis 0, 1 = mostly axis 0, 2 = axis 1, 3 = between
    q = np.eye(3, 4, dtype=np.float32)
    items = np.array([[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 1, 0, 0], [0.5, 0.5, 0, 0]], "f4")
    Y = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]))
    mined = np.array([[0, 3], [3, 1], [0, 1]])
    out = drop_likely_positives(mined, q, items, Y, chunk=2)
    # query 0: item 0 (1.0) beats its positive item 1 (0.9): dropped; item 3 (0.5) stays.
    # query 1: its positive scores 1.0, nothing beats it; query 2 has no positive: unchanged
    assert out.tolist() == [[-1, 3], [3, 1], [0, 1]]
    assert mined.tolist() == [[0, 3], [3, 1], [0, 1]]  # the input is not modified


@pytest.mark.parametrize("chunk", [3, 8192])
def test_drop_likely_positives_equals_brute_force(chunk):
    q, Y, neg = random_pairs(500, 50, 8, density=0.05, m=6, seed=1)
    items = np.random.default_rng(2).normal(size=(50, 8)).astype(np.float32)
    scores = q @ items.T  # (n, S)
    best = np.array([scores[i, Y[i].indices].max() for i in range(Y.shape[0])])
    ref = np.where(scores[np.arange(len(q))[:, None], neg] > best[:, None], -1, neg)
    out = drop_likely_positives(neg, q, items, Y, chunk=chunk)
    assert np.array_equal(out, ref) and 0 < (out < 0).mean() < 1

"""Prepared-artifact round trips, and the tables streamed by Ray Data match the in-memory ones."""

from __future__ import annotations

import numpy as np
import torch

from irene.model.classifiers import OVAClassifiers
from irene.ray.train import read_table, reduce_stats
from irene.train import artifacts
from irene.train.batches import (
    group_columns,
    group_rows,
    item_columns,
    item_rows,
    pair_columns,
    to_tensors,
)
from irene.train.loop import EpochStats
from tests.helpers import random_pairs


def _tables(n=50, S=12, d=8, seed=0):
    q, Y, neg = random_pairs(n, S, d, density=0.2, m=3, seed=seed)
    return pair_columns(q, Y, neg, max_positives=4), item_columns(q, Y, 4, max_queries=3)


def test_items_embeddings_neighbours_round_trip(tmp_path):
    emb = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    seen = np.array([4, 1, 2])  # seen-item order is the classifier order
    artifacts.write_items(str(tmp_path / "items.parquet"), emb, seen)
    ids, seen_emb = artifacts.read_seen_items(str(tmp_path))
    assert ids == ["4", "1", "2"] and np.array_equal(seen_emb, emb[seen])
    artifacts.write_embeddings(str(tmp_path / "q.parquet"), np.array([7, 9]), emb[:2])
    rows, e = artifacts.read_embeddings(str(tmp_path / "q.parquet"))
    assert rows.tolist() == [7, 9] and np.array_equal(e, emb[:2])
    idx = np.array([[1, -1], [0, 2]])
    artifacts.write_neighbours(str(tmp_path / "n.parquet"), idx, idx + 1)
    i2, b2 = artifacts.read_neighbours(str(tmp_path / "n.parquet"))
    assert np.array_equal(i2, idx) and np.array_equal(b2, idx + 1) and i2.dtype == np.int64


def test_model_dir_round_trip(tmp_path):
    clf = OVAClassifiers(torch.randn(5, 4))
    artifacts.save_dir(str(tmp_path / "clf"), clf.save)
    back = artifacts.load_dir(str(tmp_path / "clf"), OVAClassifiers.load)
    assert torch.equal(back.base, clf.base)


def test_tables_round_trip_through_parquet_parts(tmp_path):
    pairs, items = _tables()
    n_files = artifacts.write_table_parts(str(tmp_path / "p"), pairs, rows_per_file=10, seed=0)
    assert n_files == -(-len(pairs["pos"]) // 10)
    back = artifacts.read_table_parts(str(tmp_path / "p"))
    assert sorted(back["pos"].tolist()) == sorted(pairs["pos"].tolist())  # shuffled once
    artifacts.write_table_parts(str(tmp_path / "i"), items, rows_per_file=4, seed=None)
    back = artifacts.read_table_parts(str(tmp_path / "i"))
    assert back["item"].tolist() == items["item"].tolist()
    for a, b in zip(back["q_emb"], items["q_emb"], strict=True):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    for a, b in zip(back["q_pos"], items["q_pos"], strict=True):
        assert a.dtype == np.int64 and np.array_equal(a, b)
    texts = {"anchor": ["a", "b"], "candidate": ["c", "d"], "hard": [["x", "y"], []]}
    artifacts.write_table_parts(str(tmp_path / "t"), texts, rows_per_file=5, seed=None)
    back = artifacts.read_table_parts(str(tmp_path / "t"))
    assert back["anchor"].tolist() == ["a", "b"] and [list(h) for h in back["hard"]] == [
        ["x", "y"],
        [],
    ]


def test_ray_data_streams_the_same_batches(ray_local, tmp_path):
    """Batches read by Ray Data from the Parquet parts turn into the same tensors (dtypes,
    shapes, values) as the in-memory columns, for the pair table (plain and grouped into
    clusters) and the item table."""
    pairs, items = _tables()
    groups = group_columns(pairs, np.arange(len(pairs["pos"]))[::-1], 4)
    for name, cols in (("pairs", pairs), ("groups", groups), ("items", items)):
        uri = str(tmp_path / name)
        artifacts.write_table_parts(uri, cols, rows_per_file=7, seed=None)
        batches = list(read_table(uri).iter_batches(batch_size=1000, batch_format="numpy"))
        assert len(batches) == 1
        b = batches[0]
        if name == "pairs":
            t, ref = to_tensors(b), to_tensors(cols)
        elif name == "groups":
            t, ref = to_tensors(group_rows(b)), to_tensors(group_rows(cols))
        else:
            t, ref = to_tensors(item_rows(b, 2, 0, 1)), to_tensors(item_rows(cols, 2, 0, 1))
        assert t.keys() == ref.keys()
        # Ray Data reads the parts in parallel: compare in a canonical row order
        order_t = np.lexsort((t["q_emb"][:, 0].numpy(), t["pos"].numpy()))
        order_r = np.lexsort((ref["q_emb"][:, 0].numpy(), ref["pos"].numpy()))
        for k in ref:
            assert t[k].dtype == ref[k].dtype, k
            assert torch.equal(t[k][order_t], ref[k][order_r]), k


def test_reduce_stats_single_process_and_helpers():
    m = reduce_stats(EpochStats(epoch=3, loss=0.5, pairs=100, seconds=2.0))
    assert m == {"epoch": 3, "loss": 0.5, "pairs": 100, "seconds": 2.0, "pairs_per_s": 50.0}
    from irene.train.result import sub_state

    state = {"generator.w": torch.ones(1), "bias": torch.zeros(())}
    assert list(sub_state(state, "generator")) == ["w"]

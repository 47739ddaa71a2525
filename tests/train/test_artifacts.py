"""Prepared-artifact round trips and the Ray Data batch schema of the pair table."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from irene.config import ClassifierConfig
from irene.model.classifiers import OVAClassifiers
from irene.train import artifacts
from irene.train.loop import EpochStats, fit
from irene.train.pairs import BATCH_KEYS, PairBatches
from irene.train.ray_train import (
    BATCH_DTYPES,
    FaultInjection,
    pairs_dataset,
    reduce_stats,
    sub_state,
)
from irene.train.stages import classifier_objective, classifier_optimizer


def _pairs(n=50, S=12, d=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, d)).astype(np.float32)
    Y = sp.random(n, S, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    Y.data[:] = 1
    Y = Y[np.diff(Y.indptr) > 0]
    neg = rng.integers(0, S, size=(Y.shape[0], 3))
    return PairBatches(q[: Y.shape[0]], Y, neg, batch_size=16, max_positives=4)


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


def test_pair_table_streams_the_in_memory_schema(ray_local, tmp_path):
    """Parquet parts read by Ray Data give the batches PairBatches gives, so one loop serves
    both; the shared fit() trains on the Ray Data iterator directly."""
    batches = _pairs()
    cols = batches.to_columns()
    n_files = artifacts.write_pairs(str(tmp_path / "pairs"), cols, rows_per_file=10, seed=0)
    assert n_files == -(-batches.num_pairs // 10)
    ds = pairs_dataset(str(tmp_path))
    assert ds.count() == batches.num_pairs
    streamed = next(iter(ds.iter_torch_batches(batch_size=16, dtypes=BATCH_DTYPES)))
    in_memory = next(iter(batches))
    assert set(streamed) == set(BATCH_KEYS)
    for k in BATCH_KEYS:
        assert streamed[k].dtype == in_memory[k].dtype
        assert streamed[k].shape[1:] == in_memory[k].shape[1:]
    # the multiset of pairs is preserved by the shuffled write
    got = sorted(ds.to_pandas()["pos"].tolist())
    assert got == sorted(cols["pos"].tolist())
    cfg = ClassifierConfig(epochs=2, batch_size=16)
    obj = classifier_objective(np.eye(12, 8, dtype=np.float32), cfg)
    hist = fit(
        obj,
        lambda e: ds.iter_torch_batches(batch_size=16, dtypes=BATCH_DTYPES),
        classifier_optimizer(obj, cfg),
        epochs=2,
    )
    assert [h.pairs for h in hist] == [batches.num_pairs] * 2


def test_reduce_stats_single_process_and_helpers():
    m = reduce_stats(EpochStats(epoch=3, loss=0.5, pairs=100, seconds=2.0))
    assert m == {"epoch": 3, "loss": 0.5, "pairs": 100, "seconds": 2.0, "pairs_per_s": 50.0}
    f = FaultInjection.from_env("rank=1,epoch=2,marker=/tmp/m")
    assert f == FaultInjection(1, 2, "/tmp/m", 3.0) and FaultInjection.from_env("") is None
    state = {"generator.w": torch.ones(1), "bias": torch.zeros(())}
    assert list(sub_state(state, "generator")) == ["w"]

"""The protocol's ranking loop, the seen diagnostic and the arms on a hand-made split."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from irene.config import EvalConfig
from irene.data.split import zero_shot_split
from irene.eval.protocol import EvalData, rank, seen_diagnostic
from tests.helpers import synthetic_xc


def test_rank_matches_brute_force_and_pads():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(7, 5)).astype(np.float32)
    items = rng.normal(size=(9, 5)).astype(np.float32)
    cand = np.arange(100, 109)
    ids, scores = rank(q, items, 4, cand, batch=3)
    brute = np.argsort(-(q @ items.T), axis=1, kind="stable")[:, :4]
    assert np.array_equal(ids, cand[brute])
    np.testing.assert_allclose(scores, np.take_along_axis(q @ items.T, brute, 1), rtol=1e-5)
    exclude = sp.csr_matrix((np.ones(1), ([0], [ids[0, 0]])), shape=(7, 200))
    ids2, _ = rank(q, items, 4, cand, exclude)
    assert ids2[0, 0] == ids[0, 1] and np.array_equal(ids2[1:], ids[1:])
    few, few_scores = rank(q, items[:2], 4)
    assert (few[:, 2:] == -1).all() and np.isinf(few_scores[:, 2:]).all()


def test_seen_diagnostic_ranks_seen_items_only():
    ds = synthetic_xc(n_labels=30, n_train=120, n_test=60, seed=2)
    split = zero_shot_split(ds, 0.2, 0)
    rng = np.random.default_rng(1)
    item_emb = rng.normal(size=(30, 8)).astype(np.float32)
    item_emb /= np.linalg.norm(item_emb, axis=1, keepdims=True)
    tst = rng.normal(size=(60, 8)).astype(np.float32)
    data = EvalData(ds, split, item_emb, tst)
    # classifiers equal to the embeddings: all three arms are the same ranking
    same = seen_diagnostic(data, item_emb[split.seen], EvalConfig())
    assert same["encoder"] == same["classifiers"] == same["fused"]
    # classifiers that point at each test query's seen positives beat the encoder
    Y = split.Y_tst_full[:, split.seen].toarray()  # (60, S)
    W = item_emb[split.seen] + 5 * (Y.T @ tst) / np.maximum(Y.sum(0), 1)[:, None]
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    better = seen_diagnostic(data, W.astype(np.float32), EvalConfig())
    assert better["classifiers"]["R@10"] > same["encoder"]["R@10"]
    # only seen items are ranked: a test query's novel positives never count
    assert better["classifiers"]["n_eval"] == int((Y.sum(1) > 0).sum())

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from irene.eval.metrics import (
    DEFAULT_KS,
    RankingAccumulator,
    evaluate,
    filter_mask,
    inverse_propensity,
    novel_share_at_1,
    remove_pairs,
    topk,
)


def csr_from_rows(rows: list[list[int]], n_labels: int) -> sp.csr_matrix:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([c for r in rows for c in r], dtype=np.int64)
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_labels))


# ---------------------------------------------------------------------------------------------
# hand-computed example
# ---------------------------------------------------------------------------------------------

# 6 labels, 4 queries; query 3 has no positives and must be excluded from every average.
HAND_Y = [[0, 2], [1, 3, 4, 5], [5], []]
HAND_PRED = np.array(
    [
        [2, 1, 0],  # hits 1 0 1   (|pos| = 2)
        [0, 3, 5],  # hits 0 1 1   (|pos| = 4 > k)
        [5, 0, 1],  # hits 1 0 0   (|pos| = 1 < k)
        [0, 1, 2],  # no positives -> excluded
    ]
)
HAND_INV_PROP = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])


def test_evaluate_hand_computed():
    Y = csr_from_rows(HAND_Y, 6)
    m = evaluate(HAND_PRED, Y, HAND_INV_PROP, ks=(1, 3))
    assert m["n_eval"] == 3
    # P@1 = mean(1, 0, 1) = 2/3 ; P@3 = mean(2/3, 2/3, 1/3) = 5/9
    assert m["P@1"] == pytest.approx(100 * 2 / 3)
    assert m["P@3"] == pytest.approx(100 * 5 / 9)
    # R@1 = mean(1/2, 0/4, 1/1) = 1/2 ; R@3 = mean(2/2, 2/4, 1/1) = 5/6
    assert m["R@1"] == pytest.approx(50.0)
    assert m["R@3"] == pytest.approx(100 * 5 / 6)
    # nDCG@1 = mean(1, 0, 1)
    assert m["nDCG@1"] == pytest.approx(100 * 2 / 3)
    # nDCG@3: q0 (1 + 1/log2 4) / (1 + 1/log2 3)            (ideal has min(3, 2) = 2 terms)
    #         q1 (1/log2 3 + 1/log2 4) / (1 + 1/log2 3 + 1/log2 4)
    #         q2 1 / 1                                        (ideal has min(3, 1) = 1 term)
    l3 = 1 / math.log2(3)
    q0 = 1.5 / (1 + l3)
    q1 = (l3 + 0.5) / (1 + l3 + 0.5)
    assert m["nDCG@3"] == pytest.approx(100 * (q0 + q1 + 1.0) / 3)  # ~81.68
    assert m["nDCG@3"] == pytest.approx(81.681, abs=1e-3)
    # PSP@1: gained inv_p of hits at rank 1: 3 + 0 + 6 = 9;
    #        best achievable (largest inv_p among positives): 3 + 6 + 6 = 15 -> 60 %
    assert m["PSP@1"] == pytest.approx(60.0)
    # PSP@3: gained 3+1 + 4+6 + 6 = 20; best: (3+1) + (6+5+4) + 6 = 25 -> 80 %
    assert m["PSP@3"] == pytest.approx(80.0)
    assert set(m) == {f"{n}@{k}" for n in ("P", "R", "nDCG", "PSP") for k in (1, 3)} | {"n_eval"}


def test_evaluate_without_inv_prop_and_default_ks():
    rng = np.random.default_rng(0)
    Y = sp.random(20, 30, density=0.2, format="csr", random_state=1)
    Y.data[:] = 1
    pred = np.stack([rng.permutation(30)[:10] for _ in range(20)])
    m = evaluate(pred, Y)
    assert not any(key.startswith("PSP") for key in m)
    for k in DEFAULT_KS:
        for name in ("P", "R", "nDCG"):
            assert 0.0 <= m[f"{name}@{k}"] <= 100.0


def test_evaluate_rejects_short_pred():
    Y = csr_from_rows(HAND_Y, 6)
    with pytest.raises(ValueError):
        evaluate(HAND_PRED, Y, ks=(1, 5))


def test_evaluate_no_positive_rows_gives_nan():
    Y = csr_from_rows([[], []], 4)
    m = evaluate(np.array([[0], [1]]), Y, ks=(1,))
    assert m["n_eval"] == 0
    assert math.isnan(m["P@1"])


def test_repeated_and_padding_labels_are_not_double_counted():
    Y = csr_from_rows([[1, 2]], 5)
    m = evaluate(np.array([[1, 1, -1]]), Y, ks=(3,))
    # one distinct hit among 3 slots; the repeat and the -1 pad are misses
    assert m["P@3"] == pytest.approx(100 / 3)
    assert m["R@3"] == pytest.approx(50.0)


def test_psp_matches_pyxclib_style_reference():
    rng = np.random.default_rng(3)
    n, n_labels, k = 40, 25, 5
    Y = sp.random(n, n_labels, density=0.15, format="csr", random_state=4)
    Y.data[:] = 1
    inv_p = rng.uniform(1, 5, size=n_labels)
    pred = np.stack([rng.permutation(n_labels)[:k] for _ in range(n)])
    # reference: pyxclib psprecision = mean_rows(gain) / mean_rows(ideal gain)
    dense = Y.toarray()
    gain = np.array([sum(inv_p[j] * dense[i, j] for j in pred[i]) for i in range(n)])
    ideal = np.array([np.sort(inv_p * dense[i])[::-1][:k].sum() for i in range(n)])
    assert evaluate(pred, Y, inv_p, ks=(k,))[f"PSP@{k}"] == pytest.approx(
        100 * gain.mean() / ideal.mean()
    )


# ---------------------------------------------------------------------------------------------
# propensities and filters
# ---------------------------------------------------------------------------------------------


def test_inverse_propensity_formula():
    # 4 train rows; label frequencies 4, 1, 0
    Y = csr_from_rows([[0], [0, 1], [0], [0]], 3)
    got = inverse_propensity(Y, A=0.55, B=1.5)
    c = (math.log(4) - 1) * 2.5**0.55
    expected = [1 + c * (4 + 1.5) ** -0.55, 1 + c * (1 + 1.5) ** -0.55, 1 + c * 1.5**-0.55]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # hand values: c = (1.386294 - 1) * 2.5**0.55 = 0.386294 * 1.655258 = 0.639418
    #   l0: 1 + 0.639418 * 5.5**-0.55 = 1 + 0.639418 * 0.391562 = 1.250372
    #   l1: 1 + 0.639418 * 2.5**-0.55 = 1 + 0.386294 = ln 4 (N_l = 1 always gives ln N)
    #   l2: 1 + 0.639418 * 1.5**-0.55 = 1 + 0.639418 * 0.800110 = 1.511605
    np.testing.assert_allclose(got, [1.250372, math.log(4), 1.511605], atol=1e-5)
    # rarer labels get larger inverse propensity
    assert got[0] < got[1] < got[2]


def test_filter_mask_and_remove_pairs():
    mask = filter_mask(np.array([[0, 2], [1, 1], [0, 2]]), n_rows=2, n_labels=4)
    assert mask.shape == (2, 4)
    assert mask.nnz == 2 and set(mask.data.tolist()) == {1}
    Y = csr_from_rows([[1, 2], [1]], 4)
    Yf = remove_pairs(Y, mask)
    assert Yf.toarray().tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    assert Yf.nnz == 1
    assert filter_mask(None, 3, 5).nnz == 0
    assert remove_pairs(Y, None).nnz == 3
    with pytest.raises(ValueError):
        filter_mask(np.array([[2, 0]]), n_rows=2, n_labels=4)


def test_filtered_pair_neither_ranked_nor_counted():
    # row 0: label 3 is a filtered pair with the best score and is also in the raw ground truth
    scores = np.array(
        [
            [0.1, 0.2, 0.3, 0.9, 0.0],
            [0.5, 0.4, 0.3, 0.2, 0.1],
        ],
        dtype=np.float32,
    )
    Y_raw = csr_from_rows([[3, 1], [4]], 5)
    mask = filter_mask(np.array([[0, 3], [1, 4]]), 2, 5)
    idx, _ = topk(scores, 2, exclude=mask)
    assert idx.tolist() == [[2, 1], [0, 1]]
    assert 3 not in idx[0]
    Y = remove_pairs(Y_raw, mask)
    m = evaluate(idx, Y, ks=(1, 2))
    # row 1 lost its only positive -> excluded; row 0 keeps label 1 (ranked 2nd)
    assert m["n_eval"] == 1
    assert m["P@1"] == 0.0
    assert m["P@2"] == pytest.approx(50.0)
    assert m["R@2"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------
# top-k
# ---------------------------------------------------------------------------------------------


def test_topk_candidates_and_tie_break():
    candidates = np.array([7, 2, 5, 9])
    scores = np.array([[0.5, 0.5, 0.9, 0.1], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    idx, vals = topk(scores, 3, candidates=candidates)
    assert idx.dtype == np.int64 and vals.dtype == np.float32
    # row 0: 5 (0.9), then the 0.5 tie between labels 7 and 2 -> lower id 2 first
    assert idx[0].tolist() == [5, 2, 7]
    np.testing.assert_allclose(vals[0], [0.9, 0.5, 0.5])
    # row 1: all tied -> lowest ids, even across the k boundary
    assert idx[1].tolist() == [2, 5, 7]


def test_topk_matches_full_sort_with_many_ties():
    rng = np.random.default_rng(5)
    n, c, k = 57, 40, 7
    scores = rng.integers(0, 4, size=(n, c)).astype(np.float32)  # lots of ties
    candidates = rng.permutation(1000)[:c]
    idx, vals = topk(scores, k, candidates=candidates, chunk_rows=8)
    for i in range(n):
        ref = sorted(zip(-scores[i], candidates, strict=True))[:k]
        assert idx[i].tolist() == [int(lab) for _, lab in ref]
        np.testing.assert_array_equal(vals[i], [-s for s, _ in ref])


def test_topk_exclude_with_row_offset_and_nan():
    exclude = filter_mask(np.array([[5, 1], [6, 0], [6, 9]]), n_rows=8, n_labels=10)
    scores = np.array([[1.0, 0.9, 0.8], [0.7, 0.8, np.nan]], dtype=np.float32)
    candidates = np.array([1, 0, 2])
    idx, vals = topk(scores, 3, candidates=candidates, exclude=exclude, row_offset=5)
    # global row 5: label 1 excluded -> last with -inf ; row 6: label 0 excluded, NaN -> -inf
    assert idx[0].tolist() == [0, 2, 1] and vals[0, 2] == -np.inf
    assert idx[1].tolist() == [1, 0, 2]
    assert np.all(np.isneginf(vals[1, 1:]))
    assert not np.isnan(scores[0]).any()  # input untouched
    assert scores[0, 0] == 1.0


def test_ranking_accumulator_equals_single_call():
    rng = np.random.default_rng(6)
    scores = rng.normal(size=(23, 15)).astype(np.float32)
    exclude = filter_mask(np.stack([np.arange(23), rng.integers(0, 15, 23)], 1), 23, 15)
    acc = RankingAccumulator(4, exclude=exclude)
    for start in range(0, 23, 10):
        acc.add(scores[start : start + 10])
    ref_idx, ref_vals = topk(scores, 4, exclude=exclude)
    np.testing.assert_array_equal(acc.pred, ref_idx)
    np.testing.assert_array_equal(acc.vals, ref_vals)
    assert RankingAccumulator(3).pred.shape == (0, 3)


def test_novel_share_at_1():
    Y = csr_from_rows(HAND_Y, 6)
    novel = np.zeros(6, dtype=bool)
    novel[[2, 5]] = True
    out = novel_share_at_1(HAND_PRED, novel, Y)
    # evaluated rows 0..2 have rank-1 labels 2, 0, 5 -> 2 of 3 novel
    assert out["novel_at_1"] == pytest.approx(100 * 2 / 3)
    # positives: {0,2}, {1,3,4,5}, {5} -> novel ones: 2, 5, 5 -> 3 of 7
    assert out["novel_in_positives"] == pytest.approx(100 * 3 / 7)


# ---------------------------------------------------------------------------------------------
# cross-check against ranx
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:unsafe cast")
def test_matches_ranx():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(7)
    n, n_labels, k = 50, 200, 10
    rows = [
        sorted(rng.choice(n_labels, size=rng.integers(1, 15), replace=False).tolist())
        for _ in range(n)
    ]
    Y = csr_from_rows(rows, n_labels)
    # scores biased towards positives so that there are hits at every rank
    scores = rng.normal(size=(n, n_labels)).astype(np.float32) + 1.5 * Y.toarray()
    idx, _ = topk(scores, k)

    qrels = ranx.Qrels({f"q{i}": {f"d{j}": 1 for j in rows[i]} for i in range(n)})
    run = ranx.Run(
        {f"q{i}": {f"d{lab}": float(k - r) for r, lab in enumerate(idx[i])} for i in range(n)}
    )
    ks = (1, 3, 5, 10)
    names = [f"{m}@{kk}" for kk in ks for m in ("precision", "recall", "ndcg")]
    ref = ranx.evaluate(qrels, run, names)
    ours = evaluate(idx, Y, ks=ks)
    assert ours["n_eval"] == n
    for kk in ks:
        assert ours[f"P@{kk}"] / 100 == pytest.approx(ref[f"precision@{kk}"], abs=1e-6)
        assert ours[f"R@{kk}"] / 100 == pytest.approx(ref[f"recall@{kk}"], abs=1e-6)
        assert ours[f"nDCG@{kk}"] / 100 == pytest.approx(ref[f"ndcg@{kk}"], abs=1e-6)

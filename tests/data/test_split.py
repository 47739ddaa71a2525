from __future__ import annotations

import uuid

import numpy as np
import pytest
import scipy.sparse as sp

from irene.data.split import ZeroShotSplit, zero_shot_split
from irene.data.xc import XCDataset


def _random_ds(n_trn=400, n_tst=150, L=120, n_unseen=7, seed=0) -> XCDataset:
    """Random multi-label dataset; the last ``n_unseen`` labels never occur in training."""
    rng = np.random.default_rng(seed)

    def mat(n, n_cols):
        rows = [rng.choice(n_cols, size=rng.integers(0, 5), replace=False) for _ in range(n)]
        indptr = np.cumsum([0] + [len(r) for r in rows])
        indices = np.concatenate(rows).astype(np.int64)
        return sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(n, L))

    return XCDataset(
        trn_X=[f"q{i}" for i in range(n_trn)],
        tst_X=[f"t{i}" for i in range(n_tst)],
        Y=[f"l{i}" for i in range(L)],
        trn_X_Y=mat(n_trn, L - n_unseen),
        tst_X_Y=mat(n_tst, L),
        filter_test=np.array([[0, 0]]),
    )


@pytest.fixture(scope="module")
def ds() -> XCDataset:
    return _random_ds()


def _train_labels(ds: XCDataset) -> np.ndarray:
    return np.unique(ds.trn_X_Y.indices)


def _assert_same_split(a: ZeroShotSplit, b: ZeroShotSplit) -> None:
    assert a.seed == b.seed and a.novel_fraction == b.novel_fraction
    for f in ("seen", "novel", "trn_rows", "zero_rows"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    for f in ("Y_trn", "Y_tst_zero", "Y_tst_full"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.shape == y.shape and (x != y).nnz == 0


def test_seen_novel_partition_all_labels(ds):
    s = zero_shot_split(ds, novel_fraction=0.2, seed=3)
    assert s.seen.dtype == np.int64 and s.novel.dtype == np.int64
    assert np.all(np.diff(s.seen) > 0) and np.all(np.diff(s.novel) > 0)
    assert len(np.intersect1d(s.seen, s.novel)) == 0
    np.testing.assert_array_equal(np.union1d(s.seen, s.novel), np.arange(ds.num_labels))


def test_fraction_respected_and_unseen_labels_novel(ds):
    in_train = _train_labels(ds)
    never = np.setdiff1d(np.arange(ds.num_labels), in_train)
    assert len(never) >= 7
    for frac in (0.1, 0.25, 0.5):
        s = zero_shot_split(ds, novel_fraction=frac, seed=1)
        assert np.isin(never, s.novel).all()
        novel_from_train = np.intersect1d(s.novel, in_train)
        assert len(novel_from_train) == round(frac * len(in_train))
        np.testing.assert_array_equal(s.seen, np.setdiff1d(in_train, novel_from_train))


def test_deterministic_per_seed_and_seeds_differ(ds):
    a, b = zero_shot_split(ds, 0.1, seed=7), zero_shot_split(ds, 0.1, seed=7)
    _assert_same_split(a, b)
    c = zero_shot_split(ds, 0.1, seed=8)
    assert not np.array_equal(a.novel, c.novel)


def test_train_matrix_has_only_seen_labels(ds):
    s = zero_shot_split(ds, 0.3, seed=0)
    assert s.Y_trn.shape == (len(s.trn_rows), ds.num_labels)
    assert np.isin(s.Y_trn.indices, s.seen).all()
    assert (np.diff(s.Y_trn.indptr) > 0).all()  # every kept row has a seen label
    assert np.all(np.diff(s.trn_rows) > 0)
    # dropped train rows are exactly those without a seen label
    has_seen = np.array(
        [np.isin(ds.trn_X_Y[i].indices, s.seen).any() for i in range(len(ds.trn_X))]
    )
    np.testing.assert_array_equal(s.trn_rows, np.flatnonzero(has_seen))
    # kept rows keep all their seen labels with their values
    sub = ds.trn_X_Y[s.trn_rows][:, s.seen]
    assert (sub != s.Y_trn[:, s.seen]).nnz == 0


def test_zero_shot_test_rows(ds):
    s = zero_shot_split(ds, 0.3, seed=0)
    assert s.Y_tst_zero.shape == (len(s.zero_rows), ds.num_labels)
    assert np.isin(s.Y_tst_zero.indices, s.novel).all()
    assert (np.diff(s.Y_tst_zero.indptr) > 0).all()  # every zero row has a novel label
    has_novel = np.array(
        [np.isin(ds.tst_X_Y[i].indices, s.novel).any() for i in range(len(ds.tst_X))]
    )
    np.testing.assert_array_equal(s.zero_rows, np.flatnonzero(has_novel))
    assert (s.Y_tst_full != ds.tst_X_Y).nnz == 0 and s.Y_tst_full.shape == ds.tst_X_Y.shape


def test_explicit_zero_entries_do_not_count_as_occurrences():
    Y = sp.csr_matrix((np.array([1.0, 0.0]), np.array([0, 1]), np.array([0, 1, 2])), (2, 3))
    ds = XCDataset(["a", "b"], ["t"], ["l0", "l1", "l2"], Y, sp.csr_matrix((1, 3)))
    s = zero_shot_split(ds, 0.4, seed=0)  # round(0.4 * 1) == 0 novel from training
    np.testing.assert_array_equal(s.seen, [0])
    np.testing.assert_array_equal(s.novel, [1, 2])
    np.testing.assert_array_equal(s.trn_rows, [0])


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5])
def test_invalid_fraction(ds, frac):
    with pytest.raises(ValueError, match="novel_fraction"):
        zero_shot_split(ds, novel_fraction=frac)


def test_stats(ds):
    s = zero_shot_split(ds, 0.2, seed=0)
    st = s.stats()
    assert st["n_seen"] + st["n_novel"] == ds.num_labels
    assert st["n_zero_shot_rows"] == len(s.zero_rows)
    assert st["n_train_rows"] == len(s.trn_rows)
    assert st["avg_novel_labels_per_zero_row"] >= 1.0


def test_save_load_local(ds, tmp_path):
    s = zero_shot_split(ds, 0.2, seed=5)
    s.save(tmp_path / "split")
    assert (tmp_path / "split" / "split.npz").exists()
    assert (tmp_path / "split" / "split.json").exists()
    _assert_same_split(s, ZeroShotSplit.load(tmp_path / "split"))


def test_save_load_s3(ds, moto_endpoint, monkeypatch):
    import boto3

    monkeypatch.setenv("IRENE_S3_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"split-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    s = zero_shot_split(ds, 0.2, seed=5)
    s.save(f"s3://{bucket}/runs/split")
    _assert_same_split(s, ZeroShotSplit.load(f"s3://{bucket}/runs/split"))


def test_validation_dataset_is_the_training_side_only():
    from irene.data.split import validation_dataset

    ds = _random_ds()
    ds.filter_train = np.array(
        [[i, int(ds.trn_X_Y[i].indices[0])] for i in range(0, 40, 4) if ds.trn_X_Y[i].nnz]
    )
    split = zero_shot_split(ds, 0.1, 3)
    v = validation_dataset(ds, split, fraction=0.25, seed=5)
    val = v.ds
    # labels: the seen items; queries: the kept train queries, a quarter as validation queries
    assert val.Y == [ds.Y[i] for i in split.seen] and np.array_equal(v.labels, split.seen)
    assert len(val.tst_X) == round(0.25 * len(split.trn_rows))
    assert sorted([*v.trn_rows, *v.tst_rows]) == sorted(split.trn_rows.tolist())
    assert val.tst_X == [ds.trn_X[i] for i in v.tst_rows] and not set(val.tst_X) & set(ds.tst_X)
    # ground truth: the original train labels of those queries, restricted to the seen items
    for rows, Y in ((v.trn_rows, val.trn_X_Y), (v.tst_rows, val.tst_X_Y)):
        for r, orig in enumerate(rows):
            want = sorted(
                v.labels.tolist().index(c)
                for c in ds.trn_X_Y[orig].indices
                if c in set(split.seen.tolist())
            )
            assert Y[r].indices.tolist() == want
    # train filter pairs move with their queries and labels
    seen, kept = set(split.seen.tolist()), set(split.trn_rows.tolist())
    expected = [(q, lab) for q, lab in ds.filter_train.tolist() if lab in seen and q in kept]
    assert len(val.filter_train) + len(val.filter_test) == len(expected) > 0
    for q, lab in val.filter_test:
        assert [int(v.tst_rows[q]), int(v.labels[lab])] in ds.filter_train.tolist()
    # deterministic, and the usual protocol runs on it
    again = validation_dataset(ds, split, fraction=0.25, seed=5)
    assert again.ds.tst_X == val.tst_X
    vsplit = zero_shot_split(val, 0.1, 3)
    assert len(vsplit.novel) > 0 and len(vsplit.zero_rows) > 0

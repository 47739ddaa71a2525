from __future__ import annotations

import faiss  # faiss before anything that may pull in torch
import numpy as np
import pytest

from irene.index.shard import HNSW_REBUILD_FRACTION, IVF_MIN_POINTS_PER_CENTROID, IndexSpec, Shard

DIM = 16


def _unit(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)  # (n, d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T  # (m, n)
    order = np.argsort(-s, axis=1)[:, :k]
    return np.take_along_axis(s, order, axis=1), ids[order]


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    hits = sum(len(set(g.tolist()) & set(w.tolist())) for g, w in zip(got, want, strict=True))
    return hits / want.size


SPECS = {
    "flat": IndexSpec(kind="flat", use_gpu=False),
    "hnsw": IndexSpec(kind="hnsw", hnsw_m=16, ef_search=64, use_gpu=False),
    "ivf": IndexSpec(kind="ivf", ivf_nlist=4, nprobe=4, use_gpu=False),  # nprobe=nlist: exact
}


@pytest.mark.parametrize("kind", list(SPECS))
def test_search_matches_brute_force(kind):
    rng = np.random.default_rng(0)
    x = _unit(rng, 400)
    ids = np.arange(1000, 1400, dtype=np.int64)
    shard = Shard(DIM, SPECS[kind])
    shard.add(ids, x)
    assert shard.count == 400 and shard.dim == DIM
    q = _unit(rng, 20)
    scores, got = shard.search(q, 10)
    want_s, want = _brute(x, ids, q, 10)
    assert scores.shape == got.shape == (20, 10)
    if kind == "hnsw":
        assert _recall(got, want) >= 0.95
    else:
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("kind", list(SPECS))
def test_upsert_replaces_and_remove(kind):
    rng = np.random.default_rng(1)
    x = _unit(rng, 200)
    ids = np.arange(200, dtype=np.int64)
    shard = Shard(DIM, SPECS[kind])
    shard.add(ids, x)
    new = _unit(rng, 1)
    shard.add([7], new)
    assert shard.count == 200
    np.testing.assert_allclose(shard.get(7), new[0], rtol=1e-6)
    _, got = shard.search(new, 1)
    assert got[0, 0] == 7
    _, got = shard.search(x[7:8], 5)  # the old vector of id 7 is gone
    assert shard.get(7) is not None and not np.allclose(shard.get(7), x[7])

    assert shard.remove([3, 4, 999, 3]) == 2
    assert shard.count == 198 and shard.get(3) is None and 3 not in shard
    _, got = shard.search(x[3:5], 200)
    assert not np.isin(got, [3, 4]).any()
    assert shard.get(9) is not None


def test_duplicate_ids_in_one_batch_last_wins():
    rng = np.random.default_rng(2)
    x = _unit(rng, 3)
    shard = Shard(DIM, SPECS["flat"])
    shard.add([5, 6, 5], x)
    assert shard.count == 2
    np.testing.assert_allclose(shard.get(5), x[2])


def test_padding_when_fewer_than_k():
    shard = Shard(DIM, SPECS["flat"])
    s, i = shard.search(np.zeros((2, DIM), np.float32), 4)
    assert (i == -1).all() and np.isneginf(s).all()
    shard.add([1, 2], _unit(np.random.default_rng(3), 2))
    s, i = shard.search(np.ones((1, DIM), np.float32), 4)
    assert (
        sorted(i[0, :2].tolist()) == [1, 2]
        and (i[0, 2:] == -1).all()
        and np.isneginf(s[0, 2:]).all()
    )


def test_hnsw_removal_uses_tombstones_then_rebuilds():
    rng = np.random.default_rng(4)
    n = 300
    x = _unit(rng, n)
    ids = np.arange(n, dtype=np.int64)
    shard = Shard(DIM, SPECS["hnsw"])
    shard.add(ids, x)
    removed = ids[:40]  # below the rebuild threshold
    assert shard.remove(removed) == 40
    assert shard.n_tombstones == 40 and shard.n_stored == n
    _, got = shard.search(x[:40], 10)  # the removed vectors themselves as queries
    assert not np.isin(got, removed).any()
    assert (got >= 0).all()  # the filter doesn't starve the result list
    _, want = _brute(x[40:], ids[40:], x[:40], 10)
    assert _recall(got, want) >= 0.9

    # overwriting an id also tombstones its old vector
    shard.add([100], x[0:1])
    assert shard.n_tombstones == 41
    _, got = shard.search(x[100:101], 1)
    assert got[0, 0] != 100

    more = ids[40 : 40 + int(HNSW_REBUILD_FRACTION * n)]  # crosses 20 %: rebuild
    shard.remove(more)
    assert shard.n_tombstones == 0
    assert shard.n_stored == shard.count == n - 40 - len(more)
    live = np.setdiff1d(ids, np.concatenate([removed, more]))
    _, got = shard.search(x[live[:20]], 1)
    assert np.array_equal(got[:, 0], np.where(live[:20] == 100, got[:, 0], live[:20]))
    np.testing.assert_allclose(shard.get(100), x[0], rtol=1e-6)


def test_ivf_trains_lazily_after_threshold():
    rng = np.random.default_rng(5)
    spec = SPECS["ivf"]
    threshold = spec.ivf_nlist * IVF_MIN_POINTS_PER_CENTROID
    shard = Shard(DIM, spec)
    x = _unit(rng, threshold + 50)
    shard.add(np.arange(threshold - 1), x[: threshold - 1])
    assert not shard.ivf_trained  # exact flat fallback
    _, got = shard.search(x[:5], 1)
    assert got[:, 0].tolist() == [0, 1, 2, 3, 4]
    shard.add(np.arange(threshold - 1, threshold + 50), x[threshold - 1 :])
    assert shard.ivf_trained and shard.count == threshold + 50
    np.testing.assert_allclose(shard.get(threshold + 10), x[threshold + 10])
    assert shard.remove([0, 1]) == 2 and shard.get(0) is None
    _, got = shard.search(x[2:7], 1)
    assert got[:, 0].tolist() == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("kind", list(SPECS))
def test_bytes_round_trip(kind):
    rng = np.random.default_rng(6)
    x = _unit(rng, 250)
    shard = Shard(DIM, SPECS[kind])
    shard.add(np.arange(250), x)
    shard.remove(np.arange(10))
    restored = Shard.from_bytes(shard.to_bytes())
    assert restored.count == 240 and restored.spec == shard.spec
    assert restored.n_tombstones == shard.n_tombstones
    q = _unit(rng, 5)
    for a, b in zip(shard.search(q, 7), restored.search(q, 7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert restored.get(5) is None
    np.testing.assert_allclose(restored.get(100), x[100])
    restored.add([5], x[5:6])  # still writable, labels continue correctly
    assert restored.count == 241 and restored.search(x[5:6], 1)[1][0, 0] == 5


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        IndexSpec(kind="lsh")
    with pytest.raises(ValueError):
        IndexSpec(use_gpu="yes")
    if faiss.get_num_gpus() == 0:
        with pytest.raises(ValueError, match="no GPU"):
            Shard(DIM, IndexSpec(use_gpu=True))
    shard = Shard(DIM)
    with pytest.raises(ValueError):
        shard.add([1], np.zeros((1, DIM + 1)))
    with pytest.raises(ValueError):
        shard.add([1, 2], np.zeros((1, DIM)))
    with pytest.raises(ValueError):
        shard.add([1], np.full((1, DIM), np.nan))
    with pytest.raises(ValueError):
        shard.add([-1], np.zeros((1, DIM)))
    with pytest.raises(ValueError):
        shard.search(np.zeros((1, DIM)), 0)
    assert shard.count == 0

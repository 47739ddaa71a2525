from __future__ import annotations

import io
import json

import faiss  # faiss before anything that may pull in torch
import numpy as np
import pytest

from irene.index.shard import HNSW_REBUILD_FRACTION, IVF_MIN_POINTS_PER_CENTROID, IndexSpec, Shard
from tests.helpers import force_plan

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
    # ivfpq trains at max(4, 2**6) * 39 = 2496 vectors: the tests above that threshold use
    # PQ_SPEC directly; the parametrised tests below it exercise the exact flat fallback
    "ivfpq": IndexSpec(kind="ivfpq", ivf_nlist=4, nprobe=4, pq_m=8, pq_nbits=6, use_gpu=False),
}
PQ_SPEC = SPECS["ivfpq"]


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


def _clustered(rng: np.random.Generator, n: int, d: int = DIM, k: int = 20) -> np.ndarray:
    centres = _unit(rng, k, d)  # (k, d)
    x = centres[rng.integers(0, k, n)] + 0.15 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _trained_pq_shard(rng: np.random.Generator, n: int | None = None) -> tuple[Shard, np.ndarray]:
    shard = Shard(DIM, PQ_SPEC)
    n = n or shard.ivf_train_threshold + 100
    x = _unit(rng, n)
    shard.add(np.arange(n), x)
    assert shard.ivf_trained
    return shard, x


def test_ivfpq_trains_lazily_after_threshold():
    rng = np.random.default_rng(8)
    shard = Shard(DIM, PQ_SPEC)
    threshold = max(PQ_SPEC.ivf_nlist, 2**PQ_SPEC.pq_nbits) * IVF_MIN_POINTS_PER_CENTROID
    assert shard.ivf_train_threshold == threshold == 2496
    x = _unit(rng, threshold + 50)
    shard.add(np.arange(threshold - 1), x[: threshold - 1])
    assert not shard.ivf_trained  # exact flat fallback: exact vectors and exact search
    np.testing.assert_allclose(shard.get(3), x[3])
    _, got = shard.search(x[:5], 1)
    assert got[:, 0].tolist() == [0, 1, 2, 3, 4]
    shard.add(np.arange(threshold - 1, threshold + 50), x[threshold - 1 :])
    assert shard.ivf_trained and shard.count == shard.n_stored == threshold + 50
    # reconstruct is now the PQ-decoded approximation, not the vector that was added
    approx = np.stack([shard.get(i) for i in range(200)])  # (200, DIM)
    cos = np.sum(approx * x[:200], axis=1) / np.linalg.norm(approx, axis=1)
    assert cos.min() > 0.85 and not np.allclose(approx, x[:200])
    assert shard.remove([0, 1]) == 2 and shard.get(0) is None and shard.count == threshold + 48
    _, got = shard.search(x[:200], 5)
    assert not np.isin(got, [0, 1]).any()
    assert np.mean(got[2:, 0] == np.arange(2, 200)) >= 0.9  # a stored vector finds itself


def test_ivfpq_upsert_replaces_and_remove():
    rng = np.random.default_rng(9)
    shard, x = _trained_pq_shard(rng)
    n = shard.count
    new = -x[7:8]  # as far from the old vector as possible
    shard.add([7], new)
    assert shard.count == n and shard.n_stored == n
    got7 = shard.get(7)
    assert np.dot(got7, new[0]) > 0.85 and np.dot(got7, x[7]) < 0
    _, got = shard.search(new, 5)
    assert 7 in got[0].tolist()
    _, got = shard.search(x[7:8], 5)  # the old vector of id 7 is gone
    assert 7 not in got[0].tolist()
    assert shard.remove([3, 4, n + 999, 3]) == 2
    assert shard.count == n - 2 and shard.get(3) is None and 3 not in shard
    _, got = shard.search(x[3:5], 50)
    assert not np.isin(got, [3, 4]).any()
    assert shard.get(9) is not None


def test_ivfpq_recall_on_clustered_data():
    rng = np.random.default_rng(10)
    spec = IndexSpec(kind="ivfpq", ivf_nlist=8, nprobe=8, pq_m=8, pq_nbits=6, use_gpu=False)
    shard = Shard(DIM, spec)
    n = shard.ivf_train_threshold
    x = _clustered(rng, n)
    ids = np.arange(5000, 5000 + n, dtype=np.int64)
    shard.add(ids, x)
    assert shard.ivf_trained
    q = _clustered(rng, 50)
    _, want = _brute(x, ids, q, 10)
    scores, got = shard.search(q, 10)
    full = _recall(got, want)
    assert full >= 0.55  # all lists probed: only the PQ approximation costs recall
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    shard.set_search_knobs(nprobe=1)
    assert shard.spec.nprobe == 1
    assert _recall(shard.search(q, 10)[1], want) <= full


def test_ivfpq_bytes_round_trip_trained():
    rng = np.random.default_rng(11)
    shard, x = _trained_pq_shard(rng)
    shard.remove(np.arange(10))
    restored = Shard.from_bytes(shard.to_bytes())
    assert restored.ivf_trained and restored.spec == shard.spec
    assert restored.count == shard.count and restored.memory_bytes() == shard.memory_bytes()
    q = _unit(rng, 5)
    for a, b in zip(shard.search(q, 7), restored.search(q, 7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert restored.get(5) is None
    np.testing.assert_array_equal(restored.get(100), shard.get(100))  # same PQ decoding
    restored.add([5], x[5:6])
    assert restored.count == shard.count + 1 and 5 in restored.search(x[5:6], 3)[1][0].tolist()
    wider = Shard.from_bytes(
        shard.to_bytes(), IndexSpec.from_dict({**PQ_SPEC.to_dict(), "nprobe": 1})
    )
    assert wider.spec.nprobe == 1 and wider.count == shard.count


def test_ivfpq_rejects_bad_pq_params():
    with pytest.raises(ValueError, match="pq_m=5 must divide dim=16"):
        Shard(DIM, IndexSpec(kind="ivfpq", pq_m=5))
    with pytest.raises(ValueError, match="pq_m=48 must divide dim=16"):
        Shard(DIM, IndexSpec(kind="ivfpq"))  # the default is meant for 384-d
    Shard(DIM, IndexSpec(kind="flat", pq_m=5, use_gpu=False))  # pq_m only matters for ivfpq
    with pytest.raises(ValueError):
        IndexSpec(kind="ivfpq", pq_m=0)
    with pytest.raises(ValueError):
        IndexSpec(kind="ivfpq", pq_nbits=17)
    assert IndexSpec.from_dict({"kind": "ivf"}).pq_m == 48  # old spec dicts still load


def test_old_shard_blob_without_pq_fields_loads():
    rng = np.random.default_rng(12)
    shard = Shard(DIM, SPECS["ivf"])
    shard.add(np.arange(300), _unit(rng, 300))
    blob = shard.to_bytes()
    # rewrite the blob's meta as a pre-ivfpq version wrote it (no pq_* spec fields)
    with np.load(io.BytesIO(blob)) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes().decode())
    meta["spec"] = {k: v for k, v in meta["spec"].items() if not k.startswith("pq_")}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    restored = Shard.from_bytes(buf.getvalue())
    assert restored.spec == shard.spec and restored.count == 300


def test_memory_bytes():
    rng = np.random.default_rng(13)
    n = Shard(DIM, PQ_SPEC).ivf_train_threshold + 4
    x = _unit(rng, n)
    per_vector = {}
    for kind, spec in SPECS.items():
        shard = Shard(DIM, spec)
        empty = shard.memory_bytes()
        assert empty > 0
        shard.add(np.arange(n), x)
        per_vector[kind] = shard.memory_bytes() / n
        assert shard.memory_bytes() > empty
    assert per_vector["flat"] >= 4 * DIM  # float32 vectors + ids
    # ivfpq: 8 code bytes + 8-byte id + 16-byte direct-map entry per vector (+ quantisers)
    assert per_vector["ivfpq"] < 0.75 * per_vector["flat"]
    assert per_vector["hnsw"] > per_vector["flat"]  # vectors + graph links


def test_memory_bytes_384d_ivfpq_is_much_smaller_than_flat():
    rng = np.random.default_rng(14)
    spec = IndexSpec(kind="ivfpq", ivf_nlist=4, nprobe=4, pq_m=48, pq_nbits=6, use_gpu=False)
    pq = Shard(384, spec)
    n = pq.ivf_train_threshold  # 64 * 39 = 2496
    x = _unit(rng, n, 384)
    pq.add(np.arange(n), x)
    flat = Shard(384, SPECS["flat"])
    flat.add(np.arange(n), x)
    assert pq.ivf_trained
    assert flat.memory_bytes() / n >= 384 * 4
    assert pq.memory_bytes() < flat.memory_bytes() / 10  # 36 code bytes vs 1536


def test_set_search_knobs():
    rng = np.random.default_rng(15)
    x = _unit(rng, 300)
    shard = Shard(DIM, SPECS["hnsw"])
    shard.add(np.arange(300), x)
    shard.remove([0])  # a tombstone: the filter must survive the knob change
    shard.set_search_knobs(ef_search=200)
    assert shard.spec.ef_search == 200 and shard.spec.kind == "hnsw"
    _, got = shard.search(x[:20], 10)
    assert not (got == 0).any()
    _, want = _brute(x[1:], np.arange(1, 300), x[:20], 10)
    assert _recall(got, want) >= 0.95
    with pytest.raises(ValueError):
        shard.set_search_knobs(nprobe=0)
    shard.set_search_knobs()  # nothing to change
    assert shard.spec.ef_search == 200


RERANK_SPEC = IndexSpec.from_dict({**PQ_SPEC.to_dict(), "nprobe": 4, "rerank": 8})


def test_ivfpq_rerank_ranks_exactly_with_fp16_copies():
    rng = np.random.default_rng(12)
    plain, rerank = Shard(DIM, PQ_SPEC), Shard(DIM, RERANK_SPEC)
    n = rerank.ivf_train_threshold + 100
    x = _clustered(rng, n)
    ids = np.arange(7000, 7000 + n, dtype=np.int64)
    for s in (plain, rerank):
        s.add(ids, x)
    assert plain.ivf_trained and rerank.ivf_trained
    q = _clustered(rng, 50)
    want_s, want = _brute(x, ids, q, 10)
    pq_recall = _recall(plain.search(q, 10)[1], want)
    scores, got = rerank.search(q, 10)
    assert _recall(got, want) >= 0.95 > pq_recall  # the PQ codes only choose candidates
    assert np.all(np.diff(scores, axis=1) <= 0)
    # the scores are the fp16 vectors' inner products, not PQ estimates
    fp16 = x.astype(np.float16).astype(np.float32)
    exact = np.einsum("mkd,md->mk", fp16[got - 7000], q)
    np.testing.assert_allclose(scores, exact, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rerank.get(7003), fp16[3], atol=1e-6)  # get reads the fp16 copy
    # + the fp16 copies, - the direct map it no longer needs (16 B per id + a header)
    assert rerank.memory_bytes() >= plain.memory_bytes() - n * 16 - 64 + n * DIM * 2


def test_ivfpq_rerank_writes_filters_and_snapshots(monkeypatch):
    rng = np.random.default_rng(13)
    shard = Shard(DIM, RERANK_SPEC)
    n = shard.ivf_train_threshold + 50
    x = _unit(rng, n)
    shard.add(np.arange(n), x)
    shard.add([7], -x[7:8])  # upsert: both copies replaced
    np.testing.assert_allclose(shard.get(7), -x[7], atol=1e-3)
    assert shard.search(-x[7:8], 1)[1][0, 0] == 7 and 7 not in shard.search(x[7:8], 5)[1][0]
    assert shard.remove([3]) == 1 and 3 not in shard.search(x[3:4], 20)[1][0]
    subset = np.arange(10, 2010, dtype=np.int64)  # selector plan, re-ranked within the subset
    for plan in ("exact", "selector"):
        with monkeypatch.context() as mp:
            force_plan(mp, plan)
            assert shard.plan(len(subset)) == plan
            _, got = shard.search(x[100:101], 5, subset)
        assert np.isin(got, subset).all() and got[0, 0] == 100
    restored = Shard.from_bytes(shard.to_bytes())
    q = _unit(rng, 5)
    for a, b in zip(shard.search(q, 7), restored.search(q, 7), strict=True):
        np.testing.assert_array_equal(a, b)
    plain_bytes = Shard.from_bytes(shard.to_bytes(), PQ_SPEC).to_bytes()  # rerank dropped
    with pytest.raises(ValueError, match="saved without"):
        Shard.from_bytes(plain_bytes, RERANK_SPEC)
    with pytest.raises(ValueError, match="rerank applies to kind 'ivfpq' only"):
        IndexSpec(kind="ivf", rerank=4)
    with pytest.raises(ValueError, match="rerank must be >= 0"):
        IndexSpec(kind="ivfpq", rerank=-1)


def test_filtered_ivf_widens_nprobe_and_plans_by_cost():
    shard = Shard(DIM, IndexSpec(kind="ivf", ivf_nlist=8, nprobe=2, use_gpu=False))
    rng = np.random.default_rng(5)
    x = _unit(rng, 2000)
    shard.add(np.arange(len(x)), x)
    assert shard.ivf_trained
    assert shard.filter_nprobe(1.0) == 3 and shard.filter_nprobe(0.25) == 5
    assert shard.filter_nprobe(0.01) == 8  # capped at nlist
    # a few matching ids: gathering them is cheaper than any IVF search; most: the selector
    assert shard.plan(3) == "exact" and shard.plan(len(x) // 2) == "selector"
    subset = np.arange(0, len(x), 2, dtype=np.int64)
    s, got = shard.search(x[10:11], 5, subset)
    assert np.isin(got, subset).all() and got[0, 0] == 10 and np.isclose(s[0, 0], 1.0, atol=1e-5)

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import faiss  # noqa: F401 -- faiss before anything that may pull in torch
import numpy as np
import pytest

import irene.index.sharded as sharded_mod
from irene.index.records import Records, empty_record
from irene.index.shard import IndexSpec
from irene.index.sharded import IdCollisionError, ShardedIndex, int_id
from tests.helpers import named_search, old_index_blob

DIM = 12


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)  # (n, DIM)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _filled(n: int = 300, n_shards: int = 4, kind: str = "flat", seed: int = 0):
    rng = np.random.default_rng(seed)
    x = _unit(rng, n)
    ids = [f"item-{i}" for i in range(n)]
    index = ShardedIndex(DIM, n_shards, IndexSpec(kind=kind, hnsw_m=16, use_gpu=False))
    index.add(ids, x)
    return index, ids, x


def test_int_id_is_stable_across_processes():
    # Pinned values: blake2b-64 little-endian masked to 63 bits; must never change.
    assert int_id("hello") == 9022087748821825191
    assert int_id("item-0") == 4166406713357423139
    assert 0 <= int_id("é") < 2**63
    code = "from irene.index.sharded import int_id; print(int_id('hello'), int_id('item-0'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["9022087748821825191", "4166406713357423139"]


def test_search_matches_brute_force_across_shards():
    index, ids, x = _filled()
    assert index.count == 300
    per_shard = [s.count for s in index._shards]
    assert sum(per_shard) == 300 and min(per_shard) > 30  # hash partitioning spreads ids
    q = _unit(np.random.default_rng(9), 15)
    res = named_search(index, q, 8)
    s = q @ x.T  # (15, 300)
    for qi, row in enumerate(res):
        order = np.argsort(-s[qi])[:8]
        assert [r[0] for r in row] == [ids[j] for j in order]
        np.testing.assert_allclose([r[1] for r in row], s[qi, order], rtol=1e-5, atol=1e-5)
    # the top-k of a query typically spans several shards: the merge really merges
    shards_hit = {int_id(i) % 4 for row in res for i, _ in row}
    assert len(shards_hit) > 1


@pytest.mark.parametrize("min_work", [0, 10**12])  # 0: shards on threads; huge: one by one
def test_parallel_and_serial_shard_search_agree(monkeypatch, min_work):
    index, ids, x = _filled()
    monkeypatch.setattr(sharded_mod, "PARALLEL_MIN_WORK", min_work)
    q = _unit(np.random.default_rng(3), 7)
    res = named_search(index, q, 5)
    assert (index._pool is not None) == (min_work == 0)  # the thread pool is made on first use
    s = q @ x.T  # (7, 300)
    for qi, row in enumerate(res):
        assert [r[0] for r in row] == [ids[j] for j in np.argsort(-s[qi])[:5]]


def test_upsert_delete_get():
    index, ids, x = _filled(n=50, n_shards=3)
    new = _unit(np.random.default_rng(1), 2)
    index.add(["item-3", "brand-new"], new)
    assert index.count == 51
    np.testing.assert_allclose(index.get("item-3"), new[0])
    np.testing.assert_allclose(index.get("brand-new"), new[1])
    assert named_search(index, new[:1], 1)[0][0][0] == "item-3"
    assert index.delete(["item-3", "nope", "item-4", "item-3"]) == [True, False, True, False]
    assert index.count == 49 and index.get("item-3") is None and "item-4" not in index
    assert all(
        r[0] not in ("item-3", "item-4") for row in named_search(index, x[3:5], 49) for r in row
    )
    assert index.get("missing") is None
    assert len(named_search(index, x[:1], 500)[0]) == 49  # fewer than k: no padding in results


def test_duplicates_in_a_batch_last_wins():
    index = ShardedIndex(DIM, 2)
    x = _unit(np.random.default_rng(2), 3)
    ids, vecs = index.prepare_upsert(["a", "b", "a"], x)
    assert ids == ["b", "a"] and np.allclose(vecs, x[[1, 2]])
    index.add(["a", "b", "a"], x)
    assert index.count == 2 and np.allclose(index.get("a"), x[2])


def test_collision_is_detected(monkeypatch):
    index = ShardedIndex(DIM, 2)
    x = _unit(np.random.default_rng(3), 2)
    monkeypatch.setattr(sharded_mod, "int_id", lambda s: 42)
    index.add(["a"], x[:1])
    with pytest.raises(IdCollisionError):
        index.add(["b"], x[1:])
    with pytest.raises(IdCollisionError):
        ShardedIndex(DIM, 2).add(["x", "y"], x)
    index.add(["a"], x[1:])  # the same string is an upsert, not a collision
    assert index.count == 1 and index.get("b") is None


def test_rejects_bad_ids():
    index = ShardedIndex(DIM, 2)
    with pytest.raises(TypeError):
        index.add("abc", np.zeros((3, DIM)))
    with pytest.raises(TypeError):
        index.add([1], np.zeros((1, DIM)))
    with pytest.raises(ValueError):
        named_search(index, np.zeros((1, DIM + 1)), 3)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_state_round_trip(kind):
    index, ids, x = _filled(n=200, n_shards=3, kind=kind)
    index.delete(ids[:5])
    q = _unit(np.random.default_rng(4), 6)
    blob = index.to_bytes()
    restored = ShardedIndex.from_bytes(blob)
    assert restored.count == 195 and restored.n_shards == 3 and restored.spec.kind == kind
    assert named_search(restored, q, 5) == named_search(index, q, 5)
    np.testing.assert_allclose(restored.get(ids[10]), x[10])
    other = ShardedIndex(DIM, 3, IndexSpec(kind=kind, hnsw_m=16, use_gpu=False))
    other.load_state_dict(index.state_dict())
    assert named_search(other, q, 5) == named_search(index, q, 5) and sorted(other.ids()) == sorted(
        ids[5:]
    )
    with pytest.raises(ValueError):
        ShardedIndex(DIM, 2).load_state_dict(index.state_dict())


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_concurrent_search_while_adding(kind):
    """Every batch b holds B vectors all equal to (b+1) * e0; a query e0 with k=B must always
    see exactly one whole batch (the newest), never a mix: batches are applied atomically."""
    B, n_batches = 20, 60
    index = ShardedIndex(DIM, 4, IndexSpec(kind=kind, hnsw_m=16, use_gpu=False))
    e0 = np.zeros((1, DIM), np.float32)
    e0[0, 0] = 1.0
    errors: list[BaseException] = []
    observed: list[float] = []
    done = threading.Event()

    def writer():
        try:
            for b in range(n_batches):
                index.add([f"b{b}-{i}" for i in range(B)], np.repeat(e0 * (b + 1), B, axis=0))
                if b % 10 == 9:
                    index.delete([f"b{b - 5}-0"])
        except BaseException as e:  # noqa: BLE001 -- surfaced by the assertion below
            errors.append(e)
        finally:
            done.set()

    def reader():
        try:
            deadline = time.monotonic() + 30
            while not done.is_set() and time.monotonic() < deadline:
                for row in named_search(index, e0, B):
                    if not row:
                        continue
                    scores = {round(s, 3) for _, s in row}
                    batches = {i.split("-")[0] for i, _ in row}
                    assert len(scores) == 1 and len(batches) == 1, row
                    # the search and the name lookup are two steps: the writer may delete
                    # the batch's item 0 in between (then its hit has no name and is dropped)
                    names = {i for i, _ in row}
                    whole = len(row) == B or (
                        len(row) == B - 1 and f"{batches.pop()}-0" not in names
                    )
                    assert whole, row
                    observed.append(scores.pop())
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[0]
    assert observed, "readers never ran"
    assert index.count == B * n_batches - n_batches // 10
    assert named_search(index, e0, 1)[0][0][1] == pytest.approx(n_batches)
    index.close()


# --------------------------------------------------------------------------- records
def _records(ids: list[str], tag: str = "", source: str = "generated") -> Records:
    return Records.of(
        [f"text of {i}{tag} é" for i in ids],
        [{"n": k, "tag": tag, "kw": ["a", i]} for k, i in enumerate(ids)],
        source,
        f"v{tag}",
    )


def _want(ids: list[str], tag: str = "", source: str = "generated") -> list[dict]:
    recs = _records(ids, tag, source)
    return [recs.row(k) for k in range(len(ids))]


def test_records_are_stored_replaced_and_deleted_with_their_ids():
    index = ShardedIndex(DIM, 3)
    x = _unit(np.random.default_rng(5), 6)
    ids = [f"r{i}" for i in range(6)]
    index.add(ids[:4], x[:4], _records(ids[:4], "1", "trained"))
    index.add(ids[4:], x[4:])  # no records: they read as the empty record
    assert index.get_records(ids[:4]) == _want(ids[:4], "1", "trained")
    assert index.get_records([ids[4], "absent"]) == [empty_record(), None]
    # an upsert replaces the record, with records or without
    index.add([ids[1], ids[4]], x[:2], _records([ids[1], ids[4]], "2"))
    index.add([ids[2]], x[2:3])
    got = index.get_records(ids)
    assert got[1] == _want([ids[1]], "2")[0] and got[4]["text"] == f"text of {ids[4]}2 é"
    assert got[2] == empty_record() and got[0] == _want(ids[:1], "1", "trained")[0]
    # duplicates in a batch: the last occurrence wins, for its record too
    index.add(["d", "d"], x[:2], Records.of(["first", "last"], [{"k": 1}, {"k": 2}]))
    assert index.get_records(["d"])[0]["text"] == "last" and np.allclose(index.get("d"), x[1])
    index.delete([ids[0], ids[1]])
    assert index.get_records(ids[:2]) == [None, None]
    index.add([ids[0]], x[:1])  # back, without a record: the old one is not resurrected
    assert index.get_records([ids[0]]) == [empty_record()]
    assert named_search(index, x[3:4], 1)[0][0][0] == ids[3]  # search is unchanged


def test_bad_records_are_refused_before_anything_is_stored():
    index = ShardedIndex(DIM, 2)
    x = _unit(np.random.default_rng(6), 2)
    with pytest.raises(ValueError):  # length: refused by the index
        index.add(["a", "b"], x, Records.of(["only one"]))
    bad = [  # refused where the batch is built (validated once, never again downstream)
        lambda: Records.of(["a", "b"], [{"x": float("nan")}, {}]),  # NaN
        lambda: Records.of(["a", "b"], [{"x": object()}, {}]),  # not JSON
        lambda: Records(["a", "b"], [{}, "not a dict"], ["generated"] * 2, ["", ""]),
        lambda: Records(["a", 3], [{}, {}], ["generated"] * 2, ["", ""]),
        lambda: Records.of(["a", "lone \ud800 surrogate"]),  # would fail after logging
        lambda: Records.of(["a", "b"], [{"k": "\udfff"}, {}]),
        lambda: Records.of(["a"], source="invented"),
    ]
    for make in bad:
        with pytest.raises((ValueError, TypeError)):
            make()
    assert index.count == 0 and index.record_stats()["records"] == 0


def test_record_store_agrees_with_a_dict_under_random_writes(monkeypatch):
    """Random upserts (with and without records), deletes, merges of the position map,
    compactions and snapshot round trips: the columns always answer like a plain dict."""
    import irene.index.idmap as idmap_mod

    monkeypatch.setattr(idmap_mod, "_MERGE_MIN", 8)  # merge often
    rng = np.random.default_rng(7)
    index = ShardedIndex(DIM, 2)
    universe = [f"u{i}" for i in range(300)]
    want: dict[str, dict | None] = {}
    for step in range(150):
        pick = sorted(set(rng.choice(len(universe), int(rng.integers(1, 25))).tolist()))
        ids = [universe[i] for i in pick]
        op = rng.random()
        if op < 0.15:
            index.delete(ids)
            want.update(dict.fromkeys(ids))
        elif op < 0.3:
            index.add(ids, _unit(rng, len(ids)))
            want.update({i: empty_record() for i in ids})
        else:
            tag = str(step)
            index.add(ids, _unit(rng, len(ids)), _records(ids, tag))
            want.update(zip(ids, _want(ids, tag), strict=True))
        if step % 37 == 36:
            index = ShardedIndex.from_bytes(index.to_bytes())
        stats = index.record_stats()
        assert stats["garbage"] <= max(stats["records"], 1)  # compacted beyond half garbage
        assert index.get_records(universe) == [want.get(i) for i in universe]
    st = index.state_dict()["records"]
    assert len(st["ids"]) == index.record_stats()["records"]  # snapshots hold live rows only


def test_string_offsets_widen_to_int64_past_4_gib():
    """Record string columns keep uint32 offsets until a column's bytes pass 4 GiB, then
    int64 (the bytes themselves are not allocated here: the offsets alone are checked)."""
    from irene.index.records import _offsets, _put_strings

    off = np.array([0, 2**32 - 5], dtype=np.uint32)  # one row of 4 GiB - 5 bytes
    buf = bytearray()
    off = _put_strings(off, buf, 1, [b"abc"])  # ends at 2**32 - 2: still fits
    assert off.dtype == np.uint32 and int(off[2]) == 2**32 - 2
    off = _put_strings(off, buf, 2, [b"defgh"])  # ends at 2**32 + 3
    assert off.dtype == np.int64 and off[:4].tolist() == [0, 2**32 - 5, 2**32 - 2, 2**32 + 3]
    assert bytes(buf) == b"abcdefgh"
    assert _offsets(off[:3]).dtype == np.uint32 and _offsets(off[:4]).dtype == np.int64


def test_records_round_trip_and_old_state_loads_without_records():
    index, ids, x = _filled(n=60, n_shards=3)
    index.add(ids[:20], x[:20], _records(ids[:20], "s", "trained"))
    index.add(ids[10:15], x[10:15], _records(ids[10:15], "t"))  # garbage rows
    index.delete(ids[:5])
    want = index.get_records(ids)
    again = ShardedIndex.from_bytes(index.to_bytes())
    assert again.get_records(ids) == want and again.state_dict()["version"] == 3
    other = ShardedIndex(DIM, 3)
    other.load_state_dict(index.state_dict())
    assert other.get_records(ids) == want

    # a version-1 blob (written before records existed): loads, every record empty
    old = ShardedIndex.from_bytes(old_index_blob(index, 1))
    assert old.count == 55 and old.get_records(ids[4:6]) == [None, empty_record()]
    old.add(ids[5:6], x[5:6], _records(ids[5:6]))
    assert ShardedIndex.from_bytes(old.to_bytes()).get_records(ids[5:6]) == _want(ids[5:6])

    # a version-2 blob: the string ids beside the records of the ids that have one
    with_rec = ShardedIndex(DIM, 3)
    with_rec.add(ids[:20], x[:20], _records(ids[:20], "s", "trained"))
    with_rec.add(ids[10:15], x[10:15], _records(ids[10:15], "t"))
    with_rec.delete(ids[:5])
    v2 = ShardedIndex.from_bytes(old_index_blob(index, 2, with_rec))
    assert v2.get_records(ids) == want and v2.count == 55
    assert sorted(
        v2.names(v2.match({"must": [{"key": "source", "match": {"value": "trained"}}]}))
    ) == sorted(ids[5:10] + ids[15:20])


@pytest.mark.parametrize("kind", ["flat", "ivfpq-rerank"])
def test_id_maps_and_records_take_at_most_64_bytes_per_item(kind):
    """Measured with tracemalloc (numpy's buffers included; FAISS's own C++ memory is not
    traced): what an index holds beyond its fp16 copies and its strings (string ids, texts,
    metadata JSON) is <= 64 B per item, both grown by appends (capacity slack and recent-id
    dicts included) and restored from a snapshot, and ``memory()`` reports it."""
    import gc
    import tracemalloc

    spec = {"kind": "flat"}
    if kind == "ivfpq-rerank":
        spec = {"kind": "ivfpq", "ivf_nlist": 2, "pq_m": 4, "pq_nbits": 1, "rerank": 4}
    rng = np.random.default_rng(0)

    def build(n):
        index = ShardedIndex(8, 4, IndexSpec(**spec, use_gpu=False))
        for lo in range(0, n, 10_000):
            ids = [f"item-{i:09d}" for i in range(lo, lo + 10_000)]
            index.add(ids, rng.standard_normal((10_000, 8)), _records(ids))
        return index

    def traced(make):
        gc.collect()
        tracemalloc.start()
        try:
            out = make()
            gc.collect()
            return out, tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    build(10_000)  # lazy imports and first-use caches are not the index's
    n = 130_000  # the capacity of the appended arrays is near its 1.25x step here
    index, grown = traced(lambda: build(n))
    blob = index.to_bytes()
    mem = index.memory()
    assert index.count == n and mem["strings"] > 30 * n
    assert (grown - mem["fp16"] - mem["strings"]) / n <= 64
    assert mem["id_maps"] / n <= 64
    del index
    again, restored = traced(lambda: ShardedIndex.from_bytes(blob))
    mem = again.memory()
    assert again.count == n and mem["id_maps"] / n <= 64
    assert (restored - mem["fp16"] - mem["strings"]) / n <= 64
    if kind == "ivfpq-rerank":
        assert mem["fp16"] == n * 8 * 2


def test_a_snapshot_compacts_the_records_without_blocking_on_it():
    rng = np.random.default_rng(0)
    ids, x, index = [f"item-{i}" for i in range(40)], _unit(rng, 40), ShardedIndex(DIM, 2)
    index.add(ids, x, _records(ids, "a"))
    index.add(ids[:15], x[:15], _records(ids[:15], "b"))  # 15 garbage rows (< half: kept)
    assert index.record_stats()["garbage"] == 15
    want = index.get_records(ids)
    blob = index.to_bytes()
    assert index.record_stats() == {**index.record_stats(), "records": 40, "garbage": 0}
    assert index.get_records(ids) == want == ShardedIndex.from_bytes(blob).get_records(ids)
    index.add(ids[:1], x[:1], _records(ids[:1], "c"))  # still writable after the swap
    assert index.get_records(ids[:1]) == _want(ids[:1], "c")


def test_version_counts_follow_upserts_and_deletes():
    index = ShardedIndex(DIM, 2)
    x = _unit(np.random.default_rng(9), 5)
    ids = [f"v{i}" for i in range(5)]
    index.add(ids[:3], x[:3], Records.of(["t"] * 3, version="v1"))
    index.add(ids[3:], x[3:])  # no records
    assert index.version_counts() == {"v1": 3, "": 2}
    index.add(ids[:1], x[:1], Records.of(["t"], version="v2"))  # upsert moves one
    index.delete([ids[1]])
    assert index.version_counts() == {"v1": 1, "v2": 1, "": 2}


def test_rerank_snapshot_in_slot_order_survives_upserts_and_deletes():
    """fp16 copies are saved in slot order with each id's slot (freed slots included, then
    reused): ``to_buffer`` (no copies, the snapshot path) and ``to_bytes`` restore the same
    index, which searches and reads vectors like the original."""
    spec = IndexSpec(kind="ivfpq", ivf_nlist=2, pq_m=4, pq_nbits=1, rerank=50, use_gpu=False)
    rng = np.random.default_rng(3)
    index = ShardedIndex(DIM, 2, spec)
    ids = [f"r{i}" for i in range(400)]
    index.add(ids, _unit(rng, 400))
    index.delete(ids[:50])
    index.add(ids[100:160], _unit(rng, 60))  # upserts reuse freed slots
    q = _unit(rng, 5)
    want = index.search(q, 10)
    for blob in (bytes(index.to_buffer()), index.to_bytes()):
        again = ShardedIndex.from_bytes(blob)
        got = again.search(q, 10)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        for s in (ids[0], ids[120], ids[300]):
            v, w = again.get(s), index.get(s)
            assert (v is None and w is None) or np.array_equal(v, w)
        again.add(ids[:10], _unit(rng, 10))  # still writable; the free list came back
        assert again.count == 360

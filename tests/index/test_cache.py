"""The filtered-search caches: bounded LRU, reused while nothing is written, dropped on writes."""

from __future__ import annotations

import faiss  # noqa: F401 -- faiss before anything that may pull in torch
import numpy as np
import pytest

import irene.index.shard as shard_mod
from irene.index.cache import VersionedLRU
from irene.index.records import Records
from irene.index.shard import IndexSpec, Shard
from irene.index.sharded import ShardedIndex
from tests.helpers import force_plan

DIM = 8


def test_lru_drops_least_recently_used_over_its_byte_budget():
    lru = VersionedLRU(100)
    lru.put("a", 0, "A", 40)
    lru.put("b", 0, "B", 40)
    assert lru.get("a", 0) == "A"  # a is now the most recently used
    lru.put("c", 0, "C", 40)  # 120 > 100: b goes
    assert lru.get("b", 0) is None and lru.get("a", 0) == "A" and lru.get("c", 0) == "C"
    assert lru.nbytes == 80 and len(lru) == 2
    lru.put("big", 0, "X", 101)  # larger than the whole budget: not kept, nothing evicted
    assert lru.get("big", 0) is None and len(lru) == 2
    lru.put("a", 1, "A1", 10)  # replacing an entry frees its old size
    assert lru.nbytes == 50


def test_lru_entry_is_valid_only_at_its_version():
    lru = VersionedLRU(1 << 20)
    lru.put("f", 3, "v3", 1)
    assert lru.get("f", 4) is None and lru.get("f", 3) == "v3"
    assert lru.get("f", 3, check=lambda v: v == "other") is None  # a failed check is a miss
    assert (lru.hits, lru.misses) == (1, 2)
    off = VersionedLRU(0)
    off.put("f", 0, "v", 1)
    assert off.get("f", 0) is None


def _index(n: int, n_shards: int = 2, cache_mb: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    spec = IndexSpec(kind="flat", use_gpu=False, filter_cache_mb=cache_mb)
    index = ShardedIndex(DIM, n_shards, spec)
    ids = [f"i{j}" for j in range(n)]
    index.add(ids, x, Records.of(ids, [{"grp": j % 10} for j in range(n)]))
    return index, ids, x


def _brute(index: ShardedIndex, q: np.ndarray, f: dict, k: int) -> list[str]:
    ids = [s for s in index.names(index.match(f)) if s is not None]
    scores = np.array([float(index.get(s) @ q[0]) for s in ids])
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def _hits(index: ShardedIndex) -> tuple[int, int]:
    st = index.filter_cache_stats()
    return st["match_hits"], st["gather_hits"]


@pytest.mark.parametrize("plan", ["exact", "selector"])
@pytest.mark.parametrize("write", ["upsert vector", "leave filter", "delete", "new match"])
def test_a_write_drops_what_the_caches_hold(write, plan, monkeypatch):
    index, ids, x = _index(400)
    f = {"must": [{"key": "grp", "match": {"value": 3}}]}  # 40 of 400
    q = np.random.default_rng(1).standard_normal((1, DIM)).astype(np.float32)
    force_plan(monkeypatch, plan)  # the shards cache gathered vectors / a selector
    assert all(s.plan(20) == plan for s in index._shards)
    assert index.search_named(q, 5) and _hits(index) == (0, 0)  # unfiltered: no cache
    s1, i1 = index.search(q, 5, f)
    s2, i2 = index.search(q, 5, f)  # the same filter again: both caches hit
    assert np.array_equal(i1, i2) and np.array_equal(s1, s2)
    match_hits, gather_hits = _hits(index)
    assert match_hits == 1 and gather_hits == index.n_shards

    best = index.names(i1[0])[0]
    if write == "upsert vector":  # a matching item now points away from the query
        index.add([best], -q / np.linalg.norm(q), Records.of([best], [{"grp": 3}]))
    elif write == "leave filter":  # same vector, metadata no longer matches
        index.add([best], index.get(best)[None], Records.of([best], [{"grp": 4}]))
    elif write == "delete":
        index.delete([best])
    else:  # a new item that matches and sits exactly on the query
        best = "newcomer"
        index.add([best], q / np.linalg.norm(q), Records.of([best], [{"grp": 3}]))
    s3, i3 = index.search(q, 5, f)
    assert _hits(index)[0] == match_hits  # the match cache missed after the write
    got = [s for s in index.names(i3[0]) if s is not None]
    assert got == _brute(index, q, f, 5)
    assert (best == got[0]) == (write == "new match")


def test_cached_gather_serves_until_the_shard_changes():
    rng = np.random.default_rng(0)
    shard = Shard(DIM, IndexSpec(kind="ivf", ivf_nlist=2, nprobe=1, use_gpu=False))
    ids = np.arange(200, dtype=np.int64)
    x = rng.standard_normal((200, DIM)).astype(np.float32)
    shard.add(ids, x)
    assert shard.ivf_trained
    sub = ids[::10]
    q = x[:1]
    a = shard.search(q, 3, sub, key="f")
    b = shard.search(q, 3, sub, key="f")
    assert shard.gather_cache.hits == 1 and all(
        np.array_equal(u, v) for u, v in zip(a, b, strict=True)
    )
    shard.search(q, 3, sub[:-1], key="f")  # other ids under the same key: not served
    assert shard.gather_cache.hits == 1
    shard.add(sub[:1], -q)  # overwrite the best match
    s, i = shard.search(q, 3, sub, key="f")
    assert shard.gather_cache.hits == 1 and i[0, 0] != sub[0]
    want = np.argsort(-(np.array([shard.get(j) for j in sub]) @ q[0]))[:3]
    assert np.array_equal(i[0], sub[want])


def test_cache_off():
    index, _, _ = _index(400, cache_mb=0)
    f = {"must": [{"key": "grp", "match": {"value": 3}}]}
    q = np.ones((1, DIM), np.float32)
    index.search(q, 5, f)
    index.search(q, 5, f)
    st = index.filter_cache_stats()
    assert _hits(index) == (0, 0) and st["match_entries"] == st["gather_entries"] == 0
    with pytest.raises(ValueError, match="filter_cache_mb"):
        IndexSpec(filter_cache_mb=-1)
    assert shard_mod.IndexSpec().filter_cache_mb > 0


def test_clear_filter_caches():
    index, _, _ = _index(400)
    f = {"must": [{"key": "grp", "match": {"value": 3}}]}
    q = np.ones((1, DIM), np.float32)
    first = index.search(q, 5, f)
    st = index.filter_cache_stats()
    assert st["match_entries"] == 1 and st["gather_entries"] == index.n_shards
    assert st["match_bytes"] > 0 and st["gather_bytes"] >= 40 * DIM * 4
    index.clear_filter_caches()
    st = index.filter_cache_stats()
    assert st["match_entries"] == st["gather_entries"] == st["gather_bytes"] == 0
    again = index.search(q, 5, f)  # recomputed: same answer, no hit
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True)) and _hits(
        index
    ) == (0, 0)

"""The read path: copies answer while fresh, the fallback (shard actors) while stale; both
give the same arrays, and lookups the same string ids and records."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import faiss  # noqa: F401 -- faiss before anything that may pull in torch
import numpy as np

from irene.index.actor import IndexActor
from irene.index.feed import IndexCopy
from irene.index.records import Records
from irene.index.router import RoutedIndex, owner_uri
from irene.index.view import CopiesView
from tests.helpers import AsyncOwners

DIM = 8


def _sync(owner: IndexActor, copy: IndexCopy) -> None:
    copy.apply(owner.poll(*copy.poll_args(), 0.0))


def test_copies_answer_while_fresh_and_the_fallback_while_stale(tmp_path):
    n = 3
    owners = [
        IndexActor.open(owner_uri(str(tmp_path / "ix"), i, n), DIM, 2, snapshot_every=0, lease_s=2)
        for i in range(n)
    ]
    routed = RoutedIndex(owners)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, DIM)).astype(np.float32)  # (60, DIM)
    ids = [f"item/{i}" for i in range(60)]
    recs = Records.of([f"text {i}" for i in ids], [{"i": i} for i in range(60)], "trained", "v1")
    seq, created = routed.upsert(ids, x, recs)
    assert created.all() and seq >= 1
    _, again = routed.upsert(ids[:2] + ["new"], x[:3], recs.take([0, 1, 2]))
    assert again.tolist() == [False, False, True]  # updated, updated, created

    copies = [IndexCopy() for _ in owners]
    for o, c in zip(owners, copies, strict=True):
        _sync(o, c)
    fallback = AsyncOwners(routed)
    pool = ThreadPoolExecutor(1)
    view = CopiesView(copies, pool, fallback)
    q = rng.standard_normal((5, DIM)).astype(np.float32)  # (5, DIM)

    async def run():
        return await view.search(q, 7), await view.lookup(np.array([-5, 3], np.int64))

    (s1, i1), _ = asyncio.run(run())
    assert view.answered == {"copies": 1, "fallback": 0} and fallback.calls == 0
    want_s, want_i = routed.search(q, 7)
    np.testing.assert_array_equal(i1, want_i)
    np.testing.assert_allclose(s1, want_s, rtol=1e-6)
    names, records = asyncio.run(view.lookup(i1[0]))
    assert names == routed.lookup(i1[0])[0] and all(r["version"] == "v1" for r in records)

    copies[1].lost_contact()  # one copy may be stale: the whole query goes to the fallback
    (s2, i2), _ = asyncio.run(run())
    assert view.answered == {"copies": 1, "fallback": 1} and fallback.calls == 2
    np.testing.assert_array_equal(i2, want_i)
    pool.shutdown()
    routed.close()

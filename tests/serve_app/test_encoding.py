"""serve_app.encoding.BatchedEncoder: the first (slow) inference happens while the replica
starts, in its compute thread, not in the first request."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

import irene.bundle
from serve_app import encoding
from tests.helpers import AsyncOwners


class _StubEncoder:
    dim = 4

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append((threading.current_thread().name, list(texts)))
        return np.ones((len(texts), self.dim), np.float32) / 2


def test_batched_encoder_warms_up_in_its_compute_thread(monkeypatch):
    stub = _StubEncoder()
    monkeypatch.setattr(irene.bundle, "load_encoder", lambda bundle, device: stub)
    enc = encoding.BatchedEncoder("any-bundle", max_batch=8, threads=1)
    try:
        assert len(stub.calls) == 1
        thread, texts = stub.calls[0]
        assert thread.startswith("irene-compute") and texts == [encoding.WARM_UP_TEXT]

        out = asyncio.run(enc.encode(["a", "b"]))  # requests reach the same encoder after it
        assert out.shape == (2, 4) and stub.calls[1][1] == ["a", "b"]
    finally:
        enc.pool.shutdown()


def test_compute_thread_runs_here_only_while_idle_and_never_twice_at_once():
    pool = encoding.ComputeThread(1)
    try:
        assert pool.submit(threading.current_thread).result().name.startswith("irene-compute")
        ran, thread = pool.run_here(threading.current_thread)
        assert ran and thread is threading.current_thread()  # idle: in the caller's thread

        busy, release = threading.Event(), threading.Event()
        held = pool.submit(lambda: (busy.set(), release.wait(5)))
        assert busy.wait(5)
        calls: list[int] = []
        assert pool.run_here(calls.append, 1) == (False, None)  # compute thread busy
        assert calls == []
        release.set()
        held.result(5)

        order: list[str] = []

        def here() -> None:  # a task submitted meanwhile waits until this returns
            fut = pool.submit(order.append, "submitted")
            time.sleep(0.1)
            order.append("here")
            return fut

        ran, fut = pool.run_here(here)
        fut.result(5)
        assert ran and order == ["here", "submitted"]
    finally:
        pool.shutdown()


class _TextVectors(_StubEncoder):
    """Texts "v<i>" encode to the unit vector e_i (dim 4; others to e_0), recording the thread."""

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append((threading.current_thread().name, list(texts)))
        out = np.zeros((len(texts), self.dim), np.float32)
        out[np.arange(len(texts)), [int(t[1:]) if t[1:].isdigit() else 0 for t in texts]] = 1.0
        return out


def test_a_lone_query_is_answered_in_place_like_a_batched_one(monkeypatch, tmp_path):
    from irene.index.actor import IndexActor
    from irene.index.feed import IndexCopy
    from irene.index.records import Records
    from irene.index.router import RoutedIndex, owner_uri
    from irene.index.view import CopiesView

    stub = _TextVectors()
    monkeypatch.setattr(irene.bundle, "load_encoder", lambda bundle, device: stub)
    enc = encoding.BatchedEncoder("any-bundle", max_batch=8, threads=1)
    owner = IndexActor.open(owner_uri(str(tmp_path / "ix"), 0, 1), 4, 1, snapshot_every=0)
    routed = RoutedIndex([owner])
    x = np.eye(4, dtype=np.float32)  # item i = e_i
    recs = Records.of([f"t{i}" for i in range(4)], [{} for _ in range(4)], "trained", "v1")
    routed.upsert([f"item{i}" for i in range(4)], x, recs)
    copy = IndexCopy()
    copy.apply(owner.poll(*copy.poll_args(), 0.0))
    fallback = AsyncOwners(routed)
    alone = [True]
    qb = encoding.QueryBatcher(
        enc.encode, CopiesView([copy], enc.pool, fallback), 8, local=enc, alone=lambda: alone[0]
    )
    try:
        here = asyncio.run(qb.search(["v2", "v0"], 2))
        assert stub.calls[-1] == (threading.current_thread().name, ["v2", "v0"])  # in place
        alone[0] = False
        batched = asyncio.run(qb.search(["v2", "v0"], 2))
        assert stub.calls[-1][0].startswith("irene-compute")
        assert here == batched and [h[0][0] for h in here] == ["item2", "item0"]
        assert here[0][0][1] == 1.0 and here[0][0][2]["text"] == "t2"
        assert fallback.calls == 0

        alone[0] = True
        fresh = iter([True, True, False])  # stale between the copy's search and its lookup
        monkeypatch.setattr(copy, "fresh", lambda: next(fresh, False))
        assert asyncio.run(qb.search(["v2", "v0"], 2)) == here  # the fallback answered
        assert fallback.calls == 2
        monkeypatch.undo()

        copy.lost_contact()  # a copy that may be stale: not in place, the fallback answers
        assert asyncio.run(qb.search(["v2", "v0"], 2)) == here
        assert fallback.calls == 4 and stub.calls[-1][0].startswith("irene-compute")
    finally:
        enc.pool.shutdown()
        routed.close()

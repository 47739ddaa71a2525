"""Read replicas: ChangeFeed (actor side) + IndexCopy (follower side), without Ray."""

from __future__ import annotations

import threading
import time

import faiss  # noqa: F401 -- faiss before anything that may pull in torch
import numpy as np
import pytest

from irene.index.feed import ChangeFeed, IndexCopy
from irene.index.log import DurableIndex
from tests.helpers import named_search

DIM = 8
SPEC = {"kind": "flat", "use_gpu": False}


def _batch(b: int, n: int = 4) -> tuple[list[str], np.ndarray]:
    x = np.random.default_rng(b).standard_normal((n, DIM)).astype(np.float32)  # (n, DIM)
    return [f"b{b}-{i}" for i in range(n)], x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def durable(tmp_path):
    idx = DurableIndex.open(str(tmp_path / "idx"), DIM, SPEC, n_shards=2, snapshot_every=0)
    yield idx
    idx.close()


def _feed(idx: DurableIndex, **kw) -> ChangeFeed:
    feed = ChangeFeed(idx.export_state, idx.last_seq, **{"grace_s": 0.0, **kw})
    idx.add_listener(feed.publish)
    return feed


def _synced(idx: DurableIndex, **kw) -> tuple[ChangeFeed, IndexCopy]:
    """A feed over ``idx`` and a follower that has loaded its state."""
    feed = _feed(idx, **kw)
    rep = IndexCopy()
    _sync(feed, rep)
    return feed, rep


def _sync(feed: ChangeFeed, rep: IndexCopy, timeout_s: float = 0.0):
    ch = feed.poll(*rep.poll_args(), timeout_s)
    rep.apply(ch)
    return ch


def _assert_same(idx: DurableIndex, rep: IndexCopy) -> None:
    q = np.random.default_rng(99).standard_normal((5, DIM)).astype(np.float32)  # (5, DIM)
    assert rep.index.count == idx.count
    assert named_search(rep.index, q, 3) == named_search(idx, q, 3)


def test_bootstrap_then_deltas_match_the_index(durable):
    durable.add(*_batch(0))
    feed = _feed(durable)
    rep = IndexCopy()
    assert rep.index is None and not rep.fresh()  # nothing yet: ask the actor
    ch = _sync(feed, rep)
    assert ch.state is not None and ch.seq == 1 and rep.seq == 1
    _assert_same(durable, rep)

    durable.add(*_batch(1))
    durable.delete(["b0-0"])
    durable.add(["b1-1"], _batch(7, 1)[1])  # upsert
    ch = _sync(feed, rep)
    assert ch.state is None and [r.seq for r in ch.records] == [2, 3, 4]
    assert rep.seq == 4 and "b0-0" not in rep.index
    np.testing.assert_allclose(rep.index.get("b1-1"), _batch(7, 1)[1][0])
    _assert_same(durable, rep)


def test_poll_waits_for_the_next_record(durable):
    feed, rep = _synced(durable)
    t0 = time.monotonic()
    assert _sync(feed, rep, timeout_s=0.2).records == []  # up to date: a heartbeat
    assert time.monotonic() - t0 >= 0.19

    threading.Timer(0.1, lambda: durable.add(*_batch(2))).start()
    t0 = time.monotonic()
    ch = _sync(feed, rep, timeout_s=10)
    assert time.monotonic() - t0 < 5 and [r.seq for r in ch.records] == [1]
    _assert_same(durable, rep)


def test_writes_wait_until_followers_have_applied_them(durable):
    feed, rep = _synced(durable)
    stop = threading.Event()

    def follow():  # a follower's poll loop
        while not stop.is_set():
            _sync(feed, rep, timeout_s=0.05)

    t = threading.Thread(target=follow)
    t.start()
    try:
        for b in range(20):
            seq = durable.add(*_batch(b))
            assert feed.wait_followers(seq) == []
            # acknowledged => the copy has it (read-after-acknowledged-write)
            assert rep.seq >= seq and f"b{b}-0" in rep.index
    finally:
        stop.set()
        t.join()
    _assert_same(durable, rep)


def test_silent_follower_is_expelled_and_its_lease_has_expired(durable):
    feed, rep = _synced(durable, lease_s=0.2, expel_after_s=0.4)
    assert rep.fresh()
    seq = durable.add(*_batch(0))  # rep never polls again
    t0 = time.monotonic()
    assert feed.wait_followers(seq) == [rep.name]
    assert 0.3 <= time.monotonic() - t0 < 5
    # the invariant that makes this safe: before the write is acknowledged, the cut-off copy
    # has stopped answering (it would miss b0-0)
    assert not rep.fresh()
    assert feed.stats()["followers"] == 0
    assert feed.wait_followers(seq) == []  # expelled followers are not waited for again
    rep.poll_args()
    assert not rep.fresh()  # a new poll alone does not make it fresh: the answer has b0
    _sync(feed, rep)  # it comes back by polling: records since its seq
    assert rep.fresh() and rep.seq == seq
    _assert_same(durable, rep)


def test_a_follower_that_leaves_is_not_waited_for(durable):
    feed, rep = _synced(durable, lease_s=5.0)
    feed.leave(rep.name)
    seq = durable.add(*_batch(0))
    t0 = time.monotonic()
    assert feed.wait_followers(seq) == [] and time.monotonic() - t0 < 1.0
    assert feed.stats()["followers"] == 0 and feed.stats()["expelled"] == 0


def test_a_new_feed_acknowledges_nothing_before_old_leases_have_run_out(durable):
    """A restarted actor does not know the followers of its previous incarnation: its first
    writes wait until their leases have expired (then they have polled it, or stay stale)."""
    old_feed = _feed(durable, lease_s=0.3)
    rep = IndexCopy()
    _sync(old_feed, rep)
    assert rep.fresh()
    restarted = ChangeFeed(durable.export_state, durable.last_seq, lease_s=0.3)  # grace 0.6 s
    durable.add_listener(restarted.publish)
    seq = durable.add(*_batch(0))
    t0 = time.monotonic()
    assert restarted.wait_followers(seq) == []
    assert time.monotonic() - t0 >= 0.5
    assert not rep.fresh()  # the old copy lacks b0-0, and has stopped answering
    t0 = time.monotonic()
    restarted.wait_followers(seq)  # after the grace: no wait
    assert time.monotonic() - t0 < 0.3


def test_new_epoch_or_far_behind_gets_the_whole_state(durable):
    feed = _feed(durable, max_rows=8)  # keeps 2 batches of 4 rows
    rep = IndexCopy()
    _sync(feed, rep)
    for b in range(5):
        durable.add(*_batch(b))
    ch = _sync(feed, rep)  # 5 records behind, 2 kept
    assert ch.state is not None and rep.seq == 5
    _assert_same(durable, rep)

    restarted = ChangeFeed(durable.export_state, durable.last_seq, grace_s=0.0)  # new actor
    ch = restarted.poll(*rep.poll_args(), 0.0)
    assert ch.state is not None and ch.epoch == restarted.epoch
    rep.apply(ch)
    assert rep.epoch == restarted.epoch
    _assert_same(durable, rep)


def test_lease_and_lost_contact():
    now = [100.0]
    rep = IndexCopy(clock=lambda: now[0])
    feed = ChangeFeed(lambda: (0, _empty_state()), 0, lease_s=1.0, clock=lambda: now[0])
    rep.apply(feed.poll(*rep.poll_args(), 0.0))
    assert rep.poll_timeout_s() == pytest.approx(1 / 3)
    assert rep.fresh()
    now[0] += 0.99
    assert rep.fresh()
    now[0] += 0.02
    assert not rep.fresh()  # the latest applied answer is older than the lease
    rep.poll_args()
    assert not rep.fresh()  # sending a poll is not enough: its answer must be applied
    rep.apply(feed.poll(*rep.poll_args(), 0.0))
    assert rep.fresh()
    rep.lost_contact()
    assert not rep.fresh()
    with pytest.raises(ValueError):
        ChangeFeed(lambda: (0, {}), 0, lease_s=2.0, expel_after_s=1.0)


def _empty_state() -> dict:
    from irene.index.shard import IndexSpec
    from irene.index.sharded import ShardedIndex

    return ShardedIndex(DIM, 2, IndexSpec.from_dict(SPEC)).state_dict()


def test_a_replica_copy_holds_the_records(durable):
    from irene.index.records import Records, empty_record

    def recs(ids: list[str], tag: str) -> Records:
        return Records.of([f"{i} {tag}" for i in ids], [{"tag": tag}] * len(ids), "trained", tag)

    ids0, x0 = _batch(0)
    durable.add(ids0, x0, recs(ids0, "a"))
    feed, rep = _synced(durable)  # bootstrap: the whole state, records included
    assert rep.index.get_records(ids0) == durable.get_records(ids0)
    assert rep.index.get_records(ids0)[0] == {
        "text": "b0-0 a", "metadata": {"tag": "a"}, "source": "trained", "version": "a"
    }  # fmt: skip
    ids1, x1 = _batch(1)
    durable.add(ids1, x1, recs(ids1, "b"))  # deltas: LogRecords with their records
    durable.add(ids0[:1], x0[:1], recs(ids0[:1], "c"))
    durable.add(ids0[1:2], x0[1:2])
    durable.delete(ids0[2:3])
    ch = _sync(feed, rep)
    assert ch.state is None and len(ch.records) == 4
    every = ids0 + ids1 + ["nope"]
    assert rep.index.get_records(every) == durable.get_records(every)
    got = rep.index.get_records(ids0)
    assert got[0]["text"] == "b0-0 c" and got[1] == empty_record() and got[2] is None
    rep.lost_contact()
    assert not rep.fresh()  # stale: CopiesView asks the actor

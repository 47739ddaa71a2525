"""The index actor: plain-class behaviour, seeding from a bundle, and a chaos test that
SIGKILLs the Ray actor mid-ingest (vectors and item records must survive)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import faiss  # noqa: F401 -- faiss before anything that may pull in torch
import numpy as np
import pytest

from irene.config import IndexConfig
from irene.index.actor import ActorSettings, IndexActor
from irene.index.feed import IndexCopy
from irene.index.records import Records, empty_record
from irene.ray.index import (
    FEED_GROUP,
    ActorShards,
    SettingsMismatch,
    ShardActor,
    get_or_create_index_actor,
)
from tests.helpers import named_search

DIM = 8
NAMESPACE = "irene-tests"
BUCKET = "irene-test"  # created by the moto_s3 fixture
S3_ENV = ("IRENE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def _batch(b: int, n: int = 5) -> tuple[list[str], np.ndarray]:
    x = np.random.default_rng(b).standard_normal((n, DIM)).astype(np.float32)  # (n, DIM)
    return [f"b{b}-{i}" for i in range(n)], x / np.linalg.norm(x, axis=1, keepdims=True)


def _records(b: int, n: int = 5) -> Records:
    ids = _batch(b, n)[0]
    return Records.of(
        [f"text of {i}" for i in ids], [{"b": b, "i": i} for i in ids], "generated", "v1"
    )


def test_plain_actor_class(tmp_path):
    uri = str(tmp_path / "index")
    actor = IndexActor.open(uri, DIM, 2, {"kind": "flat", "use_gpu": False}, lease_s=0.1)
    ids, x = _batch(0)
    assert actor.add(ids, x, _records(0)) == 1
    seq, created = actor.upsert(ids[:2] + ["fresh"], x[:3])  # says created / updated itself
    assert seq == 2 and created.tolist() == [False, False, True]
    assert actor.delete(["fresh"]) == [True]
    actor.add(ids[:2], x[:2], _records(0).take([0, 1]))  # back as they were
    assert actor.get_records([ids[1], "nope"]) == [_records(0).row(1), None]
    assert actor.add(*_batch(1)) == 5  # without records
    assert actor.get_records(_batch(1)[0][:1]) == [empty_record()]
    assert actor.delete(_batch(1)[0]) == [True] * 5
    assert actor.add(ids, x, _records(0).to_json()) == 7  # the JSON columns are accepted too
    assert actor.count() == 5
    assert actor.contains([ids[0], "nope", ids[4]]) == [True, False, True]
    assert named_search(actor, x[:1], 1)[0][0][0] == ids[0]
    assert actor.delete([ids[0], "zzz"]) == [True, False]
    assert actor.get(ids[0]) is None and np.allclose(actor.get(ids[1]), x[1])
    assert actor.snapshot() == 8
    stats = actor.stats()
    assert stats["count"] == 4 and stats["last_seq"] == 8 and stats["snapshot_seq"] == 8
    assert (
        stats["pid"] == os.getpid() and stats["n_shards"] == 2 and stats["recovery_report"]["clean"]
    )
    actor.close()
    again = IndexActor.open(uri, DIM, 2)
    assert again.count() == 4 and again.stats()["recovery_report"]["snapshot_seq"] == 8
    assert again.get_records(ids) == [None] + [_records(0).row(k) for k in range(1, 5)]
    again.close()


def test_actor_seeds_itself_from_a_bundle_once(tmp_path):
    from irene.bundle import iter_index_items, load_bundle
    from tests.helpers import make_tiny_bundle

    bundle = make_tiny_bundle(str(tmp_path / "bundle"), n_seen=12)
    b = load_bundle(bundle)
    items = list(iter_index_items(bundle, 5))
    n = sum(len(c[0]) for c in items)
    actor = ShardActor.open(str(tmp_path / "index"), b.dim, 2)  # the Ray actor's class, plain
    assert actor.seed_from_bundle(bundle, chunk=5) == n >= 12
    assert actor.stats()["last_seq"] == len(items)  # durable log records of <= 5 items
    assert actor.contains(b.item_ids) == [True] * 12
    np.testing.assert_allclose(actor.get("seen-3"), b.seen_classifiers()[3], atol=1e-6)
    for ids, _, recs in items:  # the records came with the vectors
        assert actor.get_records(ids) == [recs.row(k) for k in range(len(ids))]
    assert actor.get_records(["seen-3"])[0]["source"] == "trained"
    assert actor.seed_from_bundle(bundle) == 0  # not empty: nothing added
    actor.close()


def _ray_actor_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

    return (RayActorError, ActorDiedError, ActorUnavailableError, GetTimeoutError)


def _call(ray, fn, *args, deadline: float, timeout: float = 30.0):
    """Call an actor method, retrying while the actor is dead/restarting, until ``deadline``."""
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            return ray.get(
                fn.remote(*args), timeout=min(timeout, max(deadline - time.monotonic(), 1))
            )
        except _ray_actor_errors() as e:
            last = e
            time.sleep(0.2)
    raise TimeoutError(f"actor call did not succeed before the deadline: {last!r}")


def _poll(ray, actor, rep: IndexCopy, lock: threading.Lock) -> None:
    """One long poll of the actor's change feed, applied to ``rep``."""
    ch = ray.get(
        actor.poll.options(concurrency_group=FEED_GROUP).remote(*rep.poll_args(), 0.2), timeout=30
    )
    with lock:
        rep.apply(ch)


def _chaos(ray, uri: str, env_vars: dict[str, str] | None) -> None:
    name = f"chaos-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + 90
    settings = ActorSettings(uri, DIM, n_shards=2, max_concurrency=4, num_cpus=0, snapshot_every=7)
    actor = get_or_create_index_actor(
        name, NAMESPACE, settings, max_restarts=-1, max_task_retries=-1, env_vars=env_vars
    )
    try:
        assert get_or_create_index_actor(name, NAMESPACE, settings) == actor  # get_if_exists
        ActorShards([actor], [settings]).verify_sync(timeout=60)  # same settings: fine
        other = ActorSettings(uri, DIM, n_shards=3, max_concurrency=4, num_cpus=0, snapshot_every=7)
        with pytest.raises(SettingsMismatch, match="n_shards=2 \\(asked for 3\\)"):
            ActorShards([get_or_create_index_actor(name, NAMESPACE, other)], [other]).verify_sync()
        pid0 = _call(ray, actor.stats, deadline=deadline)["pid"]
        acked: list[int] = []
        errors: list[BaseException] = []
        stop = threading.Event()
        copy, copy_lock = IndexCopy(), threading.Lock()  # a read replica following the actor
        served_by_copy = [0]

        def ingest():
            try:
                b = 0
                while not stop.is_set() and time.monotonic() < deadline:
                    _call(ray, actor.add, *_batch(b), _records(b), deadline=deadline)
                    acked.append(b)  # acknowledged: must survive the crash
                    with copy_lock:  # ... and be in the read replica whenever it may answer
                        if copy.fresh():
                            assert f"b{b}-0" in copy.index, f"acked b{b} missing from the copy"
                            served_by_copy[0] += 1
                    b += 1
            except BaseException as e:  # noqa: BLE001 -- surfaced by the assertion below
                errors.append(e)

        def follower():
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    _poll(ray, actor, copy, copy_lock)
                except _ray_actor_errors():
                    copy.lost_contact()
                    time.sleep(0.1)
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
                    return

        def searcher():
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    _call(ray, actor.search, _batch(10_000)[1], 3, deadline=deadline)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=f) for f in (ingest, searcher, follower)]
        for t in threads:
            t.start()
        while len(acked) < 10 and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
        n_before_kill = len(acked)
        os.kill(pid0, signal.SIGKILL)
        stats = None
        while time.monotonic() < deadline and not errors:  # wait for the restarted actor
            stats = _call(ray, actor.stats, deadline=deadline)
            if stats["pid"] != pid0 and len(acked) >= n_before_kill + 10:
                break
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors[0]
        assert not any(t.is_alive() for t in threads)
        assert stats is not None and stats["pid"] != pid0, "the actor was not restarted"
        assert len(acked) >= n_before_kill + 10, "ingest did not resume after the restart"
        rep = stats["recovery_report"]
        assert rep["last_seq"] >= n_before_kill  # it restored everything acked before the kill
        print(
            f"chaos {uri}: {n_before_kill} batches acked before SIGKILL, {len(acked)} in total; restart restored",
            rep,
        )
        assert not rep["gaps"] and not rep["skipped_snapshots"]

        # every acknowledged id survived, with its vector and record, and is searchable
        final = _call(ray, actor.stats, deadline=deadline)
        assert final["count"] == 5 * len(set(acked))
        all_ids = [i for b in acked for i in _batch(b)[0]]
        want = [_records(b).row(k) for b in acked for k in range(5)]
        assert _call(ray, actor.get_records, all_ids, deadline=deadline) == want
        for b in acked:
            ids, x = _batch(b)
            got = _call(ray, actor.get, ids[0], deadline=deadline)
            assert got is not None, ids[0]
            np.testing.assert_allclose(got, x[0], rtol=1e-6)
        sample = acked[:: max(1, len(acked) // 10)] + [acked[-1]]
        queries = np.concatenate([_batch(b)[1][:1] for b in sample])
        scores, hits = _call(ray, actor.search, queries, 1, deadline=deadline)
        names, _ = _call(ray, actor.lookup, hits[:, 0], deadline=deadline)
        assert names == [f"b{b}-0" for b in sample]

        # the read replica caught up with the restarted actor (new epoch: whole state) and
        # answers the same
        assert served_by_copy[0] > 0, "the read replica never answered"
        _poll(ray, actor, copy, copy_lock)
        assert copy.epoch == final["feed"]["epoch"] and copy.seq == final["last_seq"]
        assert copy.index.count == final["count"] and copy.fresh()
        np.testing.assert_array_equal(copy.index.search(queries, 1)[1], hits)
        assert copy.index.get_records(all_ids) == want
    finally:
        ray.kill(actor)


def test_chaos_kill_actor_local_log(ray_local, tmp_path):
    _chaos(ray_local, str(tmp_path / "index"), None)


@pytest.mark.slow  # `make test` kills the S3-logged actor through the app (tests/reliability)
def test_chaos_kill_actor_s3_log(ray_local, moto_s3):
    env = {k: os.environ[k] for k in S3_ENV}
    _chaos(ray_local, f"s3://{BUCKET}/{uuid.uuid4().hex}", env)


def test_rejects_serial_actor():
    with pytest.raises(ValueError):
        get_or_create_index_actor(
            "x", NAMESPACE, ActorSettings("/tmp/unused", DIM, max_concurrency=1)
        )


def test_four_shard_actors_survive_kills_of_one_shard(ray_local, tmp_path):
    """An index over 4 shard actors (one log each): shard 2's actor is SIGKILLed twice under
    ingest + search through the router; every acknowledged item survives on its shard, a read
    replica of shard 2 holds exactly that shard's items, and answers equal one in-process
    index holding everything."""
    from irene.index.router import owner_of
    from irene.index.sharded import ShardedIndex, int_id
    from irene.ray.index import actors_for

    ray = ray_local
    name = f"shards-{uuid.uuid4().hex[:8]}"
    uri = str(tmp_path / "index")
    config = IndexConfig(
        uri=uri, name=name, namespace=NAMESPACE, n_owners=4, n_shards=2, max_concurrency=4,
        num_cpus=0, snapshot_every=5,
    )  # fmt: skip
    shards = actors_for(config, DIM, max_task_retries=-1)
    handles = shards.handles
    deadline = time.monotonic() + 120
    victim = handles[2]
    try:
        pid0 = _call(ray, victim.stats, deadline=deadline)["pid"]
        acked: list[int] = []
        errors: list[BaseException] = []
        stop = threading.Event()
        copy, copy_lock = IndexCopy(), threading.Lock()  # follows shard 2 only

        def retrying(method, *args):
            while True:
                try:
                    return getattr(shards.sync(30), method)(*args)
                except _ray_actor_errors():
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

        def ingest():
            try:
                b = 0
                while not stop.is_set() and time.monotonic() < deadline:
                    retrying("add", *_batch(b, 8))
                    acked.append(b)
                    b += 1
            except BaseException as e:  # noqa: BLE001 -- surfaced by the assertion below
                errors.append(e)

        def searcher():
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    retrying("search", _batch(10_000)[1], 3)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def follower():
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    _poll(ray, victim, copy, copy_lock)
                except _ray_actor_errors():
                    copy.lost_contact()
                    time.sleep(0.1)

        threads = [threading.Thread(target=f) for f in (ingest, searcher, follower)]
        for t in threads:
            t.start()
        pids = [pid0]
        for _ in range(2):
            goal = len(acked) + 8
            while len(acked) < goal and time.monotonic() < deadline and not errors:
                time.sleep(0.05)
            os.kill(pids[-1], signal.SIGKILL)
            while time.monotonic() < deadline and not errors:
                pid = _call(ray, victim.stats, deadline=deadline)["pid"]
                if pid != pids[-1]:
                    pids.append(pid)
                    break
                time.sleep(0.1)
        goal = len(acked) + 8
        while len(acked) < goal and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors[0]
        assert len(pids) == 3, "shard 2's actor was not restarted twice"

        # every acknowledged item is on its own shard with its vector; nothing extra anywhere
        ids = [i for b in acked for i in _batch(b, 8)[0]]
        x = np.concatenate([_batch(b, 8)[1] for b in acked])
        sync = shards.sync(30)
        stats = sync.stats()
        assert stats["count"] == len(ids) == stats["integrity"]["ids"]
        assert stats["integrity"]["labels"] == len(ids)
        for o, h in enumerate(handles):
            mine = [i for i in ids if owner_of(int_id(i), 4) == o]
            assert ray.get(h.count.remote(), timeout=30) == len(mine)
        got = sync.get_many(ids)
        np.testing.assert_allclose(np.stack(got), x, rtol=1e-6)
        reference = ShardedIndex(DIM, 2)
        reference.add(ids, x)
        q = _batch(20_000, 10)[1]
        assert named_search(sync, q, 5) == reference.search_named(q, 5)

        # the replica copies one shard, not the index
        _poll(ray, victim, copy, copy_lock)
        on_2 = {i for i in ids if owner_of(int_id(i), 4) == 2}
        assert set(copy.index.ids()) == on_2 and 0 < len(on_2) < len(ids)
    finally:
        for h in handles:
            ray.kill(h)

"""Chaos under load: the index actor SIGKILLed repeatedly during mixed ingest / upsert /
delete / query traffic (local log and moto S3 log), items' records (text, metadata) through a
shard actor's SIGKILL, and Serve replicas SIGKILLed under query and ingest load."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import httpx
import numpy as np
import pytest

from irene.client import IreneClient, IreneHTTPError, pairs
from tests.helpers import named_search
from tests.reliability.conftest import (
    LIMITS,
    SCALES,
    TOKEN,
    Ledger,
    check_integrity,
    deploy,
    hits_agree,
    kill_index_actor,
    mixed_client,
    percentile,
    random_text,
    replica_pids,
    verify_ledger,
)


def _kill_actor_repeatedly(app, scale, rng, stop: threading.Event, out: dict) -> None:
    restarts = []
    for k in range(scale.kills):
        time.sleep(rng.uniform(*scale.kill_gap_s))
        restarts.append(kill_index_actor(app, k % app.n_owners))  # each shard in turn
    out["restarts"] = restarts
    time.sleep(1.0)  # some traffic after the last restart
    stop.set()


def _actor_chaos(app, scale, report, storage: str) -> None:
    rng = np.random.default_rng(0)
    ledger, errors, stop = Ledger(), [], threading.Event()
    prefix = f"chaos-{uuid.uuid4().hex[:6]}"
    start_count = app.stats()["count"]
    retried = [0] * scale.clients
    out: dict = {}

    def run_writer(k):
        retried[k] = mixed_client(app, ledger, f"{prefix}-c{k}", k, stop, errors)

    writers = [threading.Thread(target=run_writer, args=(k,)) for k in range(scale.clients)]
    for t in writers:
        t.start()
    killer = threading.Thread(target=_kill_actor_repeatedly, args=(app, scale, rng, stop, out))
    killer.start()
    killer.join(timeout=300)
    stop.set()
    for t in writers:
        t.join(timeout=120)
    assert not killer.is_alive() and not any(t.is_alive() for t in writers)
    assert len(out.get("restarts", [])) == scale.kills, "the actor was not killed as planned"
    assert not errors, errors[:3]

    with IreneClient(app.base_url, token=TOKEN, retries=6) as c:
        c.wait_ready()
        found = verify_ledger(app, ledger, c)
        # every query replica agrees with the actors (queries over HTTP land on any copy)
        texts = [random_text(rng) for _ in range(12)]
        emb = app.bundle.encoder.encode(texts)
        want = named_search(app.index(), emb, 5)
        disagree = sum(
            not hits_agree(got, exp)
            for _ in range(2)
            for got, exp in zip(pairs(c.query(texts, k=5, batch_size=1)), want, strict=True)
        )
    stats = app.stats()
    integ = check_integrity(stats)
    figures = {
        "storage": storage,
        "clients": scale.clients,
        "shard actors": app.n_owners,
        "SIGKILLs of the index actor": scale.kills,
        "actor restart seconds (each)": [round(s, 2) for s in out["restarts"]],
        "acknowledged writes (batches)": ledger.acked_writes,
        "writes failed after the client's retries": ledger.failed_writes,
        "requests retried by the client": sum(retried),
        **found,
        **integ,
        "index count - start count - present": stats["count"] - start_count - found["present"],
        "queries disagreeing with the actor (of 24)": disagree,
        "recovery report gaps": len(stats["recovery_report"]["gaps"]),
    }
    report.add(f"Index actor chaos under mixed load, {storage} log", scale, figures)
    assert found["lost"] == found["stale vector (an earlier write's)"] == 0
    assert found["deleted but present"] == 0
    assert found["vectors off the in-process one, closest to the last write"] <= max(
        2, 1e-3 * found["acknowledged live items"]
    ), figures
    assert integ["duplicates"] == 0 and figures["index count - start count - present"] == 0
    assert disagree == 0 and not stats["recovery_report"]["gaps"]
    assert found["acknowledged live items"] > 0 and ledger.acked_writes > 2 * scale.kills


def test_index_actor_chaos_local_log(shared_app, scale, report):
    _actor_chaos(shared_app, scale, report, "local")


def test_index_actor_chaos_s3_log(s3_app, scale, report):
    _actor_chaos(s3_app[1], scale, report, "moto S3")


@pytest.mark.slow  # both scales (~70 s short): its app is the slowest to start; `make test`
# keeps a SIGKILLed shard actor under shard readers in test_records_survive_a_shard_actor_sigkill
def test_shard_actor_chaos_with_shard_readers(sharded_app, scale, report):
    """The same under 2 shard actors killed in turn, queries answered by 2 ShardReader
    replicas per shard: nothing acknowledged lost, no duplicates, answers == the router's."""
    _actor_chaos(sharded_app, scale, report, "local, 2 shard actors, shard readers")


# --------------------------------------------------------------------------- records
@pytest.mark.parametrize(
    "fixture",
    ["shared_app", "s3_app", "sharded_app"],
    ids=["local log", "moto S3 log", "2 shard actors, shard readers"],
)
def test_records_survive_a_shard_actor_sigkill(request, fixture, report):
    """Items ingested with metadata (some before a snapshot, some only in the log after it,
    one upserted with new metadata) keep their text, metadata, source and version through a
    SIGKILL of every shard actor holding them: read back by id, by the restarted actors
    themselves and as query payloads."""
    app = request.getfixturevalue(fixture)
    app = app[1] if isinstance(app, tuple) else app
    prefix = f"rec-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(7)

    def item(n: int, note: str) -> tuple:
        meta = {"n": n, "price": n + 0.5, "tags": [note, f"t{n % 3}"], "ok": n % 2 == 0}
        return (f"{prefix}-{n}", random_text(rng), meta)

    batch = LIMITS["max_items_per_request"]
    before = [item(n, "snap") for n in range(batch)]
    after = [item(n, "log") for n in range(batch, batch + 6)]
    upsert = item(0, "upsert")
    with IreneClient(app.base_url, token=TOKEN, retries=6) as c:
        c.ingest(before, batch_size=batch)
        assert c.http.post("/v1/snapshot").is_success  # the client sends the token
        c.ingest([*after, upsert], batch_size=batch)
        want = {i: (t, m) for i, t, m in [*before, *after, upsert]}  # the upsert wins
        owners = sorted({app.index().router.owner(i) for i in want})
        restarts = [kill_index_actor(app, o) for o in owners]
        c.wait_ready()
        ids = sorted(want)
        got = c.fetch(ids, batch_size=batch)
        lost = [i for i, it in zip(ids, got, strict=True) if it is None]
        wrong = [
            i
            for i, it in zip(ids, got, strict=True)
            if it is not None
            and (it["text"], it["metadata"], it["source"]) != (*want[i], "generated")
        ]
        from_actors = app.index().get_records(ids)  # the restarted actors' own records
        actor_wrong = [
            i
            for i, r in zip(ids, from_actors, strict=True)
            if (r["text"], r["metadata"]) != want[i]
        ]
        rows = c.query(
            [want[i][0] for i in ids], k=LIMITS["max_k"], batch_size=4, with_payload=True
        )
        ours = [h for row in rows for h in row if h["id"] in want]
    figures = {
        "items (with metadata)": len(ids),
        "shard actors SIGKILLed": len(owners),
        "restart seconds": [round(s, 2) for s in restarts],
        "lost": len(lost),
        "text / metadata / source differ (HTTP)": len(wrong),
        "text / metadata differ (restarted actors)": len(actor_wrong),
        "query hits of these items (with payload)": len(ours),
    }
    report.add(f"Records through a shard actor SIGKILL ({fixture})", SCALES["short"], figures)
    assert not lost and not wrong and not actor_wrong, figures
    assert len({r["version"] for r in from_actors}) == 1 and from_actors[0]["version"]
    assert ours and all((h["text"], h["metadata"]) == want[h["id"]] for h in ours)


# --------------------------------------------------------------------------- replicas
def _load(app, n_clients, retrying, stop: threading.Event, rows: list, kinds: set, ingest=False):
    """Query (or ingest) clients recording (start time, seconds, ok)."""

    def run(k):
        rng = np.random.default_rng(100 + k)
        c = IreneClient(app.base_url, token=TOKEN, retries=4 if retrying else 0, concurrency=1)
        with c:
            while not stop.is_set():
                t0 = time.monotonic()
                ok = True
                try:
                    if ingest:
                        c.ingest([(f"rk-{k}-{rng.integers(1 << 30)}", random_text(rng))])
                    else:
                        c.query([random_text(rng)], k=5)
                except (IreneHTTPError, httpx.HTTPError) as e:
                    ok = False
                    kinds.add(f"{type(e).__name__}: {str(e)[:80]}")
                rows.append((t0, time.monotonic() - t0, ok))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    return threads


def _replica_kill_phase(app, deployment: str, n_clients: int, retrying, seconds, ingest=False):
    rows: list = []
    stop = threading.Event()
    n_replicas = len(replica_pids(app.name, deployment))
    kinds: set[str] = set()
    threads = _load(app, n_clients, retrying, stop, rows, kinds, ingest)
    time.sleep(seconds / 3)
    victim = replica_pids(app.name, deployment)[0]
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    replaced = None
    while time.monotonic() - t_kill < 120:
        pids = replica_pids(app.name, deployment)
        if victim not in pids and len(pids) == n_replicas:
            replaced = time.monotonic() - t_kill
            break
        time.sleep(0.1)
    time.sleep(max(0.0, seconds * 2 / 3 - (time.monotonic() - t_kill)))
    stop.set()
    for t in threads:
        t.join(timeout=120)
    failed = [r for r in rows if not r[2]]
    window_end = t_kill + (replaced or 0.0)
    # during the fault: every request that was in flight at some point of [kill, replaced]
    during = [s for t0, s, _ in rows if t0 <= window_end and t0 + s >= t_kill]
    before = [s for t0, s, _ in rows if t0 + s < t_kill]
    return {
        "requests": len(rows),
        "failed": len(failed),
        "failed %": 100.0 * len(failed) / max(1, len(rows)),
        "p99 ms before the kill": percentile(before, 99),
        "p99 ms from the kill until replaced": percentile(during, 99),
        "max ms from the kill until replaced": percentile(during, 100),
        "seconds until Serve replaced the replica": replaced,
        "errors seen": sorted(kinds),
        "seconds from the kill to the last failed request": (
            max(t0 + s for t0, s, _ in failed) - t_kill if failed else 0.0
        ),
    }


def test_replica_kills_under_load(
    shared_app, sharded_app, serve_port, bundle_dir, tmp_path, scale, report
):
    assert len(replica_pids(shared_app.name, "Ingress")) == 2
    assert len(replica_pids(sharded_app.name, "ShardReader-1")) == 2
    rows = []
    figures = {}
    # (deployment, load, client retries, Generator replicas); ShardReader-1: one of the two
    # copies of shard 1 of the sharded app
    phases = [("Ingress", "query", True, 1), ("ShardReader-1", "query", True, 1)]
    if scale.name == "full":
        phases = [
            ("Ingress", "query", False, 1),
            *phases,
            ("Generator", "ingest", True, 1),
            ("Generator", "ingest", True, 2),
        ]
    for deployment, kind, retrying, n_gen in phases:
        n = scale.query_clients if kind == "query" else max(2, scale.query_clients // 4)
        app = sharded_app if deployment.startswith("ShardReader") else shared_app
        if n_gen == 1:
            r = _replica_kill_phase(
                app, deployment, n, retrying, scale.replica_phase_s, ingest=kind == "ingest"
            )
        else:  # the same with two Generator replicas: one survives the kill
            with deploy(
                serve_port, bundle_dir, str(tmp_path / "index2"), generator_replicas=n_gen
            ) as app2:
                r = _replica_kill_phase(
                    app2, deployment, n, retrying, scale.replica_phase_s, ingest=True
                )
        mode = "IreneClient retries=4" if retrying else "no retries"
        rows.append(
            f"| {deployment} (of {n_gen if deployment == 'Generator' else 2}) "
            f"| {kind} x {n} clients | {mode} | {r['requests']} | {r['failed']} "
            f"({r['failed %']:.2f}%) | {r['p99 ms before the kill']:.0f} | "
            f"{r['p99 ms from the kill until replaced']:.0f} | "
            f"{r['max ms from the kill until replaced']:.0f} | "
            f"{r['seconds until Serve replaced the replica']:.1f} | "
            f"{r['seconds from the kill to the last failed request']:.2f} |"
        )
        figures[f"{deployment} (of {n_gen}) {kind} {mode}"] = r
        assert r["seconds until Serve replaced the replica"] is not None, r
        if retrying:
            assert r["failed"] == 0, r
    table = "\n".join(
        [
            "| SIGKILLed | load | client | requests | failed | p99 ms before | p99 ms during "
            "| max ms during | replaced after s | last failure after s |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    report.add("Replica SIGKILL under load", scale, {"phases": len(phases)}, table)

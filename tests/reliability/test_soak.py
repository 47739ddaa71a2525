"""Soak: a bounded run of mixed ingest / upsert / delete / query traffic. Error rate, latency
drift between the first and the last window, memory growth of every serving process, and
the index size against what was acknowledged."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import psutil

from irene.client import IreneClient
from tests.reliability.conftest import (
    TOKEN,
    Ledger,
    check_integrity,
    mixed_client,
    percentile,
    verify_ledger,
)


def _processes(app) -> dict[str, int]:
    from ray._private import state

    pids = {"index actor": app.stats()["pid"]}
    for a in state.actors().values():
        if a["State"] != "ALIVE":
            continue
        cls = a["ActorClassName"]
        if cls.startswith(f"ServeReplica:{app.name}:") or cls in ("ServeController", "ProxyActor"):
            pids[f"{cls.split(':')[-1]} {a['Pid']}"] = int(a["Pid"])
    return pids


def _rss_mb(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            out[name] = float("nan")
    return out


def test_soak(shared_app, scale, report):
    app = shared_app
    ledger, errors, rows, stop = Ledger(), [], [], threading.Event()
    prefix = f"soak-{uuid.uuid4().hex[:6]}"
    start_count = app.stats()["count"]
    pids = _processes(app)
    rss0 = _rss_mb(pids)
    retried = [0] * scale.clients

    def run(k):
        retried[k] = mixed_client(app, ledger, f"{prefix}-c{k}", 1000 + k, stop, errors, rows)

    t_start = time.monotonic()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(scale.clients)]
    for t in threads:
        t.start()
    time.sleep(scale.soak_s)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    rss1 = _rss_mb(pids)

    width = scale.soak_s / scale.soak_windows
    windows = []
    for w in range(scale.soak_windows):
        sel = [r for r in rows if w * width <= r[0] - t_start < (w + 1) * width]
        lat = {op: [s for _, o, s, _ in sel if o == op] for op in ("query", "ingest", "delete")}
        windows.append(
            f"| {w * width:.0f}-{(w + 1) * width:.0f} s | {len(sel)} | "
            + " | ".join(f"{percentile(lat[op], 50):.0f} / {percentile(lat[op], 99):.0f}"
                         for op in ("query", "ingest", "delete"))
            + f" | {sum(not r[3] for r in sel)} |"
        )  # fmt: skip
    with IreneClient(app.base_url, token=TOKEN, retries=6) as c:
        found = verify_ledger(app, ledger, c)
    stats = app.stats()
    integ = check_integrity(stats)
    first = [s for t0, o, s, _ in rows if o == "query" and t0 - t_start < width]
    last = [s for t0, o, s, _ in rows if o == "query" and t0 - t_start >= scale.soak_s - width]
    figures = {
        "seconds": scale.soak_s,
        "clients": scale.clients,
        "requests": len(rows),
        "failed after the client's retries": sum(not r[3] for r in rows),
        "error rate %": 100.0 * sum(not r[3] for r in rows) / max(1, len(rows)),
        "requests retried by the client": sum(retried),
        "query p50 ms first / last window": [percentile(first, 50), percentile(last, 50)],
        "query p99 ms first / last window": [percentile(first, 99), percentile(last, 99)],
        "RSS MB start": {k: round(v, 1) for k, v in rss0.items()},
        "RSS MB growth": {k: round(rss1[k] - rss0[k], 1) for k in pids},
        **found,
        **integ,
        "index count - start count - present": stats["count"] - start_count - found["present"],
    }
    table = "\n".join(
        [
            "| window | requests | query p50 / p99 ms | ingest p50 / p99 ms | delete p50 / p99 ms "
            "| failed |",
            "|---|---:|---:|---:|---:|---:|",
            *windows,
        ]
    )
    report.add("Soak: mixed traffic", scale, figures, table)
    assert not errors and figures["failed after the client's retries"] == 0, errors[:3]
    assert found["lost"] == found["stale vector (an earlier write's)"] == 0
    assert found["deleted but present"] == 0
    assert found["vectors off the in-process one, closest to the last write"] <= max(
        2, 1e-3 * found["acknowledged live items"]
    )
    assert integ["duplicates"] == 0 and figures["index count - start count - present"] == 0
    assert len(rows) > 10 * scale.clients and np.isfinite(figures["error rate %"])

"""Storage faults through the HTTP app: the S3 server stopped mid-ingest, the local log's
filesystem full (a real tmpfs) and read-only. Ingest answers 503 and acknowledges nothing it
could not log, queries keep working, writes resume by themselves, a restart recovers exactly
what was acknowledged."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import numpy as np
import pytest

from tests.helpers import remount, tmpfs_mount
from tests.reliability.conftest import AUTH, LIMITS, deploy, kill_index_actor, random_text

BATCH = LIMITS["max_items_per_request"]


class Traffic:
    """Ingest batches of fresh ids over raw HTTP (no retries) and keep what was acked."""

    def __init__(self, app, prefix: str) -> None:
        self.app, self.prefix, self.n = app, f"{prefix}-{uuid.uuid4().hex[:6]}", 0
        self.acked: list[str] = []
        self.refused: list[str] = []
        self.rng = np.random.default_rng(0)
        self.http = app.http(timeout=120)

    def ingest(self) -> httpx.Response:
        ids = [f"{self.prefix}-{self.n + j}" for j in range(BATCH)]
        self.n += BATCH
        body = {"items": [{"id": i, "text": random_text(self.rng)} for i in ids]}
        r = self.http.post("/v1/items", json=body, headers=AUTH)
        (self.acked if r.status_code == 200 else self.refused).extend(ids)
        return r

    def until(self, status: int, limit: int = 400) -> tuple[httpx.Response, int]:
        """Ingest until a reply with ``status``; returns it and the number of requests."""
        for n in range(1, limit + 1):
            r = self.ingest()
            if r.status_code == status:
                return r, n
            assert r.status_code in (200, 503), r.text
            time.sleep(0.05)
        raise AssertionError(f"no {status} after {limit} batches")

    def present(self, ids: list[str]) -> int:
        got = []
        for s in range(0, len(ids), BATCH):
            r = self.http.post("/v1/items/fetch", json={"ids": ids[s : s + BATCH]})
            assert r.status_code == 200, r.text
            got += r.json()["items"]
        return sum(it is not None for it in got)

    def check(self) -> dict:
        """Acked ids present, refused ids absent (the same after an actor restart)."""
        return {
            "acked": len(self.acked),
            "acked present": self.present(self.acked),
            "refused (503)": len(self.refused),
            "refused but present": self.present(self.refused),
        }


class QueryLoad:
    """One client querying in the background; counts non-200 replies."""

    def __init__(self, app) -> None:
        self.ok = self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(app,))
        self.thread.start()

    def _run(self, app) -> None:
        rng = np.random.default_rng(1)
        with app.http() as c:
            while not self.stop.is_set():
                r = c.post("/v1/query", json={"text": random_text(rng), "k": 3})
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failed += 1
                time.sleep(0.02)

    def end(self) -> dict:
        self.stop.set()
        self.thread.join(timeout=60)
        return {"queries ok": self.ok, "queries failed": self.failed}


def _restart_actor(app) -> None:
    kill_index_actor(app)
    with app.http() as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def _storage_503(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert "index storage unavailable, nothing was written" in r.json()["detail"], r.text
    assert r.headers.get("retry-after") == "1"


def _resumed(traffic: Traffic, deadline_s: float = 60.0) -> float:
    t0 = time.monotonic()
    while traffic.ingest().status_code != 200:
        assert time.monotonic() - t0 < deadline_s, "writes did not resume"
        time.sleep(0.2)
    return time.monotonic() - t0


def test_s3_outage_through_the_app(s3_app, scale, report):
    s3, app = s3_app
    t = Traffic(app, "s3out")
    for _ in range(3):
        assert t.ingest().status_code == 200
    queries = QueryLoad(app)
    try:
        s3.stop()  # S3 down mid-ingest
        t0 = time.monotonic()
        r, _ = t.until(503)
        first_503_s = time.monotonic() - t0
        _storage_503(r)
        for _ in range(2 if scale.name == "short" else 5):
            _storage_503(t.ingest())
        time.sleep(1.0)
    finally:
        s3.start()  # S3 back, same state
    resume_s = _resumed(t)
    for _ in range(3):
        assert t.ingest().status_code == 200
    during = queries.end()
    before = t.check()
    _restart_actor(app)
    after = t.check()
    figures = {
        "seconds from S3 stop to the first 503": first_503_s,
        "503 message": r.json()["detail"],
        **during,
        "seconds from S3 back to the first acknowledged write": resume_s,
        **before,
        "after an actor restart: acked present": after["acked present"],
        "after an actor restart: refused but present": after["refused but present"],
    }
    report.add("Storage fault: moto S3 stopped mid-ingest", scale, figures)
    assert "(S3 " in r.json()["detail"], r.json()["detail"]  # the S3 error code, no keys
    assert before["acked present"] == after["acked present"] == len(t.acked)
    assert before["refused but present"] == after["refused but present"] == 0
    assert during["queries failed"] == 0 and during["queries ok"] > 0


@pytest.fixture
def tmpfs(tmp_path):
    with tmpfs_mount(tmp_path / "mnt", "2m") as mnt:
        yield mnt


def _fill(path) -> int:
    """Fill the filesystem of ``path``: write until ENOSPC; returns bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                n += f.write(b"\0" * 4096)
        except OSError:
            pass
    return n


def test_local_disk_full_and_read_only(serve_port, bundle_dir, tmpfs, scale, report):
    index = str(tmpfs / "index")
    with deploy(serve_port, bundle_dir, index) as app:
        t = Traffic(app, "full")
        for _ in range(3):
            assert t.ingest().status_code == 200
        queries = QueryLoad(app)
        filler = tmpfs / "filler"
        filled = _fill(filler)
        r, _ = t.until(503)
        _storage_503(r)
        disk_full_msg = r.json()["detail"]
        filler.unlink()  # room again
        resume_full_s = _resumed(t)
        full = {**queries.end(), **t.check()}
    # read-only: Linux refuses a read-only remount while the log segment is open for writing
    # (EBUSY), so the app is torn down, the filesystem remounted read-only, and a new app
    # starts on the same index: it restores and answers queries, refuses writes with 503,
    # and writes resume by themselves once the filesystem is writable again.
    deadline = time.monotonic() + 30  # the killed actor's process may take a moment to exit
    while not remount(tmpfs, "ro"):
        assert time.monotonic() < deadline, "read-only remount refused (EBUSY) after teardown"
        time.sleep(0.2)
    with deploy(serve_port, bundle_dir, index) as app:
        t.app, t.http = app, app.http(timeout=120)
        queries = QueryLoad(app)
        restored_ro = t.present(t.acked)
        r_ro = t.ingest()
        _storage_503(r_ro)
        assert remount(tmpfs, "rw")
        resume_ro_s = _resumed(t)
        during = queries.end()
        before = t.check()
        _restart_actor(app)
        after = t.check()
    figures = {
        "filesystem": "tmpfs, 2 MiB",
        "filler bytes written before ENOSPC": filled,
        "disk full: 503 message": disk_full_msg,
        "seconds from free space to the first acknowledged write": resume_full_s,
        "disk full phase: queries ok / failed": [full["queries ok"], full["queries failed"]],
        "disk full phase: refused batches present": full["refused but present"],
        "read-only: acked items restored by an app started on it": restored_ro,
        "read-only: 503 message": r_ro.json()["detail"],
        "seconds from the rw remount to the first acknowledged write": resume_ro_s,
        "read-only phase: queries ok / failed": [during["queries ok"], during["queries failed"]],
        **before,
        "after an actor restart: acked present": after["acked present"],
        "after an actor restart: refused but present": after["refused but present"],
    }
    report.add("Storage fault: local log filesystem full, then read-only", scale, figures)
    assert full["refused but present"] == 0 and full["queries failed"] == 0
    assert restored_ro == full["acked"] and during["queries failed"] == 0
    assert before["acked present"] == after["acked present"] == len(t.acked)
    assert before["refused but present"] == after["refused but present"] == 0
    assert full["queries ok"] > 0 and during["queries ok"] > 0

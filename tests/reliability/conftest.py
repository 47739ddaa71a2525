"""Fixtures of the reliability suite: one Serve instance on 127.0.0.1 for the package, apps
deployed on it per scenario, a load/record toolkit and the report.

Every scenario runs at two scales: ``short`` (in ``make test``) and ``full`` (marked
``slow``; ``make test-reliability`` runs it and regenerates ``bench/results/reliability.md``
from the figures the tests record).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from tests.conftest import free_port
from tests.helpers import WORDS, make_tiny_bundle

TOKEN = "reliability-token-4f1c9e27b"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMESPACE = "irene-reliability"
LIMITS = {
    "max_text_chars": 300,
    "max_items_per_request": 16,
    "max_texts_per_query": 4,
    "max_k": 50,
    "default_k": 5,
    "max_body_bytes": 16384,
}
REPORT_ENV = "IRENE_RELIABILITY_REPORT"  # path of the Markdown report to (re)write


@dataclass(frozen=True)
class Scale:
    name: str
    kills: int  # SIGKILLs of the index actor in the chaos scenario
    kill_gap_s: tuple[float, float]  # random gap between kills
    clients: int  # concurrent clients of the chaos / soak scenarios
    query_clients: int  # concurrent query clients of the replica-kill scenario
    replica_phase_s: float  # seconds of load per replica-kill phase
    soak_s: float
    soak_windows: int  # windows the soak is cut into (drift = last vs first)


SCALES = {
    "short": Scale("short", 2, (1.0, 2.0), 3, 8, 9.0, 10.0, 2),
    "full": Scale("full", 6, (2.0, 6.0), 6, 16, 30.0, 300.0, 5),
}
SCALE_PARAMS = [
    pytest.param("short", id="short"),
    pytest.param("full", id="full", marks=pytest.mark.slow),
]


@pytest.fixture(params=SCALE_PARAMS)
def scale(request) -> Scale:
    return SCALES[request.param]


# --------------------------------------------------------------------------- the report
class Report:
    """Figures recorded by the scenarios; written as Markdown when ``REPORT_ENV`` is set."""

    def __init__(self) -> None:
        self.sections: dict[str, dict] = {}

    def add(self, scenario: str, scale: Scale, figures: dict, table: str = "") -> None:
        self.sections[f"{scenario} ({scale.name})"] = {
            "figures": figures,
            "table": table,
            "measured": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        }

    def markdown(self) -> str:
        lines = [
            "# Reliability report",
            "",
            "Written by the reliability suite (`make test-reliability` = `pytest "
            "tests/reliability -m slow` with `IRENE_RELIABILITY_REPORT` set); every figure "
            "below was measured by that run. All traffic to 127.0.0.1 on a tiny bundle "
            "(random 2-layer encoder, 30 seen items): the figures are about the serving "
            "machinery, not the model.",
            "",
            f"- machine: {platform.platform()}, {os.cpu_count()} CPUs",
            "",
        ]
        for name, sec in self.sections.items():
            lines += [f"## {name}", "", f"- measured: {sec.get('measured', '?')}"]
            lines += [f"- {k}: {_fmt(v)}" for k, v in sec["figures"].items()]
            if sec["table"]:
                lines += ["", sec["table"]]
            lines.append("")
        return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return json.dumps(v) if isinstance(v, dict | list) else str(v)


@pytest.fixture(scope="package")
def report():
    rep = Report()
    yield rep
    path = os.environ.get(REPORT_ENV)
    if path and rep.sections:
        # a run of some scenarios (``-k``) replaces theirs and keeps the others' sections
        data = os.path.splitext(path)[0] + ".json"
        if os.path.exists(data):
            with open(data) as f:
                old = json.load(f)
            rep.sections = {**old, **rep.sections}
        with open(path, "w") as f:
            f.write(rep.markdown())
        with open(data, "w") as f:
            json.dump(rep.sections, f, indent=2)


# --------------------------------------------------------------------------- Serve + apps
@dataclass
class App:
    base_url: str
    name: str
    index_name: str
    bundle: object  # the bundle loaded in-process (expected vectors)
    bundle_dir: str
    n_owners: int = 1  # shard actors of the index

    def http(self, timeout: float = 30.0, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout, **kw)

    def actors(self) -> list:
        """The index's shard actors (one: the index actor), in owner order."""
        import ray

        from irene.index.router import owner_name

        return [
            ray.get_actor(owner_name(self.index_name, i, self.n_owners), namespace=NAMESPACE)
            for i in range(self.n_owners)
        ]

    def index(self):
        """The index over its shard actors, called synchronously (the router's answers)."""
        import ray

        from irene.index.router import RoutedIndex

        return RoutedIndex(self.actors(), lambda ref: ray.get(ref, timeout=10))

    def stats(self, timeout_s: float = 60.0) -> dict:
        """The index's stats (the router's sum over shard actors, ``owners``: each one's,
        ``recovery_report.gaps``: all of theirs), waiting through a restart."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                stats = self.index().stats()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        gaps = [g for o in stats["owners"] for g in o["recovery_report"]["gaps"]]
        return {**stats, "recovery_report": {"gaps": gaps}}

    def expected(self, texts: list[str]) -> np.ndarray:
        """In-process generated classifiers (n, d) of ``texts``."""
        return self.bundle.synthesize(self.bundle.encoder.encode(texts))


@pytest.fixture(scope="package")
def serve_port(ray_local):
    from ray import serve

    port = free_port()
    serve.shutdown()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


@pytest.fixture(scope="package")
def bundle_dir(tmp_path_factory) -> str:
    return make_tiny_bundle(str(tmp_path_factory.mktemp("rel") / "bundle"), n_seen=30)


@contextmanager
def deploy(
    serve_port,
    bundle_dir,
    index_uri: str,
    *,
    ingress_replicas=1,
    generator_replicas=1,
    auth=None,
    env=None,
    index=None,
    reader_replicas=2,
    **extra,
):
    """Deploy the app (encoder in the Ingress, read replicas on) under its own route prefix;
    ``env``: environment of the Ingress replicas (which create the index actor); ``index``:
    more ``AppArgs.index`` settings (e.g. ``n_owners``, ``shard_readers``: then
    ``reader_replicas`` replicas of each ShardReader deployment)."""
    import ray
    from ray import serve

    from irene.bundle import load_bundle
    from serve_app.app import build_app

    name = f"rel{uuid.uuid4().hex[:6]}"
    small = {"ray_actor_options": {"num_cpus": 0.05}}
    ingress = {"num_cpus": 0.05, **({"runtime_env": {"env_vars": env}} if env else {})}
    args = {
        "bundle": bundle_dir,
        "index": {
            "uri": index_uri,
            "name": f"irene-{name}",
            "namespace": NAMESPACE,
            "n_shards": 3,
            "num_cpus": 0.05,
            **(index or {}),
        },
        "limits": LIMITS,
        "auth": auth or {"token": TOKEN, "token_env": "IRENE_TEST_UNSET_TOKEN"},
        "threads": 1,
        "encoder_placement": "ingress",
        "deployment_options": {
            "Generator": {**small, "num_replicas": generator_replicas},
            "Ingress": {"ray_actor_options": ingress, "num_replicas": ingress_replicas},
            "ShardReader": {**small, "num_replicas": reader_replicas},
        },
        **extra,
    }
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    app = App(
        f"http://127.0.0.1:{serve_port}/{name}",
        name,
        args["index"]["name"],
        load_bundle(bundle_dir),
        bundle_dir,
        args["index"].get("n_owners", 1),
    )
    with app.http() as c:
        deadline = time.monotonic() + 90
        while True:
            try:
                if c.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "app did not become ready"
            time.sleep(0.3)
    try:
        yield app
    finally:
        serve.delete(name)
        try:
            for actor in app.actors():
                ray.kill(actor)
        except ValueError:
            pass


class MotoS3:
    """A moto S3 server on 127.0.0.1 (in this process) that can be stopped and started again
    on the same port with the same state: an S3 outage."""

    CREDS = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def __init__(self, bucket: str) -> None:
        self.port = 0
        self.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        import boto3

        kw = {k.lower(): v for k, v in self.CREDS.items() if k != "AWS_DEFAULT_REGION"}
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **kw).create_bucket(
            Bucket=bucket
        )
        self.env = {**self.CREDS, "IRENE_S3_ENDPOINT": self.endpoint}

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="package")
def s3_app(serve_port, bundle_dir):
    """(moto server, app whose index log is on it), shared by the S3 scenarios."""
    s3 = MotoS3("rel")
    try:
        with deploy(serve_port, bundle_dir, f"s3://rel/{uuid.uuid4().hex}", env=s3.env) as app:
            yield s3, app
    finally:
        s3.stop()


@pytest.fixture(scope="package")
def shared_app(serve_port, bundle_dir, tmp_path_factory):
    """One app on a local log with two Ingress replicas, shared by the scenarios that do not
    need their own storage (each uses its own id prefix)."""
    with deploy(
        serve_port, bundle_dir, str(tmp_path_factory.mktemp("rel") / "index"), ingress_replicas=2
    ) as app:
        yield app


@pytest.fixture(scope="package")
def sharded_app(serve_port, bundle_dir, tmp_path_factory):
    """An app whose index is 2 shard actors, each copied by 2 ShardReader replicas that
    answer the queries (``index.shard_readers``)."""
    with deploy(
        serve_port,
        bundle_dir,
        str(tmp_path_factory.mktemp("rel") / "sharded"),
        index={"n_owners": 2, "shard_readers": True},
    ) as app:
        yield app


def kill_index_actor(app: App, owner: int = 0) -> float:
    """SIGKILL shard actor ``owner``'s process (the index actor when there is one); returns
    the seconds until Ray restarted it."""
    pid = app.stats()["owners"][owner]["pid"]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while app.stats()["owners"][owner]["pid"] == pid:
        time.sleep(0.05)
    return time.monotonic() - t0


# --------------------------------------------------------------------------- load toolkit
def random_text(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=4))


def replica_pids(app_name: str, deployment: str) -> list[int]:
    """PIDs of the ALIVE Serve replicas of ``deployment`` in application ``app_name``."""
    from ray._private import state

    cls = f"ServeReplica:{app_name}:{deployment}"
    return [
        int(a["Pid"])
        for a in state.actors().values()
        if a["ActorClassName"] == cls and a["State"] == "ALIVE"
    ]


def percentile(xs, q: float) -> float:
    return float(np.percentile(xs, q)) * 1000 if len(xs) else float("nan")  # ms


@dataclass
class Ledger:
    """What the clients were told: the last acknowledged state of every id (each id is
    written by one client only, so "last" is well defined), and ids whose latest write got
    no answer (their state is either the previous or the new one)."""

    state: dict[str, str | None] = field(default_factory=dict)  # id -> text, None = deleted
    history: dict[str, list[str]] = field(default_factory=dict)  # id -> earlier acked texts
    uncertain: set[str] = field(default_factory=set)
    acked_writes: int = 0
    failed_writes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, ids, texts) -> None:
        with self.lock:
            self.acked_writes += 1
            for i, t in zip(ids, texts, strict=True):
                if self.state.get(i) is not None:
                    self.history.setdefault(i, []).append(self.state[i])
                self.state[i] = t
                self.uncertain.discard(i)

    def fail(self, ids) -> None:
        with self.lock:
            self.failed_writes += 1
            self.uncertain.update(ids)


def verify_ledger(app: App, ledger: Ledger, client) -> dict:
    """Every acknowledged item present with the vector of its last acknowledged write, every
    acknowledged delete absent; returns the counts (all but ``uncertain`` must be zero)."""
    ids = sorted(ledger.state)
    got = client.fetch(ids, vectors=True, batch_size=LIMITS["max_items_per_request"])
    live = [i for i in ids if ledger.state[i] is not None and i not in ledger.uncertain]
    want = dict(zip(live, app.expected([ledger.state[i] for i in live]), strict=True))
    lost = stale = resurrected = 0
    off = []  # (id, max abs deviation) of vectors not within 1e-4 of the expected one
    for i, it in zip(ids, got, strict=True):
        if i in ledger.uncertain:
            continue
        if ledger.state[i] is None:
            resurrected += it is not None
        elif it is None:
            lost += 1
        else:
            v = np.asarray(it["vector"], np.float32)
            if np.allclose(v, want[i], atol=1e-4):
                continue
            # Not the expected vector: stale (an earlier acknowledged write of this id is
            # closer) or the generator's own discontinuity (a neighbour or a cosine bucket
            # flipped by float noise between batched and single encoding): closest to the last
            # write, and the same text encoded alone in process gives the served vector.
            earlier = ledger.history.get(i, [])
            d_last = float(np.abs(v - want[i]).max())
            d_earlier = (
                [float(np.abs(v - e).max()) for e in app.expected(earlier)] if earlier else []
            )
            if d_earlier and min(d_earlier) <= d_last:
                stale += 1
            else:
                off.append((i, round(d_last, 4)))
    return {
        "ids written": len(ids),
        "acknowledged live items": len(live),
        "acknowledged deletes": sum(ledger.state[i] is None for i in ids),
        "lost": lost,
        "stale vector (an earlier write's)": stale,
        "vectors off the in-process one, closest to the last write": len(off),
        "of those, (id, max abs deviation)": off[:5],
        "deleted but present": resurrected,
        "uncertain (last write unanswered)": len(ledger.uncertain),
        "present": sum(it is not None for it in got),
    }


def check_integrity(stats: dict) -> dict:
    """No id stored twice: string ids == shard labels == FAISS vectors - tombstones."""
    g = stats["integrity"]
    return {
        "index count": stats["count"],
        "duplicates": (g["labels"] - g["ids"]) + (g["stored"] - g["tombstones"] - g["labels"]),
    }


def hits_agree(a: list, b: list, atol: float = 1e-4) -> bool:
    """Two top-k lists agree: same scores, and the same ids wherever scores do not tie."""
    sa, sb = [s for _, s in a], [s for _, s in b]
    if len(a) != len(b) or not np.allclose(sa, sb, atol=atol):
        return False
    for j, ((ia, s), (ib, _)) in enumerate(zip(a, b, strict=True)):
        tie = any(abs(s - sa[n]) < atol for n in (j - 1, j + 1) if 0 <= n < len(sa))
        if ia != ib and not tie:
            return False
    return True


def mixed_client(app, ledger: Ledger, prefix, seed, stop: threading.Event, errors, rows=None):
    """One client until ``stop``: ingest new ids with some upserts of its own ids, delete own
    ids, query. ``rows`` collects (start, op, seconds, ok). Returns the requests it retried."""
    from irene.client import IreneClient, IreneHTTPError

    batch = LIMITS["max_items_per_request"]
    rng = np.random.default_rng(seed)
    mine: list[str] = []
    n = 0
    with IreneClient(app.base_url, token=TOKEN, retries=6, concurrency=1, timeout_s=60) as c:
        while not stop.is_set():
            r = rng.random()
            op = "ingest" if r < 0.55 or len(mine) < batch else "delete" if r < 0.7 else "query"
            t0 = time.monotonic()
            ok = True
            if op == "ingest":
                ids = [f"{prefix}-{n + j}" for j in range(batch - 4)]
                n += len(ids)
                if mine:
                    ids += list(rng.choice(mine, size=4, replace=False))
                ids = list(dict.fromkeys(ids))
                texts = [random_text(rng) for _ in ids]
                try:
                    c.ingest(list(zip(ids, texts, strict=True)), batch_size=batch)
                    ledger.ack(ids, texts)
                except (IreneHTTPError, httpx.HTTPError):
                    ok = False
                    ledger.fail(ids)
                mine = list(dict.fromkeys(mine + ids))
            elif op == "delete":
                ids = list(rng.choice(mine, size=4, replace=False))
                try:
                    c.delete(ids)
                    ledger.ack(ids, [None] * len(ids))
                except (IreneHTTPError, httpx.HTTPError):
                    ok = False
                    ledger.fail(ids)
            else:
                try:
                    c.query([random_text(rng)], k=5)
                except (IreneHTTPError, httpx.HTTPError) as e:
                    ok = False
                    errors.append(f"query failed after retries: {e}")
            if rows is not None:
                rows.append((t0, op, time.monotonic() - t0, ok))
    return c.retried

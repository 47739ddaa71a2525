"""Millions of items over shard actors on one machine: build, memory, recall, latency, restart.

    python bench/scale_bench.py --sizes 1000000,10000000 --out bench/results

Per size, on one local Ray, ``--owners`` shard actors (IVF-PQ with an fp16 exact re-rank,
one FAISS shard each) behind the router, measured one step after the other:

1. **build**: clustered synthetic 384-d vectors (``SyntheticSource`` of
   ``bench/index_bench.py``, drawn chunk by chunk, so a smaller size is a prefix of a larger
   one), real string ids (``item-000000042``), a short text and one metadata field per item,
   written through the router's durable ``add`` (every actor logs its part of the batch,
   fsyncs, then applies it) in batches of ``--add-batch``; then one snapshot per actor.
2. **memory**: per actor its resident set (RSS) and ``ShardedIndex.memory()`` (FAISS codes
   and ids, fp16 copies, id maps, strings), per item.
3. **recall@10** against exact inner-product search over all vectors (computed chunk by chunk
   during the build). ``nprobe`` is swept on *validation* queries; the operating point is the
   smallest value whose validation recall reaches ``--target`` + ``--margin`` (0.95 + 0.01:
   the sampling error of a few hundred queries; choosing at exactly 0.95 on 200 queries gave
   0.944 on the test queries at 1M); the *test* queries, drawn separately, report recall and
   speed at it.
4. **latency**: one query per call through the router (a Ray call to every actor and the
   merge) from 1 client and from ``--clients`` client threads: p50 / p99 and QPS.
5. **restart**: every actor is killed and started again; the time until all of them answer
   (snapshot load + log replay), their peak RSS, and the test recall again (must be equal).
6. **the app** (``--app``): the Serve app (serve_bench's ``fast-actor`` settings: the README's
   fast mode with ``read_replica: false``, so the Ingress asks the shard actors) started over
   the restarted actors, with a bundle of the real
   MiniLM encoder and untrained classifiers (``bench/serve_bench.py``'s, built once under
   ``--out``: fine for timings, meaningless for accuracy); ``POST /v1/query`` p50 / p99 and
   QPS over HTTP at 1 and ``--clients`` clients (``serve_bench.http_query_suite``).

Writes ``OUT/scale.json`` and ``OUT/scale.md``. Needs disk for the logs and snapshots (~2.6 KB per item at
384-d) under ``--work`` (default: a temp dir, removed at the end).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from index_bench import SyntheticSource  # noqa: E402 -- bench/ is on sys.path
from results_io import write_report  # noqa: E402

CHUNK = 50_000  # rows per generated chunk (and per durable add unless --add-batch)


def item_id(i: int) -> str:
    return f"item-{i:09d}"


class TopK:
    """Running exact top-k of queries over database chunks (row numbers, scores)."""

    def __init__(self, q: np.ndarray, k: int) -> None:
        self.q, self.k = q, k
        self.scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        self.rows = np.full((len(q), k), -1, dtype=np.int64)

    def update(self, x: np.ndarray, lo: int) -> None:
        s = self.q @ x.T  # (m, chunk)
        kk = min(self.k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        all_s = np.concatenate([self.scores, np.take_along_axis(s, part, axis=1)], axis=1)
        all_r = np.concatenate([self.rows, part + lo], axis=1)
        best = np.argsort(-all_s, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(all_s, best, axis=1)
        self.rows = np.take_along_axis(all_r, best, axis=1)


def recall(got: np.ndarray, truth_iids: np.ndarray) -> float:
    """Mean |got ∩ true top-k| / k over queries (int64 ids)."""
    hits = [len(set(g.tolist()) & set(t.tolist())) for g, t in zip(got, truth_iids, strict=True)]
    return float(np.mean(hits)) / truth_iids.shape[1]


def latency(search, q: np.ndarray, clients: int, budget_s: float) -> dict:
    """p50 / p99 ms and QPS of 1-query searches from ``clients`` threads for ``budget_s``."""
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + budget_s

    def client(c: int) -> None:
        mine, i = [], c
        while time.perf_counter() < stop:
            t = time.perf_counter()
            search(q[i % len(q) : i % len(q) + 1])
            mine.append(time.perf_counter() - t)
            i += clients
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = 1000 * np.array(lat)
    return {
        "clients": clients,
        "queries": len(lat),
        "qps": len(lat) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def memory_report(sync, n: int) -> dict:
    mem = sync.memory()  # per actor, with its rss / peak_rss / private bytes
    total = {k: sum(m[k] for m in mem) for k in mem[0]}
    return {"per_actor": mem, "total": total, "per_item": {k: v / n for k, v in total.items()}}


def run_size(n: int, src, q_val, q_test, args, work: str) -> dict:
    import ray

    from irene.config import IndexConfig
    from irene.index.records import Records
    from irene.index.sharded import int_id
    from irene.ray.index import actors_for

    spec = {
        "kind": "ivfpq", "ivf_nlist": args.nlist, "pq_m": args.pq_m, "pq_nbits": 8,
        "rerank": args.rerank, "nprobe": 8, "use_gpu": False,
    }  # fmt: skip
    name = f"scale-{n}-{os.getpid()}"
    config = IndexConfig(
        uri=os.path.join(work, name), name=name, namespace="scale-bench", n_owners=args.owners,
        n_shards=1, spec=spec, num_cpus=0.1, snapshot_every=0,
    )  # fmt: skip
    dim = src.dim
    out: dict = {"n": n, "owners": args.owners, "spec": spec}
    shards = actors_for(config, dim)
    sync = shards.sync()
    q_all = np.concatenate([q_val, q_test])
    truth = TopK(q_all, 10)

    # 1. build
    t0, gen_s = time.perf_counter(), 0.0
    for c, lo in enumerate(range(0, n, CHUNK)):
        m = min(CHUNK, n - lo)
        g = time.perf_counter()
        x = src.sample(m, seed=args.seed * 1_000_003 + c)
        truth.update(x, lo)
        ids = [item_id(i) for i in range(lo, lo + m)]
        records = Records.of(
            [f"synthetic item {i}" for i in range(lo, lo + m)],
            [{"cat": i % 100} for i in range(lo, lo + m)],
        )
        gen_s += time.perf_counter() - g
        for s in range(0, m, args.add_batch):
            sync.add(ids[s : s + args.add_batch], x[s : s + args.add_batch], records.take(
                range(s, min(m, s + args.add_batch))))  # fmt: skip
        if c % 20 == 0:
            print(f"  built {lo + m:,} / {n:,} ({time.perf_counter() - t0:.0f} s)", flush=True)
    build_s = time.perf_counter() - t0 - gen_s
    assert sync.count() == n
    log_bytes = sum(f.stat().st_size for f in Path(config.uri).rglob("*") if f.is_file())
    t1 = time.perf_counter()
    for h in shards.handles:  # one after another: a snapshot holds a copy of the index
        ray.get(h.snapshot.remote())
    snap_s = time.perf_counter() - t1
    out["build"] = {
        "build_s": build_s, "items_per_s": n / build_s, "snapshot_s": snap_s,
        "data_generation_s": gen_s, "log_bytes": log_bytes,
        "disk_bytes": sum(f.stat().st_size for f in Path(config.uri).rglob("*") if f.is_file()),
    }  # fmt: skip
    print(json.dumps(out["build"]), flush=True)

    # 2. memory
    out["memory"] = memory_report(sync, n)
    print(json.dumps(out["memory"]["per_item"]), flush=True)

    # 3. recall: nprobe swept on validation queries, reported on test queries
    truth_iids = np.vectorize(lambda r: int_id(item_id(int(r))), otypes=[np.int64])(truth.rows)
    t_val, t_test = truth_iids[: len(q_val)], truth_iids[len(q_val) :]
    sweep, chosen = [], None
    for nprobe in [int(p) for p in args.nprobes.split(",")]:
        sync.set_search_knobs(nprobe)
        r = recall(sync.search(q_val, 10)[1], t_val)
        sweep.append({"nprobe": nprobe, "val_recall": r})
        print(f"  nprobe {nprobe}: validation recall@10 {r:.4f}", flush=True)
        if r >= args.target + args.margin:
            chosen = nprobe
            break
    if chosen is None:
        chosen = max(sweep, key=lambda s: s["val_recall"])["nprobe"]
    sync.set_search_knobs(chosen)
    test_recall = recall(sync.search(q_test, 10)[1], t_test)
    t = time.perf_counter()
    reps = 0
    while time.perf_counter() - t < args.budget_s:
        sync.search(q_test[:64], 10)
        reps += 1
    out["recall"] = {
        "sweep": sweep, "nprobe": chosen, "test_recall": test_recall,
        "qps_batch64": 64 * reps / (time.perf_counter() - t),
    }  # fmt: skip
    print(json.dumps(out["recall"]), flush=True)

    # 4. latency through the router
    search = lambda b: sync.search(b, 10)  # noqa: E731
    out["latency"] = [latency(search, q_test, c, args.budget_s) for c in (1, args.clients)]
    print(json.dumps(out["latency"]), flush=True)

    # 5. restart from the snapshots
    for h in shards.handles:
        ray.kill(h)
    time.sleep(1.0)
    t2 = time.perf_counter()
    shards = actors_for(config, dim)
    sync = shards.sync()
    count = sync.count()
    restore_s = time.perf_counter() - t2
    stats = sync.stats()
    sync.set_search_knobs(chosen)
    again = recall(sync.search(q_test, 10)[1], t_test)
    out["restart"] = {
        "restore_s": restore_s, "count": count, "test_recall": again,
        "actor_restore_s": [o["restore_s"] for o in stats["owners"]],
        "memory": memory_report(sync, n),
    }  # fmt: skip
    print(json.dumps(out["restart"]), flush=True)
    assert count == n and again == test_recall, out["restart"]
    if args.app:
        out["app"] = app_latency(config, args)
        print(json.dumps(out["app"]), flush=True)
    for h in shards.handles:
        ray.kill(h)
    shutil.rmtree(config.uri, ignore_errors=True)
    return out


def app_latency(config, args) -> dict:
    """Query latency over HTTP through the Serve app over the running shard actors."""
    import asyncio
    from dataclasses import asdict
    from types import SimpleNamespace

    import serve_bench  # bench/ is on sys.path
    from ray import serve

    from irene.net import free_local_port
    from serve_app.app import build_app

    bundle = os.path.join(args.out, "bundle-minilm-1000")
    if not serve_bench._loads(bundle):
        shutil.rmtree(bundle, ignore_errors=True)
        serve_bench.build_bundle(bundle, 1000)
    variant = serve_bench.SERVE_VARIANTS["fast-actor"]  # the README's fast mode, actor reads
    index = {**asdict(config), "read_replica": False, "shard_readers": False}
    app_args = serve_bench._merge(variant["args"], {
        "bundle": bundle, "index": index, "seed_index": False,
        "auth": {"token": serve_bench.TOKEN, "token_env": "IRENE_BENCH_UNSET_TOKEN"},
    })  # fmt: skip
    app_args["index"] = index  # exactly the running actors' settings
    port = free_local_port()
    load = SimpleNamespace(
        concurrency=[1, args.clients], duration_level_s=args.budget_s, warmup_s=3.0,
        level_warmup_s=2.0, max_requests=10**6,
    )  # fmt: skip
    t0 = time.perf_counter()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(app_args), name="irene-scale", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        serve_bench._wait_http(f"{url}/readyz", 300)
        startup = time.perf_counter() - t0
        res = asyncio.run(serve_bench.http_query_suite(url, load, serve_bench.query_texts()))
    finally:
        serve.shutdown()
    levels = [{"clients": c, **res[f"c{c}"]} for c in load.concurrency]
    return {"startup_s": startup, "levels": levels, "first_error": res.get("first_error")}


def markdown(report: dict) -> str:
    gb = 1 << 30
    out = [
        f"Scale bench ({report['started_at']}, {report['cpus']} cores, {report['dim']}-d, "
        f"{report['owners']} shard actors). Command: `{' '.join(report['argv'])}`",
        "",
        "| | " + " | ".join(f"{r['n']:,}" for r in report["rows"]) + " |",
        "|---|" + "---:|" * len(report["rows"]),
    ]

    def line(label: str, fn) -> None:
        out.append(f"| {label} | " + " | ".join(fn(r) for r in report["rows"]) + " |")

    def per_actor(get, key: str):
        return lambda r: ", ".join(f"{m[key] / gb:.2f}" for m in get(r)["per_actor"])

    build = lambda r: r["build"]  # noqa: E731
    line("build (durable add), s", lambda r: f"{build(r)['build_s']:,.0f}")
    line("build, items/s", lambda r: f"{build(r)['items_per_s']:,.0f}")
    line("snapshot (actors one after another), s", lambda r: f"{build(r)['snapshot_s']:,.0f}")
    line("disk: log before the snapshot, GiB", lambda r: f"{build(r)['log_bytes'] / gb:.1f}")
    line("disk: after the snapshot, GiB", lambda r: f"{build(r)['disk_bytes'] / gb:.1f}")
    phases = (
        ("after build", lambda r: r["memory"]),
        ("after restart", lambda r: r["restart"]["memory"]),
    )
    for when, get in phases:
        line(f"{when}: RSS per actor, GiB", per_actor(get, "rss"))
        line(f"{when}: private (USS) per actor, GiB", per_actor(get, "private"))
        line(f"{when}: peak RSS per actor, GiB", per_actor(get, "peak_rss"))
        for part in ("faiss", "fp16", "id_maps", "strings", "private"):
            line(f"{when}: {part}, B/item", lambda r, p=part, g=get: f"{g(r)['per_item'][p]:.1f}")
    line("nprobe (chosen on validation)", lambda r: str(r["recall"]["nprobe"]))
    line("recall@10 (test)", lambda r: f"{r['recall']['test_recall']:.3f}")
    line("QPS, batch 64", lambda r: f"{r['recall']['qps_batch64']:,.0f}")
    for i, label in ((0, "1 client"), (1, f"{report.get('clients', 16)} clients")):
        line(
            f"p50 / p99 ms, {label}",
            lambda r, i=i: f"{r['latency'][i]['p50_ms']:.1f} / {r['latency'][i]['p99_ms']:.1f}",
        )
        line(f"QPS, {label}", lambda r, i=i: f"{r['latency'][i]['qps']:,.0f}")
    line("restart: all actors answering, s", lambda r: f"{r['restart']['restore_s']:,.0f}")
    line("recall@10 after restart", lambda r: f"{r['restart']['test_recall']:.3f}")
    if all("app" in r for r in report["rows"]):
        for i in range(2):
            c = report["rows"][0]["app"]["levels"][i]["clients"]
            line(f"HTTP app: p50 / p99 ms ({c} client{'s' if c > 1 else ''})",
                 lambda r, i=i: "{p50_ms:.1f} / {p99_ms:.1f}".format(**r["app"]["levels"][i]))  # fmt: skip
            line(f"HTTP app: QPS ({c} client{'s' if c > 1 else ''})",
                 lambda r, i=i: f"{r['app']['levels'][i]['qps']:,.0f}")  # fmt: skip
    out += ["", f"Load average at the end: {report['load_average']}."]
    return "\n".join(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="1000000,10000000")
    p.add_argument("--owners", type=int, default=4)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--nlist", type=int, default=1024, help="IVF lists per shard actor")
    p.add_argument("--pq-m", type=int, default=48)
    p.add_argument("--rerank", type=int, default=10)
    p.add_argument("--nprobes", default="4,8,16,32,64,128")
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument(
        "--margin", type=float, default=0.01,
        help="the operating point needs validation recall >= target + margin (sampling error)",
    )  # fmt: skip
    p.add_argument("--queries", type=int, default=500, help="validation and test, each")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--add-batch", type=int, default=CHUNK)
    p.add_argument("--budget-s", type=float, default=10.0, help="per QPS / latency run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="where logs and snapshots go")
    p.add_argument("--app", action="store_true", help="also query through the Serve app")
    p.add_argument("--out", default="bench/results", help="directory of scale.json / scale.md")
    args = p.parse_args(argv)
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    src = SyntheticSource(args.dim, seed=args.seed)
    q_val = src.sample(args.queries, seed=10_000 + args.seed)
    q_test = src.sample(args.queries, seed=20_000 + args.seed)
    work = args.work or tempfile.mkdtemp(prefix="scale-bench-", dir="/tmp")
    os.makedirs(work, exist_ok=True)
    report = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": ["python", "bench/scale_bench.py", *(argv if argv is not None else sys.argv[1:])],
        "cpus": os.cpu_count(), "dim": args.dim, "owners": args.owners, "clients": args.clients,
        "data": src.description, "rows": [],
    }  # fmt: skip
    if args.app:  # Serve's proxy settings of the fast mode, read when Ray starts
        import serve_bench

        os.environ.update(serve_bench.SERVE_VARIANTS["fast-actor"]["env"])
    own_ray = not ray.is_initialized()  # a caller's Ray (e.g. a test session's) is reused
    if own_ray:
        ray.init(
            num_cpus=os.cpu_count() or 2, include_dashboard=False, namespace="scale-bench",
            _temp_dir=os.path.join(tempfile.gettempdir(), "scale-bench-ray"),
            log_to_driver=False, logging_level="WARNING",
        )  # fmt: skip
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            print(f"size {n:,}", flush=True)
            report["rows"].append(run_size(n, src, q_val, q_test, args, work))
            report["load_average"] = [round(v, 2) for v in os.getloadavg()]
            write_report(args.out, "scale", report, markdown(report))
    finally:
        if own_ray:
            ray.shutdown()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()

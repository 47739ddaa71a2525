"""The index in-process vs through 1 and 4 shard actors, side by side in one run.

    python bench/shard_bench.py --n 100000 --kinds flat,ivf --out bench/results

Same vectors (bench/index_bench.py's clustered synthetic 384-d data), same queries, one
after another on one local Ray with every core:

- ``direct``: an ``IndexActor`` object in this process (4 FAISS shards, the same durable
  log) -- no Ray;
- ``1 actor``: one ``IndexActor`` (4 FAISS shards inside, durable log) behind the router;
- ``4 actors``: four shard actors (1 FAISS shard each, own logs) behind the router: a query
  fans out to all four and the top-k are merged.

Reported: durable add throughput (batches of ``--add-batch`` through the log), search QPS
at batch 1 and batch 64, p50 latency at batch 1, and each ratio to ``direct``. On one
2-core machine the 4 actors share the same cores, so this measures the router's overhead
(a Ray call per owner and the merge); on a cluster each actor has its own node's cores and
memory, which is what lets the index grow past one machine (README: scaling model).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_io import write_report  # noqa: E402 -- bench/ is on sys.path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def _qps(search, q: np.ndarray, batch: int, budget_s: float) -> tuple[float, float]:
    """(queries/s, p50 ms per call) searching ``q`` in calls of ``batch`` rows."""
    search(q[:batch])  # warm-up
    lat, done, t0 = [], 0, time.perf_counter()
    while time.perf_counter() - t0 < budget_s and done < len(q):
        t = time.perf_counter()
        search(q[done : done + batch])
        lat.append(time.perf_counter() - t)
        done += batch
    return done / (time.perf_counter() - t0), 1000 * float(np.median(lat))


def run_kind(kind: str, x: np.ndarray, q: np.ndarray, args, tmp: str) -> list[dict]:
    import ray

    from irene.config import IndexConfig
    from irene.index.actor import IndexActor
    from irene.index.shard import IndexSpec
    from irene.ray.index import actors_for

    spec = IndexSpec(kind=kind, ivf_nlist=args.nlist, nprobe=args.nprobe, use_gpu=False)
    ids = [f"v{i}" for i in range(len(x))]
    rows = []

    def measure(name: str, add, search, count) -> None:
        t0 = time.perf_counter()
        for s in range(0, len(x), args.add_batch):
            add(ids[s : s + args.add_batch], x[s : s + args.add_batch])
        add_s = time.perf_counter() - t0
        assert count() == len(x), name
        q1, p50 = _qps(lambda b: search(b, 10), q, 1, args.budget_s)
        q64, _ = _qps(lambda b: search(b, 10), q, 64, args.budget_s)
        rows.append(
            {
                "kind": kind,
                "system": name,
                "add_per_s": len(x) / add_s,
                "qps_b1": q1,
                "p50_ms_b1": p50,
                "qps_b64": q64,
            }  # fmt: skip
        )
        print(json.dumps(rows[-1]), flush=True)

    direct = IndexActor.open(
        os.path.join(tmp, f"direct-{kind}"), x.shape[1], 4, spec.to_dict(), snapshot_every=0
    )
    measure("direct", direct.add, direct.search, direct.count)
    reference = direct.search(q[:64], 10)
    direct.close()
    for n_owners, inner in ((1, 4), (4, 1)):
        name = f"ix-{kind}-{n_owners}-{os.getpid()}"
        config = IndexConfig(
            uri=os.path.join(tmp, name), name=name, namespace="shard-bench", n_owners=n_owners,
            n_shards=inner, spec=spec.to_dict(), num_cpus=0.1, snapshot_every=0,
        )  # fmt: skip
        shards = actors_for(config, x.shape[1])
        handles, sync = shards.handles, shards.sync()
        try:
            measure(
                f"{n_owners} actor{'s' if n_owners > 1 else ''}", sync.add, sync.search, sync.count
            )
            if kind == "flat":  # exact search: the router returns exactly the direct answers
                got = sync.search(q[:64], 10)
                np.testing.assert_array_equal(got[1], reference[1])
        finally:
            for h in handles:
                ray.kill(h)
    base = rows[-3]
    for r in rows[-3:]:
        for key in ("add_per_s", "qps_b1", "qps_b64"):
            r[f"{key}_ratio"] = r[key] / base[key]
    return rows


def markdown(report: dict) -> str:
    out = [
        f"Shard actors bench ({report['started_at']}, {report['cpus']} cores, n={report['n']:,} "
        f"x {report['dim']}-d, {report['queries']} queries). Command: `{' '.join(report['argv'])}`",
        "",
        "| kind | system | durable add vec/s (ratio) | QPS b1 (ratio) | p50 ms b1 | QPS b64 (ratio) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        out.append(
            f"| {r['kind']} | {r['system']} | {r['add_per_s']:,.0f} ({r['add_per_s_ratio']:.2f}) | "
            f"{r['qps_b1']:,.0f} ({r['qps_b1_ratio']:.2f}) | {r['p50_ms_b1']:.2f} | "
            f"{r['qps_b64']:,.0f} ({r['qps_b64_ratio']:.2f}) |"
        )
    out += ["", f"Load average at the end: {report['load_average']}."]
    return "\n".join(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=640)
    p.add_argument("--kinds", default="flat,ivf")
    p.add_argument("--nlist", type=int, default=256)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--add-batch", type=int, default=2048)
    p.add_argument("--budget-s", type=float, default=4.0, help="per QPS measurement")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    import ray
    from index_bench import SyntheticSource

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    src = SyntheticSource(args.dim, seed=0)
    x, q = src.sample(args.n, seed=1), src.sample(args.queries, seed=2)
    tmp = tempfile.mkdtemp(prefix="shard-bench-", dir="/tmp")
    report = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": ["python", "bench/shard_bench.py", *(argv if argv is not None else sys.argv[1:])],
        "cpus": os.cpu_count(), "n": args.n, "dim": args.dim, "queries": args.queries, "rows": [],
    }  # fmt: skip
    own_ray = not ray.is_initialized()  # a caller's Ray (e.g. a test session's) is reused
    if own_ray:
        ray.init(
            num_cpus=os.cpu_count() or 2, include_dashboard=False, namespace="shard-bench",
            _temp_dir=os.path.join(tmp, "ray"), log_to_driver=False, logging_level="WARNING",
        )  # fmt: skip
    try:
        for kind in args.kinds.split(","):
            report["rows"] += run_kind(kind, x, q, args, tmp)
    finally:
        if own_ray:
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_average"] = [round(v, 2) for v in os.getloadavg()]
    write_report(args.out, "shards", report, markdown(report))
    return report


if __name__ == "__main__":
    main()

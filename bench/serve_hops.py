"""Where a lone query's time goes in the Serve app: latency per hop at one client.

    python bench/serve_hops.py --bundle runs/serve_probe/bundle-minilm-5000 --rounds 3 \\
        --seconds 6 --out runs/serve_hops

First in this process (1 torch/faiss thread): encoding one text alone, and the whole
in-process pipeline of ``bench/serve_bench.py`` (encode + search + lookup). Then the ``fast``
Serve variant of ``bench/serve_bench.py`` (HAProxy in front of Ingress replicas that serve
HTTP themselves) and, in ``--rounds`` interleaved rounds, one ``wrk`` connection for
``--seconds`` each against:

* the replica itself (Serve's direct-ingress port range starts at a free port): ``GET /healthz`` (the
  replica's HTTP stack with a trivial route) and ``POST /v1/query``;
* HAProxy, what a client calls: the same two.

Around each replica query phase the replica's ``/metrics`` stage sums give the mean time of
``encode_search`` (the route awaiting its answer from the batcher), and inside it the compute
thread's ``batch_encode``, ``copies_search`` and ``batch_lookup``. The report splits the
mean latency of a query through HAProxy into: the compute work (in the compute thread, or in
place for a lone query); the batcher and, for a batched query, the thread hop
(``encode_search`` minus that work); the replica's HTTP stack (replica query
minus ``encode_search``); HAProxy (HAProxy query minus replica query). Means, not p50s, so
that the parts add up. Writes ``OUT/serve_hops.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import serve_bench as sb  # noqa: E402 -- bench/ is on sys.path
from results_io import write_report  # noqa: E402
from wrk_load import run_wrk  # noqa: E402

from irene.net import free_local_port  # noqa: E402

STAGES = ("encode_search", "batch_encode", "copies_search", "batch_lookup")


def stage_sums(url: str) -> dict[str, tuple[float, float]]:
    """``{stage: (seconds, count)}`` of the replica's ``irene_stage_duration_seconds``."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[float]] = {s: [0.0, 0.0] for s in STAGES}
    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in fam.samples:
            stage = s.labels.get("stage")
            if stage in out and s.name.endswith("_sum"):
                out[stage][0] += s.value
            elif stage in out and s.name.endswith("_count"):
                out[stage][1] += s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_means_ms(before: dict, after: dict) -> dict[str, float | None]:
    """Mean ms per observation of each stage between two :func:`stage_sums`."""
    out = {}
    for s in STAGES:
        n = after[s][1] - before[s][1]
        out[s] = 1000 * (after[s][0] - before[s][0]) / n if n else None
    return out


def healthz(url: str, seconds: float) -> dict:
    """One wrk connection of ``GET /healthz``: wrk_load's totals."""
    return run_wrk(url, "/healthz", [""], 1, seconds, method="GET")


def make_suite(args, rounds: list):
    """The ``bench_serve`` suite: the interleaved rounds above, appended to ``rounds``."""

    def suite(proxy: str, _args, queries: list[str]) -> dict:
        bodies = [json.dumps({"text": t, "k": sb.K}) for t in queries]
        run_wrk(proxy, "/v1/query", bodies, 1, args.seconds)  # warm-up
        replica = f"http://127.0.0.1:{args.replica_port}"  # the first replica's port
        for r in range(args.rounds):
            row: dict = {"round": r}
            before = stage_sums(replica)
            row["replica_query"] = run_wrk(replica, "/v1/query", bodies, 1, args.seconds)
            row["stages_ms"] = stage_means_ms(before, stage_sums(replica))
            row["replica_healthz"] = healthz(replica, args.seconds)
            row["proxy_query"] = run_wrk(proxy, "/v1/query", bodies, 1, args.seconds)
            row["proxy_healthz"] = healthz(proxy, args.seconds)
            rounds.append(row)
            print(json.dumps(row), flush=True)
        return {"replica": replica}

    return suite


def inprocess(bundle: str, queries: list[str], seconds: float) -> dict:
    """Mean / p50 ms of encoding one text, and of the whole in-process pipeline."""
    from irene.device import set_threads

    set_threads(1)
    out = {}
    with sb.inprocess_pipeline(bundle, queries) as (b, _, query):
        for name, fn in (
            ("encode", lambda i: b.encoder.encode([queries[i % len(queries)]])),
            ("pipeline", query),
        ):
            sb._timed_loop(fn, 2.0, 10**9)  # warm-up
            lat, _ = sb._timed_loop(fn, seconds, 10**9)
            out[name] = {
                "mean_ms": 1000 * float(np.mean(lat)),
                "p50_ms": 1000 * float(np.median(lat)),
            }
    return out


def breakdown(rows: list[dict]) -> dict:
    """Per round: the mean latency through HAProxy split into hops (module docstring)."""
    out = []
    for r in rows:
        st = r["stages_ms"]
        compute = sum(st[s] or 0.0 for s in ("batch_encode", "copies_search", "batch_lookup"))
        out.append(
            {
                "compute (encode, search, lookup)": compute,
                "batcher (+ thread hop when batched)": st["encode_search"] - compute,
                "replica HTTP stack": r["replica_query"]["mean_ms"] - st["encode_search"],
                "HAProxy": r["proxy_query"]["mean_ms"] - r["replica_query"]["mean_ms"],
                "total (HAProxy query)": r["proxy_query"]["mean_ms"],
            }
        )
    return {k: [b[k] for b in out] for k in out[0]} if out else {}


def _span(v: list[float]) -> str:
    return f"{np.mean(v):.2f} ({min(v):.2f}-{max(v):.2f})"


def markdown(result: dict) -> str:
    inp, rows = result["inprocess"], result["rounds"]
    lines = [
        "# Serve: latency per hop at one client",
        "",
        f"Command: `{result['command']}`  ",
        f"Wall time {result['wall_s']:.0f} s; {len(rows)} interleaved rounds of "
        f"{result['config']['seconds']:g} s per phase; one wrk connection; means in ms, "
        "mean (min-max) over the rounds.",
        "",
        f"In-process (1 thread): encode one text {inp['encode']['mean_ms']:.2f} "
        f"(p50 {inp['encode']['p50_ms']:.2f}); encode + search + lookup "
        f"{inp['pipeline']['mean_ms']:.2f} (p50 {inp['pipeline']['p50_ms']:.2f}).",
        "",
        "| phase | mean ms | p50 ms |",
        "|---|---:|---:|",
    ]
    for name in ("replica_healthz", "proxy_healthz", "replica_query", "proxy_query"):
        means = [r[name]["mean_ms"] for r in rows]
        p50s = [r[name]["p50_ms"] for r in rows]
        lines.append(f"| {name.replace('_', ' ')} | {_span(means)} | {_span(p50s)} |")
    for s in STAGES:
        v = [r["stages_ms"][s] for r in rows if r["stages_ms"][s] is not None]
        if v:
            lines.append(f"| replica stage `{s}` | {_span(v)} | |")
    lines += ["", "| hop (of a query through HAProxy) | mean ms |", "|---|---:|"]
    for k, v in result["breakdown"].items():
        lines.append(f"| {k} | {_span(v)} |")
    ratio = [r["proxy_query"]["p50_ms"] / inp["pipeline"]["p50_ms"] for r in rows]
    lines += ["", f"p50 through HAProxy / in-process pipeline p50: {_span(ratio)}."]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="runs/serve_bench/bundle-minilm-5000")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--out", default="runs/serve_hops")
    own, rest = p.parse_known_args(argv)
    # serve_bench's own arguments (bundle building, threads) with the fast variant
    bench = sb.parse_args(["--bundle", own.bundle, "--variants", "fast", *rest])
    for k, v in vars(own).items():
        setattr(bench, k, v)
    return bench


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    # Ingress replicas serve HTTP on the first free port from here (one replica at 1 client)
    args.replica_port = free_local_port()
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(args.replica_port)
    os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(args.replica_port + 100)
    bundle = sb.ensure_bundle(args)
    queries = sb.query_texts()
    result = {
        "command": "python bench/serve_hops.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {"rounds": args.rounds, "seconds": args.seconds, "bundle": bundle},
        "inprocess": inprocess(bundle, queries, args.seconds),
    }
    rounds: list = []
    serve = sb.bench_serve(bundle, args, "fast", queries, [], suite=make_suite(args, rounds))
    result.update(
        rounds=rounds,
        replica=serve["query"]["replica"],
        breakdown=breakdown(rounds),
        wall_s=time.perf_counter() - t0,
    )
    write_report(args.out, "serve_hops", result, markdown(result))
    return result


if __name__ == "__main__":
    main()

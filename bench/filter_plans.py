"""The two plans of a filtered search on one shard, side by side: where the cost model of
``Shard.plan`` comes from, and what the selector plan's widened search recalls.

    python bench/filter_plans.py --n 250000 --dim 384 --kinds ivf,ivfpq-rerank,flat \\
        --queries 40 --seed 0 --out runs/filter_plans

For each index kind, one ``Shard`` of ``--n`` clustered vectors (``bench/index_bench.py``'s
``SyntheticSource``) with random int64 ids; for each selectivity, every query gets its own
random subset of the ids (sorted, as ``ShardedIndex`` passes them) and runs both plans --
``exact`` (gather and score the subset's vectors) and ``selector`` (the index's own search with
an ``IDSelectorBatch`` of the subset; IVF with ``Shard.filter_nprobe`` lists) -- forced in
turn, with the shard's gather cache emptied before each call (a filter not seen before).
Columns: single-query p50 of each plan, the plan ``Shard.plan`` picks with its real cost
model, whether that is the faster one, and the selector plan's recall@10 against the exact
plan's answer (the true filtered top-10). Writes ``OUT/filter_plans.{md,json}``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import faiss  # faiss before anything that may pull in torch
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from index_bench import SyntheticSource  # noqa: E402 -- bench/ is on sys.path
from results_io import write_report  # noqa: E402

import irene.index.shard as shard_mod  # noqa: E402
from irene.index.shard import IndexSpec, Shard  # noqa: E402

SPECS = {
    "flat": {"kind": "flat"},
    "ivf": {"kind": "ivf"},
    "ivfpq-rerank": {"kind": "ivfpq", "rerank": 10},
    "hnsw": {"kind": "hnsw"},
}
FRACTIONS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def forced(shard: Shard, plan: str, q: np.ndarray, k: int, subset: np.ndarray) -> tuple:
    """(seconds, ids) of one search with ``plan`` forced (gathering free or unaffordable)."""
    saved = dict(shard_mod.GATHER_NS)
    shard_mod.GATHER_NS.update({key: 0 if plan == "exact" else 10**12 for key in saved})
    try:
        shard.gather_cache.clear()
        t0 = time.perf_counter()
        _, ids = shard.search(q, k, subset)
        return time.perf_counter() - t0, ids[0]
    finally:
        shard_mod.GATHER_NS.update(saved)


def run_kind(kind: str, x, ids, q, args) -> list[dict]:
    shard = Shard(x.shape[1], IndexSpec(**SPECS[kind], use_gpu=False))
    t0 = time.perf_counter()
    shard.add(ids, x)
    print(f"{kind}: built in {time.perf_counter() - t0:.1f} s", flush=True)
    rng = np.random.default_rng(args.seed + 7)
    unf = []
    for i in range(len(q)):
        t0 = time.perf_counter()
        shard.search(q[i : i + 1], args.k)
        unf.append(time.perf_counter() - t0)
    rows = [{"kind": kind, "fraction": 1.0, "unfiltered_p50_ms": 1000 * float(np.median(unf))}]
    for frac in args.fractions:
        n_match = max(1, round(frac * len(ids)))
        lat = {"exact": [], "selector": []}
        recall = []
        for i in range(len(q)):
            subset = np.sort(rng.choice(ids, n_match, replace=False))
            got = {}
            for plan in ("exact", "selector"):
                s, got[plan] = forced(shard, plan, q[i : i + 1], args.k, subset)
                lat[plan].append(s)
            truth = set(got["exact"][got["exact"] >= 0].tolist())
            recall.append(len(truth & set(got["selector"].tolist())) / max(len(truth), 1))
        p50 = {p: 1000 * float(np.median(v)) for p, v in lat.items()}
        picked = shard.plan(n_match)
        knob = None
        if kind in ("ivf", "ivfpq-rerank"):
            knob = f"nprobe {shard.filter_nprobe(n_match / len(ids))}"
        elif kind == "hnsw":
            knob = f"efSearch {shard.filter_ef(args.k, n_match / len(ids))}"
        rows.append(
            {
                "kind": kind,
                "fraction": frac,
                "n_match": n_match,
                "exact_p50_ms": p50["exact"],
                "selector_p50_ms": p50["selector"],
                "selector_knob": knob,
                "picked": picked,
                "picked_faster": p50[picked] <= min(p50.values()),
                "selector_recall": float(np.mean(recall)),
            }
        )
        print(rows[-1], flush=True)
    return rows


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"# Filtered search plans on one shard of {cfg['n']:,} x {cfg['dim']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Wall time {result['wall_s']:.0f} s on {result['machine']}; {cfg['queries']} "
        f"queries per selectivity, each with its own random subset; gather cache emptied "
        f"before every call; IVF selector plan: {cfg['nprobe_factor']:g} x nprobe / "
        "sqrt(selectivity) lists. `picked` = `Shard.plan` with its cost model; `selector recall@"
        f"{cfg['k']}` = overlap of the selector plan's answer with the exact plan's.",
        "",
        "| kind | selectivity | matches | exact p50 ms | selector p50 ms | selector knob | "
        f"picked | picked the faster | selector recall@{cfg['k']} |",
        "|---|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for r in result["rows"]:
        if r["fraction"] == 1.0:
            lines.append(f"| {r['kind']} | unfiltered | | {r['unfiltered_p50_ms']:.3f} | | | | | |")
            continue
        lines.append(
            f"| {r['kind']} | {100 * r['fraction']:g}% | {r['n_match']:,} | "
            f"{r['exact_p50_ms']:.3f} | {r['selector_p50_ms']:.3f} | {r['selector_knob'] or ''} "
            f"| {r['picked']} | {'yes' if r['picked_faster'] else '**no**'} | "
            f"{r['selector_recall']:.3f} |"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=250_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--kinds", default="ivf,ivfpq-rerank,flat")
    p.add_argument("--fractions", default=",".join(str(f) for f in FRACTIONS))
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--nprobe-factor",
        type=float,
        default=None,
        help="override FILTER_NPROBE_FACTOR (IVF selector plan: factor * nprobe / sqrt(s) lists)",
    )
    p.add_argument("--out", default="runs/filter_plans")
    args = p.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(args.kinds) - set(SPECS)
    if unknown:
        p.error(f"--kinds: unknown {sorted(unknown)}; choose from {sorted(SPECS)}")
    args.fractions = [float(f) for f in args.fractions.split(",") if f]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.nprobe_factor is not None:
        shard_mod.FILTER_NPROBE_FACTOR = args.nprobe_factor
    args.nprobe_factor = shard_mod.FILTER_NPROBE_FACTOR
    t_start = time.perf_counter()
    source = SyntheticSource(args.dim, args.seed)
    x = source.sample(args.n, args.seed + 2)
    q = source.sample(args.queries, args.seed + 1)
    ids = np.random.default_rng(args.seed + 3).choice(2**40, args.n, replace=False)
    rows = []
    for kind in args.kinds:
        rows += run_kind(kind, x, ids.astype(np.int64), q, args)
    result = {
        "command": "python bench/filter_plans.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": f"{platform.machine()} with {faiss.omp_get_max_threads()} OpenMP threads",
        "wall_s": time.perf_counter() - t_start,
        "rows": rows,
    }
    write_report(args.out, "filter_plans", result, markdown(result))
    return result


if __name__ == "__main__":
    main()

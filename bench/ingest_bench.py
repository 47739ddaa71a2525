"""Bulk ingest throughput vs encoding alone, side by side in one run on the same texts.

    python bench/ingest_bench.py --bundle runs/bundle --items 2000 --out bench/results
    python bench/ingest_bench.py --bundle B --write-items data/items100k.tsv --items 100000

Measured one after another on the same ``--items`` texts (WordNet synsets as "lemma, lemma:
gloss", nouns then verbs, adjectives and adverbs: ~117k texts in wordnet-base):

- ``encode_only``: the ingest's own Encode stage in this process (bundle encoder, same batch
  size), nothing else -- the compute limit of an ingest here; warmed up with two batches, run
  before and again after ``local``, the faster of the two is the baseline (a first run alone,
  warmed up with one text, was up to 25 % slower than the in-process ingest right after it;
  interleaved, the two are equal within 1 %);
- ``local``: ``irene ingest`` in-process (skip -> encode -> generate -> durable writes into
  ``--owners`` shard owners);
- ``ray``: the Ray Data job (``pipelines.ingest``) into ``--owners`` shard actors on a local
  Ray with every core; reported overall and after its first written batch (Ray Data planning
  and actor start-up are a fixed cost of ~20 s here).

The ratio ``items/s / encode-only texts/s`` is the issue's target (>= 0.8: generation, index
writes and logging cost under 25 % on top of encoding); the share of time per stage comes
from the stages' own timers. Writes JSON + Markdown under ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
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

log = logging.getLogger("ingest_bench")
POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


def synset_text(line: str) -> tuple[str, str] | None:
    """(offset, "lemma, lemma: gloss") of a WordNet data.* line (any part of speech)."""
    if line.startswith("  ") or " | " not in line:
        return None
    head, gloss = line.split(" | ", 1)
    f = head.split()
    n_words = int(f[3], 16)
    words = [f[4 + 2 * i].replace("_", " ") for i in range(n_words)]
    return f[0], f"{', '.join(words)}: {gloss.strip()}"


def wordnet_items(n: int, wordnet_dir: str = "/usr/share/wordnet") -> tuple[list, list]:
    """Up to ``n`` (id, text) items from WordNet synsets (every part of speech)."""
    ids, texts = [], []
    for name in POS_FILES:
        path = os.path.join(wordnet_dir, name)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                parsed = synset_text(line)
                if parsed is None:
                    continue
                ids.append(f"wn:{name[5:]}:{parsed[0]}")
                texts.append(parsed[1][:300])
                if len(ids) == n:
                    return ids, texts
    if len(ids) < n:
        raise SystemExit(f"only {len(ids)} WordNet synsets; asked for {n}")
    return ids, texts


def write_items(path: str, ids: list, texts: list) -> str:
    from irene.ingest import write_tsv

    return write_tsv(path, list(zip(ids, texts, strict=True)))


def bench_encode_only(bundle: str, texts: list[str], batch_size: int) -> dict:
    from irene.ingest import Encode

    enc = Encode(bundle)
    warm = np.asarray(texts[: 2 * batch_size], object)  # warm-up: two full batches
    for s in range(0, len(warm), batch_size):
        enc({"id": warm[s : s + batch_size], "text": warm[s : s + batch_size]})
    t0 = time.perf_counter()
    for s in range(0, len(texts), batch_size):
        chunk = texts[s : s + batch_size]
        enc({"id": np.asarray(chunk, object), "text": np.asarray(chunk, object)})
    sec = time.perf_counter() - t0
    return {"seconds": round(sec, 3), "items_per_s": round(len(texts) / sec, 2)}


def _cfg(bundle: str, items: str, index: str, executor: str, args, name: str):
    from irene.config import load_config

    return load_config(
        None,
        [f"ingest.batch_size={args.batch_size}"],
        bundle=bundle,
        executor=executor,
        ingest={
            "items": items,
            "index": {
                "uri": index,
                "name": name,
                "namespace": "irene-ingest-bench",
                "n_owners": args.owners,
                "n_shards": 2,
                "num_cpus": 0.1,
                "snapshot_every": 0,
            },
        },
    )


def bench_local(bundle: str, items: str, tmp: str, args) -> dict:
    from irene.ingest import ingest_local

    cfg = _cfg(bundle, items, os.path.join(tmp, "local-index"), "local", args, "unused")
    return ingest_local(cfg, show_progress=not args.no_progress).to_dict()


def bench_ray(bundle: str, items: str, tmp: str, args) -> dict:
    import ray

    from irene.index.router import owner_name
    from irene.ray.ingest import ingest_ray

    name = f"bench-{os.getpid()}"
    cfg = _cfg(bundle, items, os.path.join(tmp, "ray-index"), "ray", args, name)
    ray.init(
        num_cpus=os.cpu_count() or 2,
        include_dashboard=False,
        _temp_dir=os.path.join(tmp, "ray"),
        log_to_driver=False,
        logging_level="WARNING",
    )
    try:
        rep = ingest_ray(cfg, show_progress=not args.no_progress).to_dict()
    finally:
        for i in range(args.owners):
            try:
                ray.kill(ray.get_actor(owner_name(name, i, args.owners), "irene-ingest-bench"))
            except ValueError:
                pass
        ray.shutdown()
    return rep


def markdown(report: dict) -> str:
    enc = report["encode_only"]["items_per_s"]
    rows = [
        "| run | items | seconds | items/s | ratio to encode-only | encode | generate | write | skip |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| encode_only (faster of {report['encode_only']['runs_items_per_s']} items/s, run "
        f"before and after local) | {report['items']} | {report['encode_only']['seconds']} | {enc} | "
        "1.00 | 100 % | - | - | - |",
    ]
    for name in ("local", "ray"):
        r = report.get(name)
        if not r:
            continue
        share = r["stage_share"]
        pct = {k: f"{100 * v:.1f} %" for k, v in share.items()}
        rows.append(
            f"| {name} | {r['written']} | {r['seconds']} | {r['items_per_s']} | "
            f"{r['items_per_s'] / enc:.2f} | {pct['encode']} | {pct['generate']} | "
            f"{pct['write']} | {pct['skip']} |"
        )
        steady = r["items_per_s_after_first_batch"]
        rows.append(
            f"| {name}, after its first batch ({r['first_batch_s']} s: start-up + 1 batch) | "
            f"{r['written'] - report['batch_size']} | - | "
            + (
                f"{steady} | {steady / enc:.2f} | | | | |"
                if steady
                else "- (the rest arrived with it) | - | | | | |"
            )
        )
    return "\n".join(
        [
            f"Ingest bench ({report['started_at']}, {report['cpus']} cores, bundle "
            f"`{report['bundle']}`, {report['items']} WordNet texts, batch "
            f"{report['batch_size']}, {report['owners']} shard owners). Command: "
            f"`{' '.join(report['argv'])}`",
            "",
            *rows,
            "",
            "Stage shares are of the summed stage timers (ray: summed over parallel actors). "
            "`write` = one durable upsert per batch through the router (each shard's log "
            "append + fsync, FAISS add, read replicas).",
        ]
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--owners", type=int, default=4, help="shard owners (actors) of the index")
    p.add_argument("--runs", default="local,ray")
    p.add_argument("--write-items", help="also keep the items file here (TSV)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ids, texts = wordnet_items(args.items)
    tmp = tempfile.mkdtemp(prefix="ingest-bench-", dir="/tmp")
    items = write_items(args.write_items or os.path.join(tmp, "items.tsv"), ids, texts)
    report = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": ["python", "bench/ingest_bench.py", *(argv if argv is not None else sys.argv[1:])],
        "cpus": os.cpu_count(),
        "bundle": args.bundle,
        "items": len(ids),
        "batch_size": args.batch_size,
        "owners": args.owners,
    }
    try:
        first = bench_encode_only(args.bundle, texts, args.batch_size)
        log.info("encode only (first): %s", first)
        runs = args.runs.split(",")
        if "local" in runs:
            report["local"] = bench_local(args.bundle, items, tmp, args)
            log.info("local: %s", report["local"])
        last = bench_encode_only(args.bundle, texts, args.batch_size)
        log.info("encode only (again): %s", last)
        if "ray" in runs:
            report["ray"] = bench_ray(args.bundle, items, tmp, args)
            log.info("ray: %s", report["ray"])
        # the baseline: the faster of the runs before and after the in-process ingest (machine
        # drift and warm-up would otherwise flatter the ratios)
        report["encode_only"] = {
            **max(first, last, key=lambda r: r["items_per_s"]),
            "runs_items_per_s": [first["items_per_s"], last["items_per_s"]],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_average"] = os.getloadavg()
    write_report(args.out, f"ingest-{len(ids)}", report, markdown(report))
    return report


if __name__ == "__main__":
    main()

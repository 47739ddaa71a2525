"""Serve a production bundle, query it over HTTP, add new items, and check the answers.

The second half of ``make demo`` (the first is ``irene train``, the Ray pipelines):

    python -m pipelines.demo data/wordnet --bundle runs/demo/bundle --work-dir runs/demo/work

1. starts a local Ray and Ray Serve on 127.0.0.1 with the app of ``serve_app/configs/local.yaml``
   (its args and deployment options) on a fresh index, which the app seeds with every catalogue
   item of the bundle (trained and generated classifiers, with id, text and metadata);
2. ``POST /v1/query`` a seeded sample of the held-out queries (``eval_interactions``), scores
   the HTTP rankings with the benchmark's metric code and compares them with the same queries
   ranked in-process over the bundle's vectors: they must agree within ``--tolerance`` points,
   else exit code 1; a few answers are printed with their ids, text and metadata;
3. adds the items of ``DATA/new_items.jsonl`` (items that arrive after training, with
   metadata) through the bulk Ray Data job (``--ingest bulk``) or ``POST /v1/items``, reads one
   back and checks how often a new item is in the top 10 of a query with its own text;
4. shuts Serve, the index actors and Ray down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import sys
import time
import uuid
from pathlib import Path

log = logging.getLogger("irene.demo")
DEFAULT_SERVE_CONFIG = Path(__file__).resolve().parent.parent / "serve_app/configs/local.yaml"
NEW_ITEMS = "new_items.jsonl"
K = 10


def serve_config(path: str) -> tuple[dict, dict]:
    """(app args, deployment options by name) of the first application in a Serve YAML."""
    import yaml

    with open(path) as f:
        app = yaml.safe_load(f)["applications"][0]
    opts = {
        d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments", [])
    }
    return dict(app.get("args") or {}), opts


def rankings(hits: list, position: dict[str, int], k: int):
    """(n, k) catalogue positions of HTTP hits (ids not in the catalogue: -1), padded -1."""
    import numpy as np

    pred = np.full((len(hits), k), -1, dtype=np.int64)
    for r, row in enumerate(hits):
        got = [position.get(h["id"], -1) for h in row[:k]]
        pred[r, : len(got)] = got
    return pred


def in_process(bundle: str, work_dir: str, position: dict[str, int], rows, k: int):
    """The same queries ranked in this process over every vector the bundle seeds an index
    with (prepare's query embeddings, the benchmark's ranking loop)."""
    import numpy as np

    from irene import io
    from irene.bundle import iter_index_items
    from irene.eval.protocol import rank
    from irene.train import artifacts

    parts = list(iter_index_items(bundle))
    order = np.array([position[i] for ids, _, _ in parts for i in ids])
    vectors = np.concatenate([v for _, v, _ in parts])[np.argsort(order)]
    q_rows, q_emb = artifacts.read_embeddings(io.join(work_dir, artifacts.QUERIES_TST))
    where = {int(r): i for i, r in enumerate(q_rows)}
    pred, _ = rank(q_emb[[where[int(r)] for r in rows]], vectors, k)
    return pred


def run(
    data_dir: str,
    bundle: str,
    work_dir: str,
    out_dir: str,
    config_path: str = str(DEFAULT_SERVE_CONFIG),
    port: int = 8000,
    tolerance: float = 0.1,
    concurrency: int = 4,
    ingest: str = "http",
    n_queries: int = 2000,
    seed: int = 0,
) -> dict:
    import numpy as np
    import ray
    from ray import serve

    from irene import io
    from irene.bundle import read_manifest
    from irene.client import IreneClient
    from irene.config import CatalogueConfig, EvalConfig
    from irene.data.production import read_training_data
    from irene.eval.metrics import evaluate, inverse_propensity
    from irene.eval.protocol import EVAL_KS, REPORT_METRICS
    from serve_app.app import build_app

    data = read_training_data(data_dir, CatalogueConfig())
    ds, ids = data.ds, data.ids
    position = {s: i for i, s in enumerate(ids)}
    manifest = read_manifest(bundle)
    Y = ds.tst_X_Y
    with_pos = np.flatnonzero(np.diff(Y.indptr) > 0)
    if not len(with_pos):
        raise RuntimeError(f"{data_dir} has no held-out queries (eval_interactions) to check")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(with_pos, min(n_queries, len(with_pos)), replace=False))
    inv_prop = inverse_propensity(ds.trn_X_Y, EvalConfig().psp_a, EvalConfig().psp_b)
    expected = evaluate(in_process(bundle, work_dir, position, rows, K), Y[rows], inv_prop, EVAL_KS)
    new_uri = io.join(data_dir, NEW_ITEMS)
    new_items = []
    if io.exists(new_uri):
        new_items = [json.loads(line) for line in io.read_text(new_uri).splitlines() if line]

    args, deployment_options = serve_config(config_path)
    index_dir = os.path.join(out_dir, "index")
    shutil.rmtree(index_dir, ignore_errors=True)
    token = secrets.token_urlsafe(24)
    index_name = f"irene-demo-{uuid.uuid4().hex[:8]}"
    args.update(
        bundle=bundle,
        seed_index=True,
        index={**args.get("index", {}), "name": index_name, "uri": index_dir},
        auth={**args.get("auth", {}), "token": token, "token_env": "IRENE_DEMO_UNUSED"},
        deployment_options=deployment_options,
    )
    namespace = args["index"].get("namespace", "irene")
    owns_ray = not ray.is_initialized()  # tests bring their own Ray
    if owns_ray:
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, namespace="irene-demo")
    report: dict = {"bundle_version": manifest.get("version")}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        t0 = time.perf_counter()
        serve.run(build_app(args), name="irene", route_prefix="/")
        with IreneClient(f"http://127.0.0.1:{port}", token, concurrency=concurrency) as client:
            client.wait_ready()
            report["startup_s"] = round(time.perf_counter() - t0, 1)
            count = client.count()
            if count != len(ids):
                raise RuntimeError(f"the index holds {count} items, the catalogue {len(ids)}")
            report["seeded_items"] = count

            texts = [ds.tst_X[i] for i in rows]
            t0 = time.perf_counter()
            hits = client.query(texts, K)
            query_s = time.perf_counter() - t0
            report["query"] = {"queries": len(texts), "k": K}
            report["query"]["queries_per_s"] = round(len(texts) / query_s, 1)
            log.info("ran %d held-out queries over HTTP in %.1fs", len(texts), query_s)
            report["examples"] = [
                {"query": t, "hits": h}
                for t, h in zip(
                    texts[:3], client.query(texts[:3], 3, with_payload=True), strict=True
                )
            ]
            if new_items:
                report["new_items"] = add_new_items(
                    client, new_items, new_uri, ingest, bundle, args, index_dir, count
                )
    finally:
        serve.shutdown()
        from irene.index.router import owner_name

        n_owners = args["index"].get("n_owners", 1)
        for i in range(n_owners):
            try:
                ray.kill(ray.get_actor(owner_name(index_name, i, n_owners), namespace=namespace))
            except ValueError:
                pass
        if owns_ray:
            ray.shutdown()

    got = evaluate(rankings(hits, position, K), Y[rows], inv_prop, EVAL_KS)
    diffs = {m: round(got[m] - expected[m], 4) for m in REPORT_METRICS}
    arms = manifest["metrics"].get("eval", {}).get("arms", {})
    report.update(
        held_out_http=got,
        held_out_in_process=expected,
        in_process_arms={a: m["full"] for a, m in arms.items()},
        diff=diffs,
        max_abs_diff=max(abs(d) for d in diffs.values()),
        tolerance=tolerance,
    )
    io.makedirs(out_dir)
    io.write_text(io.join(out_dir, "http_metrics.json"), json.dumps(report, indent=2))
    return report


def add_new_items(client, items, uri, via, bundle, args, index_dir, before: int) -> dict:
    """Ingest ``items`` (dicts with id, text, metadata), check the index count, read the first
    back, and query each of up to 200 with its own text."""
    t0 = time.perf_counter()
    if via == "bulk":  # the Ray Data job, into the running app's shard actors
        n_done = bulk_ingest(uri, bundle, args, index_dir)
    else:
        n_done = len(client.ingest(items))
    seconds = time.perf_counter() - t0
    count = client.count()
    if n_done != len(items) or count != before + len(items):
        raise RuntimeError(f"ingested {n_done} of {len(items)}; the index holds {count}")
    first = client.fetch([items[0]["id"]])[0]
    if first["text"] != items[0]["text"] or first["metadata"] != items[0].get("metadata", {}):
        raise RuntimeError(f"item {items[0]['id']} came back as {first}")
    sample = items[:200]
    hits = client.query([it["text"] for it in sample], K)
    found = sum(it["id"] in {h["id"] for h in row} for it, row in zip(sample, hits, strict=True))
    return {
        "items": len(items),
        "via": via,
        "seconds": round(seconds, 2),
        "items_per_s": round(len(items) / seconds, 1),
        "read_back": first,
        "own_text_in_top10": f"{found}/{len(sample)}",
    }


def bulk_ingest(path: str, bundle: str, args: dict, index_dir: str) -> int:
    """The items file through ``irene.ray.ingest`` (Ray Data) into the app's index; rows written."""
    from irene.config import load_config
    from irene.ray.ingest import ingest_ray

    ix = args["index"]
    keys = ("name", "namespace", "n_owners", "n_shards", "spec", "resources")
    cfg = load_config(
        None,
        bundle=bundle,
        executor="ray",
        ingest={"items": path, "index": {**{k: ix[k] for k in keys if k in ix}, "uri": index_dir}},
    )
    return ingest_ray(cfg).written


def table(report: dict) -> str:
    from irene.eval.protocol import REPORT_METRICS

    q = report["query"]
    lines = [
        f"bundle {report['bundle_version']}: {report['seeded_items']} catalogue items seeded",
        f"{q['queries']} held-out queries over HTTP at {q['queries_per_s']} queries/s (k={q['k']})",
        f"{'metric':<8} {'HTTP':>8} {'in-proc':>8} {'diff':>8}",
    ]
    for m in REPORT_METRICS:
        h, p = report["held_out_http"][m], report["held_out_in_process"][m]
        lines.append(f"{m:<8} {h:8.2f} {p:8.2f} {h - p:+8.3f}")
    if report["in_process_arms"]:
        lines += ["", "every held-out query, in-process (bundle manifest), full ranking"]
        lines.append(f"{'arm':<20} {'P@1':>7} {'R@10':>7}")
        for arm, m in report["in_process_arms"].items():
            lines.append(f"{arm:<20} {m['P@1']:7.2f} {m['R@10']:7.2f}")
    lines += ["", "answers carry the catalogue's ids, text and metadata:"]
    for ex in report["examples"]:
        lines.append(f"  query: {ex['query'][:80]}")
        for h in ex["hits"]:
            meta = json.dumps(h.get("metadata", {}))[:70]
            lines.append(
                f"    {h['score']:.3f} {h['id']:<24} {h['source']:<9} {h.get('text', '')[:40]!r} {meta}"
            )
    new = report.get("new_items")
    if new:
        lines += [
            "",
            f"new items ({new['via']}): {new['items']} at {new['items_per_s']} items/s; "
            f"own text in the top {K}: {new['own_text_in_top10']}",
            f"  read back: {json.dumps(new['read_back'])[:150]}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n")[0])
    p.add_argument("data_dir")
    p.add_argument("--bundle", required=True)
    p.add_argument("--work-dir", required=True, help="the training run's artifacts")
    p.add_argument("--out", default="runs/demo", help="index + http_metrics.json go here")
    p.add_argument("--serve-config", default=str(DEFAULT_SERVE_CONFIG))
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tolerance", type=float, default=0.1, help="max |HTTP - in-process| points")
    p.add_argument("--concurrency", type=int, default=4, help="parallel HTTP requests")
    p.add_argument("--queries", type=int, default=2000, help="held-out queries sent over HTTP")
    p.add_argument(
        "--ingest",
        choices=("http", "bulk"),
        default="http",
        help="new items via POST /v1/items, or the bulk Ray Data job (pipelines.ingest)",
    )
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    report = run(
        a.data_dir,
        os.path.abspath(a.bundle),
        a.work_dir,
        os.path.abspath(a.out),
        a.serve_config,
        a.port,
        a.tolerance,
        a.concurrency,
        a.ingest,
        a.queries,
    )
    print(table(report))
    if report["max_abs_diff"] > a.tolerance:
        print(f"MISMATCH: |HTTP - in-process| = {report['max_abs_diff']} > {a.tolerance}")
        return 1
    print(f"OK: HTTP path matches in-process within {a.tolerance} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A model upgrade and a rollback under load, measured (issue #24), on 127.0.0.1 only.

    python bench/upgrade_bench.py --out runs/upgrade_bench           # 10,000 API items
    python bench/upgrade_bench.py --items 300 --pre-s 3 --post-s 2   # smoke

The Serve app of ``serve_app/configs/local.yaml`` (its args and deployment options; here with
an API token, 2 shard actors, replica index copies, the alias polled every ``--alias-poll-s``
and its own index under ``--out``) starts seeded from ``--old-bundle``; ``--items`` WordNet
noun synsets that are in neither bundle's catalogue are ingested over HTTP (``POST
/v1/items``, ``--ingest-clients`` clients, batches of ``--ingest-batch``). Then, while
``--query-clients`` clients query (``POST /v1/query``, WordNet test-query texts) and
``--write-clients`` clients write new items one at a time (``--write-sleep-s`` between
writes), the driver runs ``irene.upgrade.upgrade`` to ``--new-bundle`` in-process (executor
local, the shard actors through ``irene.ray.upgrade.ray_generations``), waits until every
``/readyz`` probe names the new generation, keeps the load ``--post-s`` more and stops it.
Every acknowledged write (the bulk items + those made during the load) is then read back
with ``POST /v1/items/fetch``: it must be there, with its text and metadata, made by the new
bundle (``version``). Then the same for ``irene.upgrade.rollback`` back to the first
generation (``version`` = the old bundle's).

The load runs in a child process (8 + 2 threads; its latencies are not skewed by the
driver's upgrade work holding the GIL); ``/readyz`` is probed every ``--probe-s`` from the
driver. Reported per move: the procedure's seconds (seeding, each sync round, the final
sync after the seal), seal -> alias written, seal -> last probe answered by the old
generation, the write pause (the longest write whose request overlapped the seal ..
switched window), failed queries / writes, lost / wrong-version acknowledged writes, query
p50/p99 before / during / after. Writes ``<out>/upgrade_bench.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOKEN = "upgrade-bench-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMESPACE = "irene-upgrade-bench"
K = 10
FETCH_BATCH = 256  # serve_app limits.max_items_per_request
SEALS: list[float] = []  # time.monotonic() of every seal(True) the procedure made


# --------------------------------------------------------------------------- data
def wordnet_items(
    data_dir: str, wordnet_dir: str, exclude: set[str]
) -> list[tuple[str, str, dict]]:
    """(id, text, metadata) of WordNet noun synsets not in ``exclude`` (the bundles'
    catalogues): ``<data>/new_items.jsonl`` first, then the other synsets in a seeded random
    order; ids, texts and metadata as ``irene data wordnet`` writes new items."""
    from irene.data.wordnet import (
        min_depths,
        parse_data_noun,
        parse_index_noun,
        read_lexnames,
        synset_names,
    )

    out: list[tuple[str, str, dict]] = []
    seen: set[str] = set(exclude)
    new_items = os.path.join(data_dir, "new_items.jsonl")
    if os.path.exists(new_items):
        with open(new_items) as f:
            for line in f:
                r = json.loads(line)
                if r["id"] not in seen:
                    seen.add(r["id"])
                    out.append((r["id"], r["text"], r.get("metadata") or {}))
    synsets = parse_data_noun(os.path.join(wordnet_dir, "data.noun"))
    names = synset_names(synsets, parse_index_noun(os.path.join(wordnet_dir, "index.noun")))
    lexnames = read_lexnames(wordnet_dir)
    depth = min_depths(synsets)
    offsets = sorted(synsets)
    rng = np.random.default_rng(24)
    for i in rng.permutation(len(offsets)):
        o = offsets[int(i)]
        s, name = synsets[o], names[o]
        if name in seen or len(s.text) > 2000:
            continue
        seen.add(name)
        lex = lexnames[s.lex_filenum] if s.lex_filenum < len(lexnames) else f"lex.{s.lex_filenum}"
        out.append((name, s.text, {"lexname": lex, "depth": depth[o], "lemmas": list(s.lemmas)}))
    return out


def query_texts(data_dir: str, n: int = 2000) -> list[str]:
    """WordNet test queries (``tst_X.txt``), a seeded sample of ``n``."""
    with open(os.path.join(data_dir, "tst_X.txt")) as f:
        texts = [t.strip() for t in f if t.strip()]
    rng = np.random.default_rng(0)
    return [texts[int(i)] for i in rng.permutation(len(texts))[:n]]


# --------------------------------------------------------------------------- load (child)
def _load_main(url, queries, pool, prefix, n_query, n_write, write_sleep_s, stop, out) -> None:
    """Runs in a child process: query and write threads until ``stop`` is set, then puts
    ``{queries: [(t0, s, ok)], writes: [(t0, s, ok)], acked: {id: [text, meta]}, failed_*}``
    (t0: time.monotonic(), shared by every process) on ``out``."""
    import httpx

    lock = threading.Lock()
    res: dict = {
        "queries": [],
        "writes": [],
        "acked": {},
        "failed_queries": [],
        "failed_writes": [],
    }

    def query(c: int) -> None:
        mine, fails = [], []
        with httpx.Client(base_url=url, timeout=60) as cl:
            i = c * 997
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = cl.post("/v1/query", json={"text": queries[i % len(queries)], "k": K})
                    ok, msg = r.status_code == 200, f"{r.status_code} {r.text[:300]}"
                except httpx.HTTPError as e:
                    ok, msg = False, f"{type(e).__name__}: {e}"
                mine.append((t0, time.monotonic() - t0, ok))
                if not ok:
                    fails.append((t0, msg))
                i += 1
        with lock:
            res["queries"] += mine
            res["failed_queries"] += fails

    def write(w: int) -> None:
        mine, fails, acked = [], [], {}
        mine_pool = pool[w::n_write]
        with httpx.Client(
            base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as cl:
            i = 0
            while not stop.is_set():
                base, text, meta = mine_pool[i % len(mine_pool)]
                lap = i // len(mine_pool)
                id_ = f"{prefix}:{base}" if lap == 0 else f"{prefix}{lap}:{base}"
                t0 = time.monotonic()
                try:
                    r = cl.post(
                        "/v1/items", json={"items": [{"id": id_, "text": text, "metadata": meta}]}
                    )
                    ok, msg = r.status_code == 200, f"{r.status_code} {r.text[:300]}"
                except httpx.HTTPError as e:
                    ok, msg = False, f"{type(e).__name__}: {e}"
                mine.append((t0, time.monotonic() - t0, ok))
                if ok:
                    acked[id_] = [text, meta]
                else:
                    fails.append((t0, id_, msg))
                i += 1
                time.sleep(write_sleep_s)
        with lock:
            res["writes"] += mine
            res["failed_writes"] += fails
            res["acked"].update(acked)

    threads = [threading.Thread(target=query, args=(c,)) for c in range(n_query)]
    threads += [threading.Thread(target=write, args=(w,)) for w in range(n_write)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(res)


class Load:
    """``n_query`` query clients and ``n_write`` one-item writers in a child process."""

    def __init__(self, url, queries, pool, prefix, n_query, n_write, write_sleep_s) -> None:
        ctx = mp.get_context("spawn")
        self._stop, self._out = ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(
            target=_load_main,
            args=(
                url,
                queries,
                pool,
                prefix,
                n_query,
                n_write,
                write_sleep_s,
                self._stop,
                self._out,
            ),
            daemon=True,
        )
        self.result: dict = {}

    def start(self) -> Load:
        self._proc.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self.result = self._out.get(timeout=180)  # before join: the queue's feeder must drain
        self._proc.join(60)
        return self.result


class Prober(threading.Thread):
    """``GET /readyz`` every ``every_s``: (t, generation or None, status)."""

    def __init__(self, url: str, every_s: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every_s = url, every_s
        self.samples: list[tuple[float, str | None, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self._halt.is_set():
                t = time.monotonic()
                try:
                    r = c.get("/readyz")
                    gen = r.json().get("generation") if r.status_code == 200 else None
                    self.samples.append((t, gen, r.status_code))
                except Exception:  # noqa: BLE001  (a probe that fails is recorded, not raised)
                    self.samples.append((t, None, -1))
                self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


# --------------------------------------------------------------------------- stats
def lat_stats(samples: list[tuple[float, float, bool]], lo: float, hi: float) -> dict:
    """Requests started in [lo, hi): count, failures, QPS, p50 / p99 / max ms of the ok ones."""
    sel = [(t, s, ok) for t, s, ok in samples if lo <= t < hi]
    ok = np.asarray([s for _, s, o in sel if o]) * 1000.0
    out = {"n": len(sel), "failed": sum(1 for *_, o in sel if not o), "window_s": round(hi - lo, 2)}
    if len(ok):
        out.update(
            qps=round(len(sel) / max(hi - lo, 1e-9), 1),
            p50_ms=round(float(np.percentile(ok, 50)), 1),
            p99_ms=round(float(np.percentile(ok, 99)), 1),
            max_ms=round(float(ok.max()), 1),
        )
    return out


def longest_gap(samples: list[tuple[float, float, bool]], lo: float, hi: float) -> float:
    """Longest time in [lo, hi] with no write acknowledged (seconds)."""
    ends = sorted(t + s for t, s, ok in samples if ok and lo <= t + s <= hi)
    pts = [lo, *ends, hi]
    return round(max(b - a for a, b in zip(pts, pts[1:], strict=False)), 3) if len(pts) > 1 else 0.0


def check_items(client, acked: dict[str, list], version: str) -> dict:
    """Read every acknowledged write back (``POST /v1/items/fetch``): lost, wrong text /
    metadata, made by another bundle version (``old``: the version given first)."""
    ids = sorted(acked)
    lost, wrong_text, wrong_meta, wrong_version, not_generated = [], [], [], {}, []
    t0 = time.perf_counter()
    for s in range(0, len(ids), FETCH_BATCH):
        part = ids[s : s + FETCH_BATCH]
        r = client.post("/v1/items/fetch", json={"ids": part})
        r.raise_for_status()
        for id_, item in zip(part, r.json()["items"], strict=True):
            text, meta = acked[id_]
            if item is None:
                lost.append(id_)
                continue
            if item.get("text") != text:
                wrong_text.append(id_)
            if (item.get("metadata") or {}) != (meta or {}):
                wrong_meta.append(id_)
            if item.get("version") != version:
                wrong_version.setdefault(str(item.get("version")), []).append(id_)
            if item.get("source") != "generated":
                not_generated.append(id_)
    return {
        "checked": len(ids),
        "lost": len(lost),
        "wrong_text": len(wrong_text),
        "wrong_metadata": len(wrong_meta),
        "wrong_version": sum(len(v) for v in wrong_version.values()),
        "wrong_version_by_version": {k: len(v) for k, v in wrong_version.items()},
        "not_generated": len(not_generated),
        "examples": {
            "lost": lost[:5],
            "wrong_text": wrong_text[:5],
            "wrong_metadata": wrong_meta[:5],
            "wrong_version": {k: v[:5] for k, v in wrong_version.items()},
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }


def check_vectors(client, ids: list[str], version: str) -> dict:
    """``GET /v1/items/{id}?explain=true`` for ``ids``: the serving bundle's generator rerun
    on each stored text, and the cosine of that to the stored vector (about 1: the vector
    was made by this bundle's generator, not left from the old one)."""
    from urllib.parse import quote

    cos, errors, not_this = [], [], []
    t0 = time.perf_counter()
    for id_ in ids:
        if any(c in id_ for c in "/%?#") or ".." in id_:
            continue
        r = client.get(f"/v1/items/{quote(id_, safe='')}", params={"explain": "true"})
        if r.status_code != 200:
            errors.append(f"{id_}: {r.status_code} {r.text[:200]}")
            continue
        ex = r.json().get("explain") or {}
        if ex.get("bundle_version") != version or not ex.get("made_by_this_bundle"):
            not_this.append(id_)
        if ex.get("cosine_to_stored_vector") is not None:
            cos.append(ex["cosine_to_stored_vector"])
    a = np.asarray(cos)
    return {
        "checked": len(cos),
        "errors": len(errors),
        "error_examples": errors[:5],
        "not_made_by_serving_bundle": len(not_this),
        "cosine_min": round(float(a.min()), 4) if len(a) else None,
        "cosine_p1": round(float(np.percentile(a, 1)), 4) if len(a) else None,
        "cosine_median": round(float(np.median(a)), 4) if len(a) else None,
        "below_0.99": int((a < 0.99).sum()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def vector_sample(bulk_ids: list[str], load_ids: list[str], n_bulk: int, seed: int) -> list[str]:
    """Every write made during the load (the ones near the seal) + ``n_bulk`` bulk items."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(bulk_ids), size=min(n_bulk, len(bulk_ids)), replace=False)
    return sorted(load_ids) + [bulk_ids[int(i)] for i in pick]


# --------------------------------------------------------------------------- the bench
def _generations(client, n: int) -> set:
    out = set()
    for _ in range(n):
        r = client.get("/readyz")
        out.add(r.json().get("generation") if r.status_code == 200 else None)
    return out


def _ingress_replicas(serve) -> dict:
    try:
        dep = serve.status().applications["irene"].deployments
        return {name: {str(k): v for k, v in d.replica_states.items()} for name, d in dep.items()}
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)}


def move_under_load(
    kind: str, args, url, client, serve, gens, do_move, queries, pool, prefix
) -> dict:
    """Start the load, ``do_move()`` (upgrade / rollback) in this process, wait until every
    probe names the new generation, keep the load ``--post-s``, stop; timings and checks."""
    n_seals = len(SEALS)
    open_ = gens.open

    def timed_open(cfg):  # instrument seal(True): when the serving generation stops taking writes
        idx = open_(cfg)
        if not getattr(idx, "_bench_timed", False):  # opened indexes are cached: wrap once
            seal = idx.seal

            def timed_seal(flag=True, _seal=seal):
                out = _seal(flag)
                if flag:
                    SEALS.append(time.monotonic())
                return out

            idx.seal = timed_seal
            idx.__dict__["_bench_timed"] = True
        return idx

    gens.open = timed_open
    prober = Prober(url, args.probe_s)
    load = Load(
        url, queries, pool, prefix, args.query_clients, args.write_clients, args.write_sleep_s
    )
    replicas = {"start": _ingress_replicas(serve)}
    t_load = time.monotonic()
    load.start()
    prober.start()
    time.sleep(args.pre_s)
    print(f"[{kind}] load running {args.pre_s:.0f}s, starting the {kind}", flush=True)
    t_move = time.monotonic()
    report = do_move()
    t_alias = time.monotonic()
    new = report[kind]["to"]
    print(f"[{kind}] procedure done in {report['seconds']}s -> generation {new!r}", flush=True)
    deadline = time.monotonic() + args.switch_timeout_s
    switched_ok = True
    while _generations(client, 8) != {new}:
        if time.monotonic() > deadline:
            switched_ok = False
            print(
                f"[{kind}] replicas did not all switch within {args.switch_timeout_s}s", flush=True
            )
            break
        time.sleep(0.1)
    t_confirmed = time.monotonic()
    replicas["switched"] = _ingress_replicas(serve)
    time.sleep(args.post_s)
    res = load.stop()
    t_end = time.monotonic()
    prober.stop()
    gens.open = open_

    # switch point: the last probe answered by another generation than the new one
    old_probes = [t for t, g, st in prober.samples if st == 200 and g != new and t >= t_move]
    first_new = [t for t, g, st in prober.samples if st == 200 and g == new]
    t_seal = SEALS[-1] if len(SEALS) > n_seals else None
    t_switched = max(old_probes) if old_probes else (min(first_new) if first_new else t_confirmed)
    t_switched = min(max(t_switched, t_alias), t_confirmed)
    win_lo = t_seal if t_seal is not None else t_move
    in_switch = [(t, s, ok) for t, s, ok in res["writes"] if t < t_switched and t + s > win_lo]
    probe_fail = [(round(t - t_move, 2), st) for t, _, st in prober.samples if st != 200]
    timings = {
        "procedure_s": report["seconds"],
        "seed_s": round(report.get("seed_s", 0.0), 3) if "seed_s" in report else None,
        "seeded_items": report.get("seeded"),
        "steps": report["steps"],
        "move_start_to_seal_s": round(t_seal - t_move, 3) if t_seal else None,
        "seal_to_alias_s": round(t_alias - t_seal, 3) if t_seal else None,
        "alias_to_last_old_probe_s": round(t_switched - t_alias, 3),
        "seal_to_all_switched_s": round(t_switched - t_seal, 3) if t_seal else None,
        "move_start_to_all_switched_s": round(t_switched - t_move, 3),
        "confirmed_after_s": round(t_confirmed - t_move, 3),
        "switched_within_timeout": switched_ok,
        "write_pause_s": round(max((s for _, s, _ in in_switch), default=0.0), 3),
        "writes_in_switch_window": len(in_switch),
        "longest_ack_gap_s": longest_gap(res["writes"], t_move, t_confirmed),
        "probes": len(prober.samples),
        "probes_failed": probe_fail[:20],
        "probes_failed_n": len(probe_fail),
    }
    lat = {
        "queries": {
            "before": lat_stats(res["queries"], t_load + 1.0, t_move),
            "during": lat_stats(res["queries"], t_move, t_switched),
            "after": lat_stats(res["queries"], t_switched, t_end),
        },
        "writes": {
            "before": lat_stats(res["writes"], t_load + 1.0, t_move),
            "during": lat_stats(res["writes"], t_move, t_switched),
            "after": lat_stats(res["writes"], t_switched, t_end),
        },
    }
    return {
        "report": report,
        "generation": new,
        "timings": timings,
        "latency": lat,
        "load": {
            "queries": len(res["queries"]),
            "failed_queries": len(res["failed_queries"]),
            "failed_query_examples": [
                (round(t - t_move, 2), m) for t, m in res["failed_queries"][:10]
            ],
            "writes": len(res["writes"]),
            "acked_writes": len(res["acked"]),
            "failed_writes": len(res["failed_writes"]),
            "failed_write_examples": [
                (round(t - t_move, 2), i, m) for t, i, m in res["failed_writes"][:10]
            ],
            "seconds": round(t_end - t_load, 1),
        },
        "replicas": replicas,
        "acked": res["acked"],
    }


def bulk_ingest(client_url: str, items, clients: int, batch: int) -> tuple[dict, dict]:
    """``items`` over HTTP in batches, ``clients`` concurrent: (stats, acked {id: [text, meta]})."""
    import httpx

    batches = [items[s : s + batch] for s in range(0, len(items), batch)]
    acked: dict[str, list] = {}
    fails: list[str] = []
    lat: list[float] = []
    lock = threading.Lock()

    def send(b) -> None:
        body = {"items": [{"id": i, "text": t, "metadata": m} for i, t, m in b]}
        t0 = time.perf_counter()
        with httpx.Client(base_url=client_url, timeout=300, headers=AUTH) as c:
            try:
                r = c.post("/v1/items", json=body)
                ok, msg = r.status_code == 200, f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as e:
                ok, msg = False, f"{type(e).__name__}: {e}"
        with lock:
            lat.append(time.perf_counter() - t0)
            if ok:
                acked.update({i: [t, m] for i, t, m in b})
            else:
                fails.append(msg)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, batches))
    wall = time.perf_counter() - t0
    a = np.asarray(lat) * 1000
    return {
        "items": len(items),
        "acked": len(acked),
        "failed_batches": len(fails),
        "failed_examples": fails[:5],
        "seconds": round(wall, 2),
        "items_per_s": round(len(acked) / wall, 1),
        "batch": batch,
        "clients": clients,
        "batch_p50_ms": round(float(np.percentile(a, 50)), 1) if len(a) else None,
        "batch_p99_ms": round(float(np.percentile(a, 99)), 1) if len(a) else None,
    }, acked


def app_args(args, index_name: str) -> tuple[dict, dict]:
    """(build_app args, deployment options): local.yaml's, with this bench's index and token."""
    from pipelines.demo import serve_config

    base, deployments = serve_config(args.serve_config)
    base = dict(base)
    base["bundle"] = os.path.abspath(args.old_bundle)
    base["index"] = {
        **dict(base.get("index") or {}),
        "uri": os.path.abspath(os.path.join(args.out, "index")),
        "name": index_name,
        "namespace": NAMESPACE,
        "n_owners": args.n_owners,
        "read_replica": True,
        "alias_poll_s": args.alias_poll_s,
    }
    base["auth"] = {
        **dict(base.get("auth") or {}),
        "token": TOKEN,
        "token_env": "IRENE_BENCH_UNSET_TOKEN",
    }
    base["encoder_placement"] = "ingress"
    base["deployment_options"] = deployments
    return base, deployments


def kill_generations(index_cfg) -> None:
    import ray

    from irene.index.generations import generation_config, load_alias
    from irene.index.router import owner_name

    alias = load_alias(index_cfg)
    for gen in alias.generations if alias else [""]:
        cfg = generation_config(index_cfg, gen)
        for i in range(cfg.n_owners):
            try:
                ray.kill(
                    ray.get_actor(owner_name(cfg.name, i, cfg.n_owners), namespace=cfg.namespace)
                )
            except ValueError:
                pass


def run(args) -> dict:
    import httpx
    import ray
    from ray import serve

    from irene.bundle import bundle_item_ids, bundle_version, read_manifest
    from irene.config import Config, IngestConfig
    from irene.net import free_local_port
    from irene.ray.upgrade import ray_generations
    from irene.upgrade import rollback, upgrade
    from serve_app.app import build_app, resolve_args

    t_start = time.perf_counter()
    b0, b1 = os.path.abspath(args.old_bundle), os.path.abspath(args.new_bundle)
    m0, m1 = read_manifest(b0), read_manifest(b1)
    v0, v1 = bundle_version(m0), bundle_version(m1)
    dim = int(m0["dim"])
    exclude = bundle_item_ids(b0) | bundle_item_ids(b1)
    pool = wordnet_items(args.data, args.wordnet_dir, exclude)
    n_load = (len(pool) - args.items) // 2
    if n_load < 100:
        raise SystemExit(
            f"only {len(pool)} WordNet items outside the catalogues; --items too large"
        )
    bulk, up_pool, rb_pool = (
        pool[: args.items],
        pool[args.items : args.items + n_load],
        pool[args.items + n_load :],
    )
    queries = query_texts(args.data)
    print(
        f"bundles: old {b0} ({v0}), new {b1} ({v1}); {len(exclude)} catalogue ids excluded, "
        f"{len(pool)} WordNet items available, {len(queries)} query texts",
        flush=True,
    )

    index_dir = os.path.join(args.out, "index")
    shutil.rmtree(index_dir, ignore_errors=True)
    index_name = f"upgrade-bench-{uuid.uuid4().hex[:8]}"
    a_args, deployments = app_args(args, index_name)
    index_cfg = resolve_args({k: v for k, v in a_args.items()}).index
    ray_tmp = args.ray_tmp or f"/tmp/ub-{uuid.uuid4().hex[:6]}"
    os.environ.pop("IRENE_BUNDLE", None)
    port = int(args.port) if args.port else free_local_port()
    url = f"http://127.0.0.1:{port}"
    out: dict = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "argv": sys.argv,
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "bundles": {
            "old": {
                "path": b0,
                "version": v0,
                "config_hash": m0.get("config_hash"),
                "num_items": m0.get("num_items"),
                "num_seen_items": m0.get("num_seen_items"),
            },
            "new": {
                "path": b1,
                "version": v1,
                "config_hash": m1.get("config_hash"),
                "num_items": m1.get("num_items"),
                "num_seen_items": m1.get("num_seen_items"),
            },
        },
        "settings": {
            k: getattr(args, k)
            for k in (
                "items",
                "ingest_clients",
                "ingest_batch",
                "query_clients",
                "write_clients",
                "write_sleep_s",
                "pre_s",
                "post_s",
                "probe_s",
                "alias_poll_s",
                "n_owners",
                "ray_cpus",
                "max_rounds",
                "settle",
                "serve_config",
            )
        },
        "app": {
            "index": {k: v for k, v in a_args["index"].items()},
            "deployments": deployments,
            "encoder_placement": a_args["encoder_placement"],
        },
        "ray_tmp": ray_tmp,
    }
    client = httpx.Client(base_url=url, timeout=120, headers=AUTH)
    try:
        ray.init(
            num_cpus=args.ray_cpus,
            include_dashboard=False,
            namespace=NAMESPACE,
            _temp_dir=os.path.join(ray_tmp, "ray"),
            log_to_driver=False,
            configure_logging=True,
            logging_level="WARNING",
        )
        logging.getLogger("irene").setLevel(logging.INFO)
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logging.getLogger("irene.upgrade").addHandler(h)
        t0 = time.perf_counter()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(a_args), name="irene", route_prefix="/")
        deadline = time.monotonic() + 300
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("app not ready in 300 s")
            time.sleep(0.5)
        out["startup_s"] = round(time.perf_counter() - t0, 1)
        ready = client.get("/readyz").json()
        print(f"app ready in {out['startup_s']}s: {ready}", flush=True)

        ingest, acked = bulk_ingest(url, bulk, args.ingest_clients, args.ingest_batch)
        out["ingest"] = ingest
        print(
            f"ingested {ingest['acked']}/{ingest['items']} items over HTTP in {ingest['seconds']}s: "
            f"{ingest['items_per_s']} items/s ({args.ingest_clients} clients, batches of "
            f"{args.ingest_batch}); failed batches {ingest['failed_batches']}",
            flush=True,
        )
        out["index_count_after_ingest"] = client.get("/readyz").json().get("index_count")

        gens = ray_generations(index_cfg, dim, Config(ingest=IngestConfig()))

        # ---------------------------------------------------------------- upgrade
        up = move_under_load(
            "upgrade",
            args,
            url,
            client,
            serve,
            gens,
            lambda: upgrade(gens, b1, v1, b0, v0, max_rounds=args.max_rounds, settle=args.settle),
            queries,
            up_pool,
            "up",
        )
        up_acked = up.pop("acked")
        acked_all = {**acked, **up_acked}
        up["check"] = check_items(client, acked_all, v1)
        up["vectors"] = check_vectors(
            client, vector_sample(sorted(acked), list(up_acked), args.vector_sample, 1), v1
        )
        up["index_count"] = client.get("/readyz").json().get("index_count")
        up["index_count_expected"] = (m1.get("num_items") or 0) + len(acked_all)
        out["upgrade"] = up
        print(f"[upgrade] vectors: {json.dumps(up['vectors'])}", flush=True)
        print(
            f"[upgrade] check: {json.dumps({k: v for k, v in up['check'].items() if k != 'examples'})}",
            flush=True,
        )

        # ---------------------------------------------------------------- rollback
        rb = move_under_load(
            "rollback",
            args,
            url,
            client,
            serve,
            gens,
            lambda: rollback(gens, max_rounds=args.max_rounds, settle=args.settle),
            queries,
            rb_pool,
            "down",
        )
        rb_acked = rb.pop("acked")
        acked_all = {**acked_all, **rb_acked}
        rb["check"] = check_items(client, acked_all, v0)
        rb["vectors"] = check_vectors(
            client,
            vector_sample(sorted(acked), list(up_acked) + list(rb_acked), args.vector_sample, 2),
            v0,
        )
        rb["index_count"] = client.get("/readyz").json().get("index_count")
        rb["index_count_expected"] = (m0.get("num_items") or 0) + len(acked_all)
        out["rollback"] = rb
        print(f"[rollback] vectors: {json.dumps(rb['vectors'])}", flush=True)
        print(
            f"[rollback] check: {json.dumps({k: v for k, v in rb['check'].items() if k != 'examples'})}",
            flush=True,
        )
        out["acked_total"] = len(acked_all)
    finally:
        client.close()
        try:
            serve.shutdown()
            if ray.is_initialized():
                kill_generations(index_cfg)
        finally:
            ray.shutdown()
    out["total_s"] = round(time.perf_counter() - t_start, 1)
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["peak_rss_mb_driver"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if not args.keep_ray_tmp:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        out["ray_tmp"] = None
    return out


# --------------------------------------------------------------------------- report
def _v(x, fmt="{}"):
    return "-" if x is None else fmt.format(x)


def markdown(r: dict) -> str:
    s = r["settings"]
    ing = r["ingest"]
    lines = [
        "# Upgrade under load (bench/upgrade_bench.py)",
        "",
        f"Old bundle `{r['bundles']['old']['path']}` ({r['bundles']['old']['version']}), new "
        f"`{r['bundles']['new']['path']}` ({r['bundles']['new']['version']}); "
        f"{r['cpus']} cores, load average at start {r['loadavg_start']}.",
        f"App: serve_app/configs/local.yaml's args and deployments, index n_owners "
        f"{s['n_owners']}, read replicas, alias polled every {s['alias_poll_s']} s; Ray "
        f"num_cpus {s['ray_cpus']}. Startup {r.get('startup_s')} s.",
        f"Bulk ingest: {ing['acked']}/{ing['items']} WordNet items over HTTP in {ing['seconds']} s "
        f"= **{ing['items_per_s']} items/s** ({ing['clients']} clients, batches of {ing['batch']}; "
        f"batch p50 {ing['batch_p50_ms']} ms, p99 {ing['batch_p99_ms']} ms; failed batches "
        f"{ing['failed_batches']}).",
        f"Load during each move: {s['query_clients']} query clients (k={K}), {s['write_clients']} "
        f"writers (1 item per request, {s['write_sleep_s']} s apart); {s['pre_s']} s of load "
        f"before the move, {s['post_s']} s after every probe showed the new generation. "
        f"Procedure: in the driver, executor local, max_rounds {s['max_rounds']}, settle {s['settle']}.",
        "",
        "| move | total s | seed s | sync rounds (items) | final sync s | seal -> alias s "
        "| seal -> all switched s | write pause s | queries | failed q | writes acked "
        "| failed w | checked | lost | wrong version | wrong text/meta | count ok |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("upgrade", "rollback"):
        m = r.get(kind)
        if not m:
            continue
        t, ld, c = m["timings"], m["load"], m["check"]
        rounds = [st for st in t["steps"] if st["name"] != "final"]
        final = [st for st in t["steps"] if st["name"] == "final"]
        rtxt = ", ".join(f"{st['seconds']:.1f}s ({st['written']}+{st['deleted']})" for st in rounds)
        lines.append(
            f"| {kind} | {t['procedure_s']:.1f} | {_v(t['seed_s'], '{:.1f}')} | {rtxt} "
            f"| {final[0]['seconds']:.2f} ({final[0]['written']}) | {_v(t['seal_to_alias_s'], '{:.2f}')} "
            f"| {_v(t['seal_to_all_switched_s'], '{:.2f}')} | {t['write_pause_s']:.2f} "
            f"| {ld['queries']} | {ld['failed_queries']} | {ld['acked_writes']} | {ld['failed_writes']} "
            f"| {c['checked']} | {c['lost']} | {c['wrong_version']} "
            f"| {c['wrong_text']}/{c['wrong_metadata']} "
            f"| {'yes' if m['index_count'] == m['index_count_expected'] else 'NO'} "
            f"({m['index_count']}) |"
        )
    lines += [
        "",
        "Query latency (requests by start time; during = move start .. last probe answered "
        "by the old generation):",
        "",
        "| move | phase | queries | QPS | p50 ms | p99 ms | max ms | writes | write p50 ms | write p99 ms | write max ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("upgrade", "rollback"):
        m = r.get(kind)
        if not m:
            continue
        for ph in ("before", "during", "after"):
            q, w = m["latency"]["queries"][ph], m["latency"]["writes"][ph]
            lines.append(
                f"| {kind} | {ph} ({q['window_s']} s) | {q['n']} | {_v(q.get('qps'))} "
                f"| {_v(q.get('p50_ms'))} | {_v(q.get('p99_ms'))} | {_v(q.get('max_ms'))} "
                f"| {w['n']} | {_v(w.get('p50_ms'))} | {_v(w.get('p99_ms'))} | {_v(w.get('max_ms'))} |"
            )
    lines.append("")
    for kind in ("upgrade", "rollback"):
        m = r.get(kind)
        if not m:
            continue
        t = m["timings"]
        lines.append(
            f"{kind}: seal {t['move_start_to_seal_s']} s after the start; alias written "
            f"{t['seal_to_alias_s']} s after the seal; last probe answered by the old generation "
            f"{t['alias_to_last_old_probe_s']} s after the alias; longest time without a write "
            f"acknowledged {t['longest_ack_gap_s']} s; {t['writes_in_switch_window']} writes "
            f"overlapped the seal..switched window; /readyz probes {t['probes']} "
            f"({t['probes_failed_n']} failed); regenerated {m['report']['regenerated']}, deleted "
            f"{m['report']['deleted']}."
        )
        v = m.get("vectors")
        if v:
            lines.append(
                f"{kind}: stored vectors vs the serving bundle's generator rerun on the text "
                f"(GET /v1/items/{{id}}?explain=true), {v['checked']} items (every write of "
                f"the load + a sample of the bulk): cosine min {v['cosine_min']}, p1 "
                f"{v['cosine_p1']}, median {v['cosine_median']}; below 0.99: {v['below_0.99']}; "
                f"not made by the serving bundle: {v['not_made_by_serving_bundle']}; errors "
                f"{v['errors']}."
            )
    lines.append("")
    lines.append(f"Total {r.get('total_s')} s; driver peak RSS {r.get('peak_rss_mb_driver')} MB.")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--old-bundle", default="runs/upgrade_bench/bundle-s0", help="serves first")
    p.add_argument("--new-bundle", default="runs/upgrade_bench/bundle-s1", help="the retrained one")
    p.add_argument("--out", default="runs/upgrade_bench", help="results + the index (index/)")
    p.add_argument("--data", default="data/wordnet", help="irene data wordnet output")
    p.add_argument("--wordnet-dir", default="/usr/share/wordnet")
    p.add_argument("--serve-config", default=str(REPO / "serve_app/configs/local.yaml"))
    p.add_argument("--items", type=int, default=10000, help="API items ingested before the upgrade")
    p.add_argument("--ingest-clients", type=int, default=4)
    p.add_argument("--ingest-batch", type=int, default=64)
    p.add_argument("--query-clients", type=int, default=8)
    p.add_argument("--write-clients", type=int, default=2)
    p.add_argument(
        "--write-sleep-s", type=float, default=0.05, help="pause between a writer's writes"
    )
    p.add_argument("--pre-s", type=float, default=15.0, help="load before each move starts")
    p.add_argument(
        "--post-s", type=float, default=5.0, help="load after every probe shows the new generation"
    )
    p.add_argument("--probe-s", type=float, default=0.1, help="/readyz probe interval")
    p.add_argument("--switch-timeout-s", type=float, default=120.0)
    p.add_argument("--alias-poll-s", type=float, default=1.0)
    p.add_argument("--n-owners", type=int, default=2)
    p.add_argument("--max-rounds", type=int, default=5)
    p.add_argument("--settle", type=int, default=100)
    p.add_argument(
        "--ray-cpus",
        type=float,
        default=4,
        help="Ray logical CPUs (two generations' shard actors + autoscaled replicas must fit)",
    )
    p.add_argument(
        "--vector-sample",
        type=int,
        default=200,
        help="bulk items whose stored vector is checked against the serving bundle's generator "
        "(GET /v1/items/{id}?explain=true) after each move, beside every write of the load",
    )
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ray-tmp", default="", help="Ray temp dir (default /tmp/ub-<hex>)")
    p.add_argument("--keep-ray-tmp", action="store_true", help="keep Ray's logs after the run")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.makedirs(args.out, exist_ok=True)
    report = run(args)
    table = markdown(report)
    report["table"] = table
    base = os.path.join(args.out, "upgrade_bench")
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=2)
    with open(base + ".md", "w") as f:
        f.write(table)
    print()
    print(table)
    print(f"wrote {base}.json and {base}.md ({report['total_s']} s total)")
    ok = all(
        report[k]["load"]["failed_queries"] == 0
        and report[k]["load"]["failed_writes"] == 0
        and report[k]["check"]["lost"] == 0
        and report[k]["check"]["wrong_version"] == 0
        and report[k]["check"]["wrong_text"] == 0
        for k in ("upgrade", "rollback")
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

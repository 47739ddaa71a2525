"""Serving latency/throughput, side by side in one run, on 127.0.0.1 only.

    python bench/serve_bench.py [--bundle DIR] [--out runs/serve_bench] [--variants tuned]
    python bench/serve_bench.py --concurrency 1,4,16,32 --variants fast --out bench/results

Systems measured (one after another, each warmed up first, so they never share the CPU):

(a) ``serve``: our composed Ray Serve app over HTTP (Ingress [-> Encoder] -> index actor),
    one run per ``--variants`` entry (settings in ``SERVE_VARIANTS``; the ``colocated*``
    ones run the encoder inside the Ingress, ``colocated2`` two Ingress replicas behind
    Serve's HAProxy, ``fast`` is serve_app/configs/local.yaml in the README's fast mode);
(b) ``inprocess``: the same pipeline with no HTTP: bundle encoder ``encode`` + the same
    sharded FAISS index ``search`` (1 client: a loop; 16 clients: 16 threads);
(c) ``plain``: a single-process FastAPI/uvicorn service (``bench/plain_service.py``, a
    subprocess) doing encode + search with asyncio micro-batching.

Reported: query p50/p99 with 1 client; QPS and p50/p99 at ``--clients`` (16) concurrent
clients; ingest items/s over HTTP (``POST /v1/items`` batches) vs in-process (encode +
synthesize + ``DurableIndex.add``, fsynced); the generator's time per item. Query load comes
from ``wrk`` (``--load wrk``, the default when installed: bench/wrk_load.py, a few tens of
microseconds of CPU per request) or one ``httpx.AsyncClient`` in this process (``--load
httpx``, ~3 ms of CPU per request, which takes a core of a 2-core machine from the services it
measures); ingest load always from httpx. Without ``--bundle`` a bundle is built (once,
cached under ``--out``) with the REAL default encoder (all-MiniLM-L6-v2), classifiers =
WordNet noun-synset embeddings (or synthetic texts) + small noise, and an *untrained*
IRENE generator: fine for timings, meaningless for accuracy.

``--concurrency 1,4,16,32``: queries measured at each of those client counts instead of the
1-client/``--clients`` pair (each system warmed up at the highest level, then per level a
short warm-up and ``--duration-level-s`` measured); also writes
``<out>/serve_concurrency.{json,md,png}`` (QPS, p50, p99 per system and level; each Serve
variant's QPS over plain's and in-process's). ``--smoke``: a tiny random-encoder bundle,
~1 s phases, levels 1,4, one Serve variant (tests/bench/test_serve_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from wrk_load import available as wrk_available  # bench/ is on sys.path (the script's dir)
from wrk_load import run_wrk

from irene.net import free_local_port
from pipelines.demo import DEFAULT_SERVE_CONFIG, serve_config

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
K = 10
N_SHARDS = 4


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Serve app settings tried (build_app args overrides + env vars for the Ray processes).
# "defaults": Serve's own deployment defaults (max_ongoing_requests=5, 1 CPU per replica,
# threads left to torch); the others are tuning attempts, see the report.
_QUIET = {"logging_config": {"enable_access_log": False, "log_level": "WARNING"}}
SERVE_VARIANTS: dict[str, dict] = {
    "defaults": {
        "args": {
            "deployment_options": {
                "Encoder": {"max_ongoing_requests": 5, "ray_actor_options": {"num_cpus": 1}},
                "Generator": {"max_ongoing_requests": 5, "ray_actor_options": {"num_cpus": 0.25}},
                "Ingress": {"max_ongoing_requests": 5, "ray_actor_options": {"num_cpus": 0.25}},
            },
        },
        "env": {},
    },
    "repo": {  # serve_app/configs/local.yaml's settings, started without the env switches
        "args": {
            "threads": 1,
            "encoder_batch": {"max_batch_size": 32},
            "encoder_placement": "ingress",
            "deployment_options": {
                "Generator": {"ray_actor_options": {"num_cpus": 0.25}},
                "Ingress": {"ray_actor_options": {"num_cpus": 0.5}},
            },
        },
        "env": {},
    },
    "tuned": {  # 1 torch/faiss thread per replica, no access logs, 1 CPU for the Encoder
        "args": {
            "threads": 1,
            "encoder_batch": {"max_batch_size": 32},
            "deployment_options": {
                "Encoder": {"ray_actor_options": {"num_cpus": 1}, **_QUIET},
                "Generator": {"ray_actor_options": {"num_cpus": 0.25}, **_QUIET},
                "Ingress": {"ray_actor_options": {"num_cpus": 0.25}, **_QUIET},
            },
        },
        "env": {},
    },
}
# as tuned, with 2 torch threads in the Encoder
SERVE_VARIANTS["tuned2t"] = {
    **SERVE_VARIANTS["tuned"],
    "args": {**SERVE_VARIANTS["tuned"]["args"], "threads": 2},
}
# as tuned, plus Ray Serve's throughput-optimized mode (direct ingress: the Ingress replica
# serves HTTP itself on its own port, and the load goes there -- no proxy hop; gRPC between
# deployments; user code on the replica's event loop)
SERVE_VARIANTS["throughput"] = {
    **SERVE_VARIANTS["tuned"],
    "env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "direct_ingress": True,
}

# as throughput, with the encoder inside the Ingress replica (encoder_placement: ingress):
# HTTP -> Ingress (encode) -> index actor, no Serve hop
SERVE_VARIANTS["colocated"] = {
    **SERVE_VARIANTS["throughput"],
    "args": _merge(
        SERVE_VARIANTS["tuned"]["args"],
        {
            "encoder_placement": "ingress",
            "deployment_options": {"Ingress": {"ray_actor_options": {"num_cpus": 1}}},
        },
    ),
}
# as colocated, with 2 torch threads in the Ingress's compute thread
SERVE_VARIANTS["colocated2t"] = {
    **SERVE_VARIANTS["colocated"],
    "args": {**SERVE_VARIANTS["colocated"]["args"], "threads": 2},
}
# as colocated, with 2 Ingress replicas behind Serve's HAProxy load balancer (the load goes to
# the HAProxy port; each replica runs 1 torch thread)
SERVE_VARIANTS["colocated2"] = {
    "args": _merge(
        SERVE_VARIANTS["colocated"]["args"],
        {
            "deployment_options": {
                "Ingress": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}
            }
        },
    ),
    "env": {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # HAProxy's per-request log lines are parsed in Python for Serve's ingress metrics
        # (measured: 0.3 CPU-s per 10 s at 230 QPS); the Ingress replicas export their own /metrics
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    },
}

# serve_app/configs/local.yaml's Ingress autoscaling (read from the file) in the fast mode the
# README gives (throughput-optimized Serve + HAProxy): what `serve run` users get
SERVE_VARIANTS["fast"] = {
    "args": _merge(
        SERVE_VARIANTS["repo"]["args"],
        {
            "deployment_options": {
                "Ingress": {
                    "autoscaling_config": serve_config(DEFAULT_SERVE_CONFIG)[1]["Ingress"][
                        "autoscaling_config"
                    ],
                    **_QUIET,
                },
            },
        },
    ),
    "env": SERVE_VARIANTS["colocated2"]["env"],
}

# as fast, with a batcher that never lingers (encoder_batch.linger_ms: 0; the default is 2)
SERVE_VARIANTS["fast-nolinger"] = {
    **SERVE_VARIANTS["fast"],
    "args": _merge(SERVE_VARIANTS["fast"]["args"], {"encoder_batch": {"linger_ms": 0.0}}),
}

# as fast, with queries sent to the index actor (no read replica in the Ingress replicas)
SERVE_VARIANTS["fast-actor"] = {
    **SERVE_VARIANTS["fast"],
    "args": _merge(SERVE_VARIANTS["fast"]["args"], {"index": {"read_replica": False}}),
}

# as fast, with the index in 2 shard actors: copies of both shards in each Ingress replica
# (fast-2shards), one ShardReader deployment per shard answering for them (fast-shard-readers:
# a query batch fans out to one reader replica of each shard), or the shard actors themselves
# (fast-2shard-actors)
_TWO = {"n_owners": 2}
_READER = {"ray_actor_options": {"num_cpus": 0.25}, **_QUIET}
SERVE_VARIANTS["fast-2shards"] = {
    **SERVE_VARIANTS["fast"],
    "args": _merge(SERVE_VARIANTS["fast"]["args"], {"index": _TWO}),
}
SERVE_VARIANTS["fast-shard-readers"] = {
    **SERVE_VARIANTS["fast"],
    "args": _merge(
        SERVE_VARIANTS["fast"]["args"],
        {
            "index": {**_TWO, "shard_readers": True},
            "deployment_options": {"ShardReader": _READER},
        },
    ),
}
SERVE_VARIANTS["fast-2shard-actors"] = {
    **SERVE_VARIANTS["fast"],
    "args": _merge(SERVE_VARIANTS["fast"]["args"], {"index": {**_TWO, "read_replica": False}}),
}

QUERY_SUBJECTS = [
    "a small dog",
    "a wooden chair",
    "an electric guitar",
    "a river fish",
    "a kitchen knife",
    "a tropical fruit",
    "a winter coat",
    "a church bell",
    "a sailing boat",
    "a desert plant",
    "a hunting bird",
    "a farm tool",
    "a musical instrument",
    "a chemical element",
    "a medical doctor",
    "a city in europe",
]
QUERY_FRAMES = [
    "{}",
    "what is {}",
    "{} used for cooking",
    "{} with long legs",
    "picture of {}",
    "{} that lives in water",
    "cheap {} for sale",
    "history of {}",
]


def query_texts() -> list[str]:
    """128 short, realistic query strings."""
    return [f.format(s) for s in QUERY_SUBJECTS for f in QUERY_FRAMES]


def item_texts(n: int, offset: int = 0, wordnet_dir: str = "/usr/share/wordnet") -> list[str]:
    """``n`` item texts: WordNet noun synsets ("lemma, lemma: gloss") if present, else synthetic."""
    path = os.path.join(wordnet_dir, "data.noun")
    if os.path.exists(path):
        from irene.data.wordnet import parse_data_noun

        synsets = list(parse_data_noun(path).values())
        if len(synsets) >= offset + n:
            rng = np.random.default_rng(0)
            pick = rng.permutation(len(synsets))[offset : offset + n]
            return [synsets[i].text[:200] for i in pick]
    rng = np.random.default_rng(offset)
    words = [s.split()[-1] for s in QUERY_SUBJECTS] + ["red", "old", "large", "used", "for", "in"]
    return [" ".join(rng.choice(words, size=8)) for _ in range(n)]


# --------------------------------------------------------------------------- bundle
def build_bundle(path: str, n_seen: int) -> str:
    """A bundle with the real default encoder; classifiers/generator are untrained stand-ins."""
    import torch

    from irene.bundle import save_bundle
    from irene.config import EncoderConfig, GeneratorConfig, TrainConfig
    from irene.model.classifiers import OVAClassifiers
    from irene.model.encoder import TextEncoder
    from irene.model.generator import IreneGenerator
    from irene.model.selector import Selector

    cfg = TrainConfig(encoder=EncoderConfig(), generator=GeneratorConfig(dropout=0.0))
    t0 = time.perf_counter()
    enc = TextEncoder.from_config(cfg.encoder)
    texts = item_texts(n_seen)
    emb = enc.encode(texts)  # (S, d)
    torch.manual_seed(0)
    clf = OVAClassifiers(torch.from_numpy(emb))
    with torch.no_grad():
        clf.delta.normal_(std=0.02)
    gen = IreneGenerator(emb.shape[1], cfg.generator).eval()
    ids = [f"seen-{i}" for i in range(n_seen)]
    note = "serve_bench: real encoder, untrained classifiers/generator (timings only)"
    save_bundle(path, enc, clf, gen, Selector(emb), ids, cfg, {"note": note})
    print(f"built bundle at {path}: {n_seen} seen items in {time.perf_counter() - t0:.0f}s")
    return path


def ensure_bundle(args) -> str:
    if args.bundle:
        return args.bundle
    path = os.path.join(args.out, f"bundle-minilm-{args.n_seen}")
    if args.rebuild_bundle or not _loads(path):
        shutil.rmtree(path, ignore_errors=True)
        build_bundle(path, args.n_seen)
    return path


def _loads(path: str) -> bool:
    """Whether a cached bundle exists and still loads with this code (else rebuild it)."""
    from irene.bundle import load_bundle

    try:
        load_bundle(path, device="cpu")
    except Exception as e:  # missing, or written by an older format/config
        print(f"rebuilding the bench bundle at {path}: {type(e).__name__}: {e}", flush=True)
        return False
    return True


# --------------------------------------------------------------------------- stats
def summarize(lat_s: list[float], wall_s: float, errors: int = 0) -> dict:
    a = np.asarray(lat_s) * 1000.0
    if len(a) == 0:
        return {"n": 0, "errors": errors, "wall_s": wall_s}
    return {
        "n": len(a),
        "errors": errors,
        "wall_s": round(wall_s, 3),
        "qps": round(len(a) / wall_s, 1),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- load generator
async def run_load(send, concurrency: int, duration_s: float, max_requests: int) -> dict:
    """``concurrency`` workers call ``await send(i)`` (True = ok) until time or count runs out."""
    lat: list[float] = []
    errors = 0
    counter = iter(range(max_requests))
    stop = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            ok = await send(i)
            if ok:
                lat.append(time.perf_counter() - t0)
            else:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return summarize(lat, time.perf_counter() - t0, errors)


def query_levels(args) -> list[tuple[int, float]]:
    """(concurrent clients, seconds) of each measured query phase, in order: ``--concurrency``'s
    levels at ``--duration-level-s`` each, else 1 client then ``--clients`` (today's pair)."""
    if args.concurrency:
        return [(c, args.duration_level_s) for c in args.concurrency]
    return [(1, args.duration_1_s), (args.clients, args.duration_n_s)]


def level_warmup_s(args) -> float:
    return min(args.level_warmup_s, args.warmup_s)


AFTER = "c1_after"  # 1 client again, right after the warm-up at the highest level


def query_phases(args) -> list[tuple[str | None, int, float]]:
    """The query phases in order, ``(result key, or None for a warm-up; clients; seconds)``.

    A lone client first: ``--warmup-s`` at 1 client, then the 1-client level (an autoscaled
    app runs the one replica a lone client keeps). Then ``--warmup-s`` at the highest level
    (the app scales up) and, with a 1-client level, 1 client again (``c1_after``): what a lone
    client gets while the replicas added under load are still up (``downscale_delay_s``;
    README: Serving speed) -- those ~10 s also let a replica just added finish starting. Then
    every other level, each after its own short warm-up."""
    levels = query_levels(args)
    top = max(c for c, _ in levels)
    first = [lv for lv in levels if lv[0] == 1]
    rest = [lv for lv in levels if lv[0] != 1]
    out: list[tuple[str | None, int, float]] = []
    for n, s in first:
        out += [(None, 1, args.warmup_s), (f"c{n}", n, s)]
    if rest:
        out.append((None, top, args.warmup_s))
        if first:
            out += [(None, 1, level_warmup_s(args)), (AFTER, 1, first[0][1])]
    for n, s in rest:
        out += [(None, n, level_warmup_s(args)), (f"c{n}", n, s)]
    return out


def query_suite(base_url: str, args, queries: list[str]) -> dict:
    """The phases of :func:`query_phases`: ``{"c<n>": summarize(...)}``, from ``--load``'s
    client."""
    if args.load == "httpx":
        return asyncio.run(http_query_suite(base_url, args, queries))
    bodies = [json.dumps({"text": t, "k": K}) for t in queries]
    out: dict = {}
    for key, n, seconds in query_phases(args):
        res = run_wrk(base_url, "/v1/query", bodies, n, seconds)
        if key:
            out[key] = res
    if any(v["errors"] for v in out.values()):  # wrk counts them; show what one looked like
        import httpx

        r = httpx.post(f"{base_url}/v1/query", content=bodies[0], timeout=60)
        out["first_error"] = f"{r.status_code} {r.text[:300]}"
    return out


async def http_query_suite(base_url: str, args, queries: list[str]) -> dict:
    """:func:`query_suite` with one ``httpx.AsyncClient`` in this process (``--load
    httpx``); ``client_cpu_s``: this process's CPU time during each phase."""
    import httpx

    levels = query_levels(args)
    top = max(c for c, _ in levels)
    limits = httpx.Limits(max_connections=top, max_keepalive_connections=top)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as c:
        first_error: list[str] = []

        async def send(i: int) -> bool:
            r = await c.post("/v1/query", json={"text": queries[i % len(queries)], "k": K})
            if r.status_code != 200 and not first_error:
                first_error.append(f"{r.status_code} {r.text[:300]}")
            return r.status_code == 200

        out = {}
        for key, n, seconds in query_phases(args):
            cpu0 = time.process_time()
            res = await run_load(send, n, seconds, args.max_requests if key else 10**9)
            if key:
                out[key] = {**res, "client_cpu_s": round(time.process_time() - cpu0, 3)}
    if first_error:
        out["first_error"] = first_error[0]
    return out


async def http_ingest(base_url: str, args, texts: list[str], tag: str) -> dict:
    import httpx

    bs = args.ingest_batch

    async with httpx.AsyncClient(base_url=base_url, timeout=120) as c:
        first_error: list[str] = []

        async def send(i: int) -> bool:
            items = [
                {"id": f"{tag}-{i}-{j}", "text": texts[(i * bs + j) % len(texts)]}
                for j in range(bs)
            ]
            r = await c.post("/v1/items", json={"items": items}, headers=AUTH)
            if r.status_code != 200 and not first_error:
                first_error.append(f"{r.status_code} {r.text[:300]}")
            return r.status_code == 200

        await run_load(send, args.ingest_clients, min(3.0, args.warmup_s), 10**9)
        res = await run_load(send, args.ingest_clients, args.duration_ingest_s, 10**9)
    res["items_per_s"] = round(res.get("qps", 0.0) * bs, 1)
    res["batch"] = bs
    res["clients"] = args.ingest_clients
    if first_error:
        res["first_error"] = first_error[0]
    return res


# --------------------------------------------------------------------------- (b) in-process
def _timed_loop(fn, duration_s: float, max_n: int) -> tuple[list[float], float]:
    lat = []
    t_start = time.perf_counter()
    stop = t_start + duration_s
    i = 0
    while time.perf_counter() < stop and i < max_n:
        t0 = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t0)
        i += 1
    return lat, time.perf_counter() - t_start


def inprocess_load(query, concurrency: int, duration_s: float, max_n: int, threads: int) -> dict:
    """``query(i)`` for ``duration_s``: 1 client = a loop in this thread (``threads`` torch/faiss
    threads); N clients = N threads, each running the unbatched pipeline with 1 thread."""
    from irene.device import set_threads

    if concurrency == 1:
        set_threads(threads)
        return summarize(*_timed_loop(query, duration_s, max_n))
    lat: list[float] = []
    lock = threading.Lock()
    counter = iter(range(max_n))
    stop = time.perf_counter() + duration_s

    def client() -> None:
        set_threads(1)
        mine = []
        while time.perf_counter() < stop:
            i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            query(i)
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: client(), range(concurrency)))
    res = summarize(lat, time.perf_counter() - t0)
    set_threads(threads)
    return res


@contextmanager
def inprocess_pipeline(bundle_uri: str, queries: list[str]):
    """``(bundle, index, query)``: the in-process pipeline over a fresh durable index of the
    bundle's items; ``query(i)`` encodes ``queries[i]``, searches and looks up the top-K hits
    (string ids and records, as the app answers)."""
    from irene.bundle import load_bundle
    from irene.index.log import DurableIndex

    bundle = load_bundle(bundle_uri, device="cpu")
    tmp = tempfile.mkdtemp(prefix="serve-bench-idx-")
    index = DurableIndex.open(tmp, bundle.dim, None, N_SHARDS, snapshot_every=0)
    try:
        index.add(bundle.item_ids, bundle.seen_classifiers())

        def query(i: int):
            q = bundle.encoder.encode([queries[i % len(queries)]])  # (1, d)
            _, ids = index.search(q, K)
            return index.lookup(ids[0])

        yield bundle, index, query
    finally:
        index.close()
        shutil.rmtree(tmp, ignore_errors=True)


def bench_inprocess(bundle_uri: str, args, queries: list[str], items: list[str]) -> dict:
    from irene.device import set_threads

    threads = set_threads(args.threads)
    with inprocess_pipeline(bundle_uri, queries) as (bundle, index, query):
        queries_res = {}
        for key, n, seconds in query_phases(args):
            res = inprocess_load(query, n, seconds, args.max_requests if key else 10**9, threads)
            if key:
                queries_res[key] = res

        # ingest: encode + synthesize + durable add, batches of ingest_batch, 1 client
        bs = args.ingest_batch

        def ingest(i: int):
            batch = [items[(i * bs + j) % len(items)] for j in range(bs)]
            emb = bundle.encoder.encode(batch)  # (bs, d)
            clf = bundle.synthesize(emb)  # (bs, d)
            index.add([f"inproc-{i}-{j}" for j in range(bs)], clf)

        _timed_loop(ingest, min(3.0, args.warmup_s), 10**9)
        ing = summarize(*_timed_loop(ingest, args.duration_ingest_s, 10**9))
        ing["items_per_s"] = round(ing["qps"] * bs, 1)
        ing["batch"] = bs
        ing["clients"] = 1

        gen = bench_generator(bundle, items, args.duration_gen_s)
        enc = bench_encoder(bundle, queries, args.duration_gen_s)
    return {
        "threads": threads,
        "query": queries_res,
        "ingest": ing,
        "generator": gen,
        "encoder": enc,
    }


def bench_generator(bundle, items: list[str], duration_s: float) -> dict:
    """bundle.synthesize time per item, single items and batches (selector kNN included)."""
    emb = bundle.encoder.encode(items[:256])  # (256, d)
    out = {}
    for bs in (1, 32, 256):
        x = emb[:bs]
        bundle.synthesize(x)  # warm-up
        lat, wall = _timed_loop(lambda _i, x=x: bundle.synthesize(x), duration_s, 10**6)
        per_call = float(np.median(lat))
        out[f"batch_{bs}"] = {
            "calls": len(lat),
            "ms_per_call_p50": round(per_call * 1000, 3),
            "ms_per_item": round(per_call * 1000 / bs, 4),
        }
    return out


def bench_encoder(bundle, queries: list[str], duration_s: float) -> dict:
    """Encoder time per query text: 1 text vs a batch of 16 (what micro-batching buys)."""
    out = {}
    for bs in (1, 16):
        texts = queries[:bs]
        bundle.encoder.encode(texts)
        lat, _ = _timed_loop(lambda _i, t=texts: bundle.encoder.encode(t), duration_s, 10**6)
        per_call = float(np.median(lat))
        out[f"batch_{bs}"] = {
            "ms_per_call_p50": round(per_call * 1000, 3),
            "ms_per_text": round(per_call * 1000 / bs, 3),
        }
    return out


# --------------------------------------------------------------------------- (c) plain
def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: service exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready within {timeout_s}s")


def _wait_workers(url: str, workers: int, timeout_s: float) -> None:
    """Until ``workers`` distinct processes have answered ``url`` (each answer names its pid)."""
    import httpx

    pids: set = set()
    deadline = time.monotonic() + timeout_s
    while len(pids) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}: {len(pids)} of {workers} workers up in {timeout_s}s")
        pids.add(httpx.get(url, timeout=5).json()["pid"])  # a new connection each time
        time.sleep(0.05)


def bench_plain(bundle_uri: str, args, queries: list[str], workers: int = 1) -> dict:
    port = free_local_port()
    cmd = [
        sys.executable,
        str(REPO / "bench" / "plain_service.py"),
        "--bundle",
        bundle_uri,
        "--port",
        str(port),
        "--threads",
        str(args.threads),
        "--max-batch",
        str(args.plain_max_batch),
        "--wait-ms",
        str(args.plain_wait_ms),
        "--n-shards",
        str(N_SHARDS),
        "--workers",
        str(workers),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO))
    try:
        t0 = time.perf_counter()
        _wait_http(f"http://127.0.0.1:{port}/healthz", 180, proc)
        _wait_workers(f"http://127.0.0.1:{port}/healthz", workers, 180)
        startup = time.perf_counter() - t0
        res = query_suite(f"http://127.0.0.1:{port}", args, queries)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "settings": {
            "max_batch": args.plain_max_batch,
            "wait_ms": args.plain_wait_ms,
            "workers": workers,
        },
        "startup_s": round(startup, 1),
        "query": res,
    }


# --------------------------------------------------------------------------- (a) Serve
def kill_index_actors(name: str, namespace: str, n_owners: int) -> None:
    """Kill the index's named, detached shard actors (one per owner; ``name`` itself when 1)."""
    import ray

    from irene.index.router import owner_name

    for i in range(n_owners):
        try:
            ray.kill(ray.get_actor(owner_name(name, i, n_owners), namespace=namespace))
        except ValueError:  # never created (the app failed first) or already gone
            pass


def bench_serve(
    bundle_uri: str, args, variant: str, queries: list[str], items: list[str], suite=None
) -> dict:
    """Serve ``variant`` of the app, then ``suite(url, args, queries)`` (default
    :func:`query_suite`) and, with ``items``, the HTTP ingest."""
    import ray
    from ray import serve

    from serve_app.app import build_app

    spec = SERVE_VARIANTS[variant]
    tmp = tempfile.mkdtemp(prefix="sb-", dir="/tmp")
    index_name = f"bench-index-{uuid.uuid4().hex[:8]}"
    namespace = "irene-serve-bench"
    env_keys = {"RAY_AUTH_MODE": "disabled", **spec["env"]}
    direct_port = free_local_port() if spec.get("direct_ingress") else None
    if direct_port:  # the (single) Ingress replica listens here
        env_keys["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(direct_port)
        env_keys["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(direct_port + 100)
    old_env = {k: os.environ.get(k) for k in env_keys}
    old_bundle = os.environ.pop("IRENE_BUNDLE", None)
    os.environ.update(env_keys)
    port = free_local_port()
    base = {
        "bundle": bundle_uri,
        "index": {
            "uri": os.path.join(tmp, "index"),
            "name": index_name,
            "namespace": namespace,
            "n_shards": N_SHARDS,
            "num_cpus": 0.25,
            "snapshot_every": 0,
        },
        "auth": {"token": TOKEN, "token_env": "IRENE_BENCH_UNSET_TOKEN"},
    }
    app_args = _merge(base, spec["args"])
    try:
        ray.init(
            num_cpus=os.cpu_count() or 2,
            include_dashboard=False,
            namespace=namespace,
            _temp_dir=os.path.join(tmp, "ray"),
            log_to_driver=False,
            configure_logging=True,
            logging_level="WARNING",
        )
        t0 = time.perf_counter()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(app_args), name="irene", route_prefix="/")
        url = f"http://127.0.0.1:{direct_port or port}"
        _wait_http(f"{url}/readyz", 300)
        startup = time.perf_counter() - t0
        res = (suite or query_suite)(url, args, queries)
        # replicas running after the query phases (autoscaled variants)
        status = serve.status().applications["irene"].deployments
        replicas = {name: dict(d.replica_states) for name, d in status.items()}
        tag = f"{variant}-{uuid.uuid4().hex[:6]}"
        ing = asyncio.run(http_ingest(url, args, items, tag)) if items else None
    finally:
        try:
            serve.shutdown()
            if ray.is_initialized():
                kill_index_actors(index_name, namespace, app_args["index"].get("n_owners", 1))
        finally:
            ray.shutdown()
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            if old_bundle is not None:
                os.environ["IRENE_BUNDLE"] = old_bundle
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "settings": spec,
        "startup_s": round(startup, 1),
        "replicas_after_queries": replicas,
        "query": res,
        "ingest": ing,
    }


# --------------------------------------------------------------------------- report
def _q(res: dict, c: str, key: str):
    v = res.get(c, {}).get(key)
    return "-" if v is None else v


def _ratio(a, b) -> str:
    try:
        return f"{float(a) / float(b):.2f}"
    except (TypeError, ValueError, ZeroDivisionError):
        return "-"


def markdown(report: dict, clients: int) -> str:
    cN = f"c{clients}"
    inproc = report["inprocess"]
    plain = report.get("plain")
    rows = [("in-process", inproc["query"], inproc["ingest"])]
    if plain:
        rows.append(("plain FastAPI", plain["query"], None))
    for name, res in report.get("serve", {}).items():
        rows.append((f"Serve: {name}", res["query"], res["ingest"]))
    ip50 = _q(inproc["query"], "c1", "p50_ms")
    pqps = _q(plain["query"], cN, "qps") if plain else None
    lines = [
        f"| system | 1 client p50 ms | p99 ms | {clients} clients QPS | p50 ms | p99 ms "
        "| ingest items/s | p50 (1c) / in-process | QPS / plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, q, ing in rows:
        lines.append(
            f"| {name} | {_q(q, 'c1', 'p50_ms')} | {_q(q, 'c1', 'p99_ms')} "
            f"| {_q(q, cN, 'qps')} | {_q(q, cN, 'p50_ms')} | {_q(q, cN, 'p99_ms')} "
            f"| {ing['items_per_s'] if ing else '-'} "
            f"| {_ratio(_q(q, 'c1', 'p50_ms'), ip50)} | {_ratio(_q(q, cN, 'qps'), pqps)} |"
        )
    gen = inproc["generator"]
    lines += [
        "",
        "Generator (bundle.synthesize: selector kNN + IRENE generator), in-process:",
        "",
        "| batch | ms per call (p50) | ms per item |",
        "|---:|---:|---:|",
    ]
    for k, v in gen.items():
        lines.append(f"| {k.split('_')[1]} | {v['ms_per_call_p50']} | {v['ms_per_item']} |")
    enc = inproc["encoder"]
    lines += [
        "",
        "Encoder alone, in-process: "
        + ", ".join(f"{k}: {v['ms_per_text']} ms/text" for k, v in enc.items()),
    ]
    return "\n".join(lines)


# --systems names of the plain service -> its uvicorn worker processes; "plain" is the
# reference the Serve variants' ratios are taken against
PLAIN_SYSTEMS = {"plain": 1, "plain2": 2}
SYSTEM_LABELS = {
    "inprocess": "in-process",
    "plain": "plain FastAPI",
    "plain2": "plain FastAPI, 2 workers",
}


def concurrency_report(report: dict, args) -> dict:
    """QPS / p50 / p99 per system per ``--concurrency`` level, and each Serve variant's QPS
    over the plain service's and the in-process pipeline's at the same level."""
    systems = {"inprocess": report["inprocess"]["query"]}
    for name in PLAIN_SYSTEMS:
        if name in report:
            systems[name] = report[name]["query"]
    for name, res in report.get("serve", {}).items():
        systems[f"serve:{name}"] = res["query"]
    keys = ("qps", "p50_ms", "p99_ms", "mean_ms", "n", "errors", "client_cpu_s")
    cols = [(str(c), f"c{c}") for c in args.concurrency]  # (column, result key)
    if any(AFTER in q for q in systems.values()):
        cols.append((f"1 after {max(args.concurrency)}", AFTER))
    table = {
        sys_: {col: {k: q.get(key, {}).get(k) for k in keys} for col, key in cols}
        for sys_, q in systems.items()
    }

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    # the in-process pipeline has no replicas to scale: "1 after" is compared with its 1 client
    base = {col: "1" if key == AFTER else col for col, key in cols}
    ratios = {
        sys_: {
            col: {
                **{
                    f"qps_vs_{name}": ratio(
                        row[col]["qps"], table.get(name, {}).get(col, {}).get("qps")
                    )
                    for name in PLAIN_SYSTEMS
                    if name == "plain" or name in table
                },
                "qps_vs_inprocess": ratio(row[col]["qps"], table["inprocess"][base[col]]["qps"]),
                "p50_vs_inprocess": ratio(
                    row[col]["p50_ms"], table["inprocess"][base[col]]["p50_ms"]
                ),
            }
            for col, _ in cols
        }
        for sys_, row in table.items()
        if sys_ != "inprocess"
    }
    return {
        "started_at": report["started_at"],
        "argv": report["argv"],
        "cpus": report["cpus"],
        "bundle": report["bundle"],
        "note": report["note"],
        "smoke": bool(args.smoke),
        "levels": list(args.concurrency),
        "settings": {
            "warmup_s": args.warmup_s,
            "level_warmup_s": level_warmup_s(args),
            "duration_level_s": args.duration_level_s,
            "max_requests": args.max_requests,
            "k": K,
            "n_shards": N_SHARDS,
            "threads": args.threads,
            "load": args.load,
            "n_queries": len(query_texts()),
            "variants": {
                name.removeprefix("serve:"): report["serve"][name.removeprefix("serve:")][
                    "settings"
                ]
                for name in systems
                if name.startswith("serve:")
            },
        },
        "loadavg": report["loadavg"],
        "total_s": report.get("total_s"),
        "systems": table,
        "ratios": ratios,
    }


def _label(system: str) -> str:
    return SYSTEM_LABELS.get(system, system.replace("serve:", "Serve: "))


def _fmt(v) -> str:
    return "-" if v is None else f"{v}"


LOAD_LABEL = {
    "wrk": "wrk (1 thread, one keep-alive connection per client; bench/wrk_load.py)",
    "httpx": "one httpx.AsyncClient in the bench process",
}


def _per_request_ms(r: dict) -> str:
    cpu, n = r.get("client_cpu_s"), r.get("n")
    return "-" if cpu is None or not n else f"{1000 * cpu / n:.3f}"


def concurrency_markdown(conc: dict) -> str:
    s = conc["settings"]
    lines = [
        "# Serving throughput vs concurrency (bench/serve_bench.py)",
        "",
        f"Bundle: `{conc['bundle']}` ({conc['note'] or 'no note'}); {conc['cpus']} cores; "
        f"k={s['k']}, {s['n_shards']} index shards, {s['n_queries']} query texts cycled.",
        f"Per system: {s['warmup_s']} s warm-up at 1 client and the 1-client level, then "
        f"{s['warmup_s']} s warm-up at {max(conc['levels'])} clients, 1 client again and the "
        f"other levels; per level {s['level_warmup_s']} s warm-up + {s['duration_level_s']} s "
        "measured"
        + (f" (at most {s['max_requests']} requests)" if s.get("load") != "wrk" else "")
        + ". Load (HTTP systems): "
        + LOAD_LABEL[s.get("load", "httpx")]
        + "; in-process: N threads over encode + search. `client ms/req`: the load "
        "generator's CPU per answered request. `1 after N`: 1 client again right after the "
        "warm-up at N clients (replicas added under load still up); its ratios are to the "
        "in-process pipeline's 1-client level.",
        f"Load average (1/5/15 min): {conc['loadavg']}." + (" SMOKE run." if conc["smoke"] else ""),
        "",
    ]
    refs = [name for name in PLAIN_SYSTEMS if name == "plain" or name in conc["systems"]]
    lines += [
        "| system | clients | QPS | p50 ms | p99 ms | errors | "
        + " | ".join(f"QPS / {_label(name)}" for name in refs)
        + " | QPS / in-process | p50 / in-process | client ms/req |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * (len(refs) + 3),
    ]
    for sys_, row in conc["systems"].items():
        for col, r in row.items():
            rat = conc["ratios"].get(sys_, {}).get(col, {})
            lines.append(
                f"| {_label(sys_)} | {col} | {_fmt(r['qps'])} | {_fmt(r['p50_ms'])} "
                f"| {_fmt(r['p99_ms'])} | {_fmt(r['errors'])} | "
                + " | ".join(_fmt(rat.get(f"qps_vs_{name}")) for name in refs)
                + f" | {_fmt(rat.get('qps_vs_inprocess'))} | {_fmt(rat.get('p50_vs_inprocess'))}"
                f" | {_per_request_ms(r)} |"
            )
    return "\n".join(lines) + "\n"


def concurrency_plot(conc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    levels = conc["levels"]
    fig, (ax_q, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    for sys_, row in conc["systems"].items():
        qps = [row[str(c)]["qps"] or np.nan for c in levels]
        p99 = [row[str(c)]["p99_ms"] or np.nan for c in levels]
        (line,) = ax_q.plot(levels, qps, marker="o", label=_label(sys_))
        ax_p.plot(levels, p99, marker="o", color=line.get_color(), label=_label(sys_))
    for ax, title, ylabel in (
        (ax_q, "Throughput", "QPS"),
        (ax_p, "Tail latency", "p99 latency (ms)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax_p.set_yscale("log")
    ax_p.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_p.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_q.set_ylim(bottom=0)
    ax_q.legend(fontsize=8)
    fig.suptitle(f"serve_bench on {conc['cpus']} cores" + (" (smoke)" if conc["smoke"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_concurrency(report: dict, args) -> dict:
    conc = concurrency_report(report, args)
    base = os.path.join(args.out, "serve_concurrency")
    with open(base + ".json", "w") as f:
        json.dump(conc, f, indent=2)
    with open(base + ".md", "w") as f:
        f.write(concurrency_markdown(conc))
    concurrency_plot(conc, base + ".png")
    return conc


def parse_levels(text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]`` (sorted, deduplicated; ``""`` -> ``[]``)."""
    try:
        levels = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ints: {text!r}") from None
    if any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1: {text!r}")
    return levels


# --smoke: a tiny bundle and second-long phases (tests/bench/test_serve_bench.py); applied to
# every option still at its default
SMOKE = {
    "concurrency": [1, 4],
    "n_seen": 200,
    "variants": "repo",
    "warmup_s": 1.0,
    "level_warmup_s": 0.5,
    "duration_level_s": 1.0,
    "duration_ingest_s": 1.0,
    "duration_gen_s": 0.2,
    "ingest_batch": 8,
    "ingest_clients": 2,
}


def ensure_smoke_bundle(args) -> str:
    """A tiny random-encoder bundle (``tests.helpers.make_tiny_bundle``), cached under --out."""
    path = os.path.join(args.out, f"bundle-tiny-{args.n_seen}")
    if not os.path.exists(os.path.join(path, "manifest.json")) or not _loads(path):
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from tests.helpers import make_tiny_bundle

        shutil.rmtree(path, ignore_errors=True)
        make_tiny_bundle(path, n_seen=args.n_seen)
    return path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", help="bundle dir or s3:// prefix (default: build one)")
    p.add_argument("--out", default="runs/serve_bench", help="JSON results (and built bundle)")
    p.add_argument("--n-seen", type=int, default=5000, help="seen items of a built bundle")
    p.add_argument("--rebuild-bundle", action="store_true")
    p.add_argument(
        "--variants",
        default="defaults,tuned",
        help=f"comma-separated Serve settings to run, of {sorted(SERVE_VARIANTS)} "
        "(list one twice to run it twice)",
    )
    p.add_argument(
        "--systems",
        default="inprocess,plain,serve",
        help="of inprocess, plain, plain2 (the plain service with 2 uvicorn workers), serve",
    )
    p.add_argument("--clients", type=int, default=16)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/faiss threads of in-process and plain (1: OpenMP teams thrash on busy cores)",
    )
    p.add_argument(
        "--warmup-s",
        type=float,
        default=20.0,
        help="load before measuring, per system (steady state: see the README)",
    )
    p.add_argument("--duration-1-s", type=float, default=6.0, help="1-client query phase")
    p.add_argument("--duration-n-s", type=float, default=10.0, help="N-client query phase")
    p.add_argument("--duration-ingest-s", type=float, default=6.0)
    p.add_argument("--duration-gen-s", type=float, default=2.0)
    p.add_argument(
        "--max-requests",
        type=int,
        default=20000,
        help="per measured phase (in-process and --load httpx; wrk runs for the duration)",
    )
    p.add_argument(
        "--concurrency",
        type=parse_levels,
        default=[],
        help="comma-separated client counts, e.g. 1,4,16,32: each system's queries measured at "
        "each (replaces the 1-client/--clients pair); also writes <out>/serve_concurrency.*",
    )
    p.add_argument(
        "--duration-level-s",
        type=float,
        default=8.0,
        help="measured seconds per --concurrency level",
    )
    p.add_argument(
        "--level-warmup-s",
        type=float,
        default=2.0,
        help="warm-up before each query level (capped at --warmup-s)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny bundle, ~1 s phases, concurrency 1,4, Serve variant {SMOKE['variants']!r} "
        "(tests); explicit options win",
    )
    p.add_argument(
        "--load",
        choices=["wrk", "httpx"],
        default="wrk" if wrk_available() else "httpx",
        help="query load generator: wrk (C, the default when installed; bench/wrk_load.py) or "
        "one httpx.AsyncClient in this process (~3 ms CPU per request on these cores)",
    )
    p.add_argument("--ingest-batch", type=int, default=32)
    p.add_argument("--ingest-clients", type=int, default=4)
    p.add_argument("--plain-max-batch", type=int, default=32)
    p.add_argument("--plain-wait-ms", type=float, default=2.0)
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    unknown = set(args.variants.split(",")) - set(SERVE_VARIANTS)
    if unknown:
        p.error(f"unknown --variants {sorted(unknown)}; known: {sorted(SERVE_VARIANTS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    systems = set(args.systems.split(","))
    t_start = time.perf_counter()
    report: dict = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "argv": sys.argv if argv is None else ["bench/serve_bench.py", *argv],
        "cpus": os.cpu_count(),
        "loadavg": {"start": loadavg()},
        "note": "",
    }
    bundle = ensure_smoke_bundle(args) if args.smoke and not args.bundle else ensure_bundle(args)
    report["bundle"] = bundle
    from irene.bundle import read_manifest

    manifest = read_manifest(bundle)
    report["note"] = manifest.get("metrics", {}).get("note", "")
    queries = query_texts()
    items = item_texts(2048, offset=args.n_seen)

    if "inprocess" in systems or "plain" in systems or "serve" in systems:
        report["inprocess"] = bench_inprocess(bundle, args, queries, items)
        report["loadavg"]["after_inprocess"] = loadavg()
        print("in-process:", json.dumps(report["inprocess"]["query"]), flush=True)
    for name in PLAIN_SYSTEMS:
        if name in systems:
            report[name] = bench_plain(bundle, args, queries, PLAIN_SYSTEMS[name])
            report["loadavg"][f"after_{name}"] = loadavg()
            print(f"{name}:", json.dumps(report[name]["query"]), flush=True)
    if "serve" in systems:
        report["serve"] = {}
        for v in args.variants.split(","):
            name, n = v, 1
            while name in report["serve"]:  # a variant listed again: another run of it
                n += 1
                name = f"{v} ({n})"
            report["serve"][name] = bench_serve(bundle, args, v, queries, items)
            report["loadavg"][f"after_serve_{name}"] = loadavg()
            res = report["serve"][name]
            print(
                f"serve {name}:",
                json.dumps(res["query"]),
                json.dumps(res["ingest"]),
                json.dumps(res["replicas_after_queries"]),
                flush=True,
            )
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    clients = args.clients
    if args.concurrency and clients not in args.concurrency:
        clients = max(args.concurrency)
    table = markdown(report, clients)
    report["table"] = table
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"serve_bench-{stamp}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print()
    print(f"bundle: {bundle} ({report['note']})")
    print(f"load average (1/5/15 min): {report['loadavg']}  on {os.cpu_count()} cores")
    print(table)
    print(f"\nwrote {path} ({report['total_s']}s total)")
    if args.concurrency:
        conc = write_concurrency(report, args)
        print()
        print(concurrency_markdown(conc))
        print(f"wrote {os.path.join(args.out, 'serve_concurrency')}.{{json,md,png}}")


if __name__ == "__main__":
    main()

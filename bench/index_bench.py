"""Side-by-side FAISS index benchmark: flat / hnsw / ivf / ivfpq, raw FAISS vs irene wrappers.

    python bench/index_bench.py --sizes 100000,1000000 --out bench/results/index \\
        [--kinds flat,hnsw,ivf,ivfpq] [--queries 1000] [--real EMB.npy] [--smoke]

Writes ``OUT.json``, ``OUT.md`` (Markdown tables) and ``OUT.png`` (recall@10 vs QPS per size).

For every size and kind three *modes* are measured:

* ``raw``      -- the FAISS index used directly (``IndexFlatIP``, ``IndexHNSWFlat``,
  ``IndexIVFFlat``, ``IndexIVFPQ``; no id map, no direct map, no Python wrapper);
* ``shard``    -- ``irene.index.shard.Shard`` (one shard, int64 ids);
* ``sharded4`` -- ``irene.index.sharded.ShardedIndex`` with 4 in-process shards (string ids,
  per-shard search + merge in Python).

Metrics: build time (train + add, in ``--add-batch`` batches), add throughput, search QPS at
batch 1 and at batch ``--batch`` (64), recall@10 against exact inner-product search
(``faiss.IndexFlatIP``; a retrieved id also counts as a hit when its exact score ties the
10th true score within 1e-5) and FAISS memory per vector (``Shard.memory_bytes() / n``: the
serialised size of the FAISS index, see ``irene.index.shard``). Speed-ups are QPS divided by
the raw exact flat QPS at the same batch size and data size.

The search knobs (``nprobe`` for the IVF kinds, ``efSearch`` for HNSW) are swept on the
``shard`` mode; the operating point used for every mode is the smallest knob value reaching
``--target-recall`` (0.95), or, when no value does, the smallest one within 0.005 of the best
recall seen. The swept curve is what the plot shows.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss  # faiss before anything that may pull in torch
import numpy as np

from irene.index.shard import IndexSpec, Shard
from irene.index.sharded import ShardedIndex

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is a project dependency

    def tqdm(it, **_kw):
        return it


log = logging.getLogger("index_bench")

KINDS = ("flat", "hnsw", "ivf", "ivfpq")
MODES = ("raw", "shard", "sharded4")
K = 10
TIE_EPS = 1e-5
SWEEP = {"hnsw": (16, 32, 64, 128, 256), "ivf": (4, 8, 16, 32, 64, 128)}
SWEEP["ivfpq"] = SWEEP["ivf"]


# ----------------------------------------------------------------------------- data
def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    return x


class SyntheticSource:
    """Clustered vectors with a low intrinsic dimension, L2-normalised.

    A latent Gaussian mixture (``n_clusters`` centres in ``latent``-d space, Zipf-like
    cluster sizes, a per-cluster spread) is mapped into ``dim`` dimensions by a fixed random
    linear map, plus isotropic noise (``noise`` relative to the signal norm), then
    normalised. Sentence embeddings look like this more than uniform random vectors do:
    clustered, anisotropic, and of an intrinsic dimension far below ``dim``.
    """

    def __init__(
        self,
        dim: int,
        seed: int,
        n_clusters: int = 1000,
        latent: int = 64,
        noise: float = 0.3,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.latent, self.noise = dim, min(latent, dim), noise
        self.proj = rng.standard_normal((self.latent, dim), dtype=np.float32)  # (latent, dim)
        self.proj /= np.sqrt(self.latent)
        self.centres = rng.standard_normal((n_clusters, self.latent), dtype=np.float32)
        w = 1.0 / np.arange(1, n_clusters + 1) ** 0.5
        self.weights = w / w.sum()
        self.spread = rng.uniform(0.7, 1.2, n_clusters).astype(np.float32)
        self.description = (
            f"synthetic: Gaussian mixture of {n_clusters} clusters (Zipf^0.5 sizes, per-cluster "
            f"spread U(0.7, 1.2), overlapping) in a {self.latent}-d latent space, mapped to {dim}-d by a "
            f"fixed random linear map, plus isotropic noise at {noise:.2f} of the signal "
            "norm, L2-normalised. Database and queries are independent draws (queries held "
            "out). Sizes are prefixes of one draw."
        )

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for lo in range(0, n, chunk):
            m = min(chunk, n - lo)
            c = rng.choice(len(self.weights), size=m, p=self.weights)
            z = self.centres[c] + self.spread[c, None] * rng.standard_normal(
                (m, self.latent), dtype=np.float32
            )
            x = z @ self.proj  # (m, dim)
            scale = self.noise * np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(self.dim)
            x += scale * rng.standard_normal((m, self.dim), dtype=np.float32)
            out[lo : lo + m] = _normalise(x)
        return out


class RealSource:
    """Real embeddings from an ``.npy`` file (n, dim): held-out rows are the queries; beyond
    the file's size the base is repeated, each copy perturbed with isotropic Gaussian noise
    of norm ``perturb`` (then re-normalised)."""

    def __init__(self, path: str, n_queries: int, perturb: float, seed: int) -> None:
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 2:
            raise ValueError(f"{path}: expected a 2-d array, got shape {arr.shape}")
        base = _normalise(np.array(arr, dtype=np.float32))
        self.dim, self.perturb, self.seed = base.shape[1], perturb, seed
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(base))
        if len(base) >= 4 * n_queries:
            self.queries = base[order[:n_queries]]
            self.base = base[order[n_queries:]]
            qdesc = f"{n_queries} held-out rows of the file"
        else:
            self.base = base[order]
            self.queries = self._perturbed(self.base[rng.integers(0, len(base), n_queries)], rng)
            qdesc = f"{n_queries} perturbed base rows (file too small to hold rows out)"
        self.description = (
            f"real: {len(base)} x {self.dim} embeddings from {path}. Base = {len(self.base)} "
            f"rows; sizes beyond it repeat the base, each repeat perturbed by isotropic "
            f"Gaussian noise of norm {perturb} and re-normalised. Queries: {qdesc}."
        )

    def _perturbed(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        g = rng.standard_normal(x.shape, dtype=np.float32)
        g *= self.perturb / np.linalg.norm(g, axis=1, keepdims=True)
        return _normalise(x + g)

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        b = len(self.base)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            idx = np.arange(lo, hi) % b
            rows = self.base[idx]
            copy = np.arange(lo, hi) >= b  # the first pass over the base is unperturbed
            if copy.any():
                rows[copy] = self._perturbed(rows[copy], rng)
            out[lo:hi] = rows
        return out


# ----------------------------------------------------------------------------- params
def choose_nlist(n: int, cap: int) -> int:
    """A power of two near 2*sqrt(n), at most ``cap`` and trainable (n / 39 points per list)."""
    target = min(2.0 * math.sqrt(n), n / 39.0, float(cap))
    return max(1, 2 ** int(math.floor(math.log2(max(target, 1.0)))))


def choose_pq_m(dim: int, want: int) -> int:
    """The largest divisor of ``dim`` that is <= ``want`` (Shard itself requires a divisor)."""
    return max(m for m in range(1, min(want, dim) + 1) if dim % m == 0)


def choose_pq_nbits(n: int, want: int) -> int:
    """At most ``want`` bits, and few enough that 39 * 2**nbits <= n (trainable)."""
    return max(1, min(want, int(math.floor(math.log2(max(n / 39.0, 2.0))))))


@dataclass
class Plan:
    """Per-size parameters, chosen up front so every mode uses the same ones."""

    n: int
    hnsw_m: int
    hnsw_efc: int
    raw_builds: bool  # False: raw rows search the index built inside the Shard
    nlist: dict[str, int] = field(default_factory=dict)  # mode -> nlist (per shard)
    pq_m: int = 48
    pq_nbits: dict[str, int] = field(default_factory=dict)  # mode -> nbits (per shard)
    rerank: int = 0  # IVF-PQ in shard / sharded4: fp16 re-rank of the top rerank * k
    notes: list[str] = field(default_factory=list)
    skip: list[tuple[str, str]] = field(default_factory=list)  # (kind, mode) not measured


def make_plan(n: int, dim: int, args) -> Plan:
    large = n > args.large
    plan = Plan(
        n=n,
        hnsw_m=args.hnsw_m_large if large else args.hnsw_m,
        hnsw_efc=args.hnsw_efc_large if large else args.hnsw_efc,
        raw_builds=not large,
        pq_m=choose_pq_m(dim, args.pq_m),
        rerank=args.rerank,
    )
    if args.rerank:
        plan.notes.append(
            f"IVF-PQ `shard` and `sharded4` re-rank the top {args.rerank} x 10 PQ candidates "
            "with fp16 copies of the vectors (`IndexSpec.rerank`); the `raw` row is plain IVF-PQ."
        )
    for mode in MODES:
        per_shard = n // 4 if mode == "sharded4" else n
        plan.nlist[mode] = choose_nlist(per_shard, args.nlist_max)
        plan.pq_nbits[mode] = choose_pq_nbits(per_shard, args.pq_nbits)
    if large:
        plan.notes.append(
            f"n={n:,} > {args.large:,}: HNSW built with M={plan.hnsw_m}, "
            f"efConstruction={plan.hnsw_efc} (not M={args.hnsw_m}, efConstruction="
            f"{args.hnsw_efc}) to fit the time budget on this machine."
        )
        plan.notes.append(
            f"n={n:,} > {args.large:,}: the raw-FAISS rows are *not* built separately; they "
            "search the very FAISS index built inside the `shard` row (its inner "
            "IndexFlatIP / IndexHNSWFlat, or the IndexIVF itself), so their QPS shows the "
            "search-path overhead exactly and their build columns repeat the shard's."
        )
    if large and args.skip_large_sharded_hnsw and "sharded4" in args.modes:
        plan.skip.append(("hnsw", "sharded4"))
        plan.notes.append(
            f"n={n:,} > {args.large:,}: HNSW `sharded4` is NOT measured (a second HNSW build of "
            "n vectors would not fit the time budget on this machine; rerun with "
            "--no-skip-large-sharded-hnsw to include it)."
        )
    if plan.pq_m != args.pq_m:
        plan.notes.append(f"pq_m={args.pq_m} does not divide dim={dim}: using pq_m={plan.pq_m}.")
    return plan


def spec_for(kind: str, mode: str, plan: Plan, knob: int | None) -> IndexSpec:
    kw: dict = {"kind": kind, "use_gpu": False}
    if kind == "hnsw":
        kw.update(hnsw_m=plan.hnsw_m, hnsw_ef_construction=plan.hnsw_efc)
        if knob:
            kw["ef_search"] = knob
    if kind in ("ivf", "ivfpq"):
        kw["ivf_nlist"] = plan.nlist[mode]
        if knob:
            kw["nprobe"] = knob
    if kind == "ivfpq":
        kw.update(pq_m=plan.pq_m, pq_nbits=plan.pq_nbits[mode], rerank=plan.rerank)
    return IndexSpec(**kw)


# ----------------------------------------------------------------------------- measuring
def time_search(search, q: np.ndarray, batch: int, max_queries: int, budget_s: float):
    """Run ``search`` over ``q`` in calls of ``batch`` queries until ``max_queries`` are done
    or ``budget_s`` passed (at least one call, after one untimed single-query warm-up call).
    Returns (qps, results per call, queries done)."""
    search(q[:1])  # warm-up
    out, done, t0 = [], 0, time.perf_counter()
    while done < min(max_queries, len(q)):
        out.append(search(q[done : done + batch]))
        done += len(q[done : done + batch])
        if time.perf_counter() - t0 > budget_s:
            break
    return done / (time.perf_counter() - t0), out, done


def recall_at_k(x: np.ndarray, q: np.ndarray, got: np.ndarray, gt: np.ndarray, gt_kth) -> float:
    """Mean recall@k of ``got`` (m, k) ids against ``gt`` (m, k), counting score ties."""
    m, k = got.shape
    hits = 0
    for i in range(m):
        g = got[i][got[i] >= 0]
        inside = np.isin(g, gt[i])
        if not inside.all():  # an outside id may tie the k-th true score
            s = x[g[~inside]] @ q[i]
            inside[~inside] = s >= gt_kth[i] - TIE_EPS
        hits += min(k, int(inside.sum()))
    return hits / (m * k)


def faiss_bytes(index) -> int:
    """Serialised size of a FAISS index, counted while streaming (as Shard.memory_bytes)."""
    total = 0

    def count(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer
    return total


class Searchable:
    """One built index in one mode: search(q) -> ids (m, K) int64 plus its metadata."""

    def __init__(self, mode: str, obj, raw_index=None) -> None:
        self.mode, self.obj, self.raw = mode, obj, raw_index

    def search(self, q: np.ndarray):
        if self.mode == "raw":
            return self.raw.search(q, K)[1]
        if self.mode == "shard":
            return self.obj.search(q, K)[1]
        return self.obj.search_named(q, K)  # list of lists of (str id, score)

    def ids(self, res) -> np.ndarray:
        if self.mode != "sharded4":
            return res
        out = np.full((len(res), K), -1, dtype=np.int64)
        for i, row in enumerate(res):
            out[i, : len(row)] = [int(s) for s, _ in row]
        return out

    def set_knob(self, kind: str, value: int) -> None:
        if self.mode == "shard":
            self.obj.set_search_knobs(**{"ef_search" if kind == "hnsw" else "nprobe": value})
        elif self.mode == "raw":
            if kind == "hnsw":
                self.raw.hnsw.efSearch = value
            elif kind in ("ivf", "ivfpq"):
                self.raw.nprobe = value

    def memory_bytes(self) -> int:
        if self.mode == "shard":
            return self.obj.memory_bytes()
        if self.mode == "raw":
            return faiss_bytes(self.raw)
        mem = self.obj.memory()
        return mem["faiss"] + mem["fp16"]

    def id_bytes(self) -> int:
        """Memory of the id maps outside FAISS (string ids' bytes excluded)."""
        if self.mode == "shard":
            return self.obj.bookkeeping_bytes()
        return 0 if self.mode == "raw" else self.obj.memory()["id_maps"]

    def trained(self) -> bool | None:
        if self.mode == "shard":
            return self.obj.ivf_trained
        if self.mode == "sharded4":
            return all(s.ivf_trained for s in self.obj._shards)
        return True


def train_points(n: int, batch: int, threshold: int) -> int:
    """How many vectors a shard holds when an add batch first crosses ``threshold``."""
    return min(n, math.ceil(threshold / batch) * batch)


def build(kind: str, mode: str, x: np.ndarray, plan: Plan, args, str_ids, knob, shard_obj=None):
    """Build one index; returns (Searchable, build seconds, extra info dict)."""
    n, dim = x.shape
    batch = args.add_batch
    info: dict = {}
    spec = spec_for(kind, mode, plan, knob)
    batches = range(0, n, batch)
    bar = {"desc": f"{n:,} {kind} {mode}", "leave": False, "disable": args.no_progress}
    if mode == "raw" and not plan.raw_builds:
        inner = shard_obj.obj._index
        if kind in ("flat", "hnsw"):
            inner = faiss.downcast_index(inner.index)
        info["note"] = "searches the shard's FAISS index (no separate build)"
        return Searchable("raw", None, inner), None, info
    t0 = time.perf_counter()
    if mode == "raw":
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, plan.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = plan.hnsw_efc
            index.hnsw.efSearch = spec.ef_search
        else:
            quantizer = faiss.IndexFlatIP(dim)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(
                    quantizer, dim, spec.ivf_nlist, faiss.METRIC_INNER_PRODUCT
                )
            else:
                index = faiss.IndexIVFPQ(
                    quantizer,
                    dim,
                    spec.ivf_nlist,
                    spec.pq_m,
                    spec.pq_nbits,
                    faiss.METRIC_INNER_PRODUCT,
                )
            thr = Shard(dim, spec).ivf_train_threshold
            t = train_points(n, batch, thr)  # the same training set the shard uses
            index.train(x[:t])
            index.nprobe = spec.nprobe
            info["train_points"] = t
        for lo in tqdm(batches, **bar):
            index.add(x[lo : lo + batch])
        result = Searchable("raw", None, index)
    elif mode == "shard":
        shard = Shard(dim, spec)
        for lo in tqdm(batches, **bar):
            shard.add(np.arange(lo, min(n, lo + batch), dtype=np.int64), x[lo : lo + batch])
        if kind in ("ivf", "ivfpq"):
            info["train_points"] = train_points(n, batch, shard.ivf_train_threshold)
        result = Searchable("shard", shard)
    else:
        index = ShardedIndex(dim, 4, spec)
        for lo in tqdm(batches, **bar):
            index.add(str_ids[lo : lo + batch], x[lo : lo + batch])
        result = Searchable("sharded4", index)
    seconds = time.perf_counter() - t0
    if kind in ("ivf", "ivfpq") and not result.trained():
        log.warning("%s %s at n=%d did not leave its flat fallback", kind, mode, n)
    return result, seconds, info


def knob_name(kind: str) -> str | None:
    return {"hnsw": "efSearch", "ivf": "nprobe", "ivfpq": "nprobe"}.get(kind)


def pick_operating_point(sweep: list[dict], target: float) -> int:
    ok = [p for p in sweep if p["recall_at_10"] >= target]
    if ok:
        return min(ok, key=lambda p: p["value"])["value"]
    best = max(p["recall_at_10"] for p in sweep)
    return min((p for p in sweep if p["recall_at_10"] >= best - 0.005), key=lambda p: p["value"])[
        "value"
    ]


# ----------------------------------------------------------------------------- run
def run_size(n, x_all, q, plan, args, kinds) -> tuple[list[dict], list[dict], dict]:
    x = x_all[:n]
    dim = x.shape[1]
    rows: list[dict] = []
    sweeps: list[dict] = []
    str_ids = [str(i) for i in range(n)] if "sharded4" in args.modes else None

    log.info("n=%d: exact ground truth (raw IndexFlatIP, batch %d)", n, args.batch)
    gt_index = faiss.IndexFlatIP(dim)
    t0 = time.perf_counter()
    gt_index.add(x)
    flat_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    gt_s, gt = gt_index.search(q, K)
    gt_seconds = time.perf_counter() - t0
    gt_kth = gt_s[:, K - 1]
    data_stats = {
        "n": n,
        "gt_seconds": gt_seconds,
        "top1_cos_mean": float(gt_s[:, 0].mean()),
        "top10_cos_mean": float(gt_s[:, K - 1].mean()),
        "random_pair_cos_mean": float(np.mean(q[:500] @ x[:500].T)),
    }
    del gt_index
    budget1, budget_b = args.budget_b1, args.budget_batched

    def measure(kind, s: Searchable, build_s, info, knob):
        qps1, _, n1 = time_search(s.search, q, 1, args.batch1_queries, budget1)
        qpsb, res, nb = time_search(s.search, q, args.batch, len(q), budget_b)
        got = np.concatenate([s.ids(r) for r in res])[:nb]
        rec = recall_at_k(x, q[:nb], got, gt[:nb], gt_kth[:nb])
        row = {
            "n": n,
            "kind": kind,
            "mode": s.mode,
            "knob": knob_name(kind),
            "knob_value": knob,
            "params": spec_for(kind, s.mode, plan, knob).to_dict() if kind != "flat" else {},
            "build_s": build_s,
            "add_vps": n / build_s if build_s else None,
            "qps_b1": qps1,
            "b1_queries": n1,
            "qps_batched": qpsb,
            "batched_queries": nb,
            "recall_at_10": rec,
            "mem_bytes_per_vector": s.memory_bytes() / n,
            "id_bytes_per_vector": s.id_bytes() / n,
            "trained": s.trained() if kind in ("ivf", "ivfpq") else None,
            **info,
        }
        log.info(
            "n=%d %-5s %-8s %s=%s recall@10=%.4f qps_b1=%.0f qps_b%d=%.0f build=%s B/vec=%.1f",
            n,
            kind,
            s.mode,
            row["knob"],
            knob,
            rec,
            qps1,
            args.batch,
            qpsb,
            f"{build_s:.1f}s" if build_s else "shared",
            row["mem_bytes_per_vector"],
        )
        return row

    for kind in kinds:
        shard_s, shard_build, shard_info = build(kind, "shard", x, plan, args, str_ids, None)
        knob = None
        if kind in SWEEP:
            values = [v for v in SWEEP[kind] if kind == "hnsw" or v <= plan.nlist["shard"]]
            for v in tqdm(
                values, desc=f"{n:,} {kind} sweep", leave=False, disable=args.no_progress
            ):
                shard_s.set_knob(kind, v)
                qpsb, res, nb = time_search(shard_s.search, q, args.batch, len(q), budget_b)
                got = np.concatenate(res)[:nb]
                rec = recall_at_k(x, q[:nb], got, gt[:nb], gt_kth[:nb])
                sweeps.append(
                    {
                        "n": n,
                        "kind": kind,
                        "knob": knob_name(kind),
                        "value": v,
                        "recall_at_10": rec,
                        "qps_batched": qpsb,
                        "queries": nb,
                    }
                )
                log.info(
                    "n=%d %s sweep %s=%d recall@10=%.4f qps_b%d=%.0f",
                    n,
                    kind,
                    knob_name(kind),
                    v,
                    rec,
                    args.batch,
                    qpsb,
                )
            knob = pick_operating_point(
                [s for s in sweeps if s["n"] == n and s["kind"] == kind], args.target_recall
            )
            shard_s.set_knob(kind, knob)
        built = {"shard": (shard_s, shard_build, shard_info)}
        modes = [m for m in args.modes if (kind, m) not in plan.skip]
        for mode in modes:
            if mode == "shard":
                continue
            built[mode] = build(kind, mode, x, plan, args, str_ids, knob, shard_obj=shard_s)
        for mode in modes:
            s, build_s, info = built[mode]
            if mode == "raw" and build_s is None:
                build_s = shard_build
                info = {**info, "build_shared_with_shard": True}
            if mode == "raw" and knob:
                s.set_knob(kind, knob)
            rows.append(measure(kind, s, build_s, info, knob))
            if mode == "sharded4":
                s.obj.close()
        del built, shard_s
        gc.collect()
    data_stats["flat_raw_add_s"] = flat_build
    return rows, sweeps, data_stats


def add_ratios(rows: list[dict]) -> None:
    for r in rows:
        ref = next(
            (x for x in rows if x["n"] == r["n"] and x["kind"] == "flat" and x["mode"] == "raw"),
            None,
        )
        r["speedup_b1"] = r["qps_b1"] / ref["qps_b1"] if ref else None
        r["speedup_batched"] = r["qps_batched"] / ref["qps_batched"] if ref else None


# ----------------------------------------------------------------------------- output
def _fmt(v, spec: str = ".0f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    cfg = result["config"]
    b = cfg["batch"]
    lines = [
        "# Index benchmark: flat / HNSW / IVF / IVF-PQ, raw FAISS vs irene wrappers",
        "",
        f"Command: `{cfg['command']}`  ",
        f"Wall time: {result['wall_s']:.0f} s on {cfg['machine']}, FAISS {cfg['faiss']} "
        f"with {cfg['threads']} OpenMP threads. Load average (1/5/15 min) at start "
        f"{'/'.join(f'{v:.1f}' for v in cfg['loadavg_start'])}, at end "
        f"{'/'.join(f'{v:.1f}' for v in cfg['loadavg_end'])} (other processes on the machine "
        "share the CPUs and skew timings when it is above 0).",
        "",
        f"Data ({cfg['dim']}-d): {cfg['data']}",
        "",
        f"Queries: {cfg['queries']}; recall@10 vs exact `IndexFlatIP` (score ties within "
        f"{TIE_EPS:g} count as hits), measured on the queries run at batch {b}. QPS at "
        f"batch 1: up to {cfg['batch1_queries']} queries or {cfg['budget_b1']} s; at batch {b}: "
        f"up to all queries or {cfg['budget_batched']} s (after one single-query warm-up call). "
        "`×exact` = QPS / raw exact flat QPS at the same size and batch. Bytes/vec = FAISS "
        "index serialised size / n (`Shard.memory_bytes()`, with IVF-PQ's fp16 re-rank copies "
        "when `--rerank` > 0); id B/vec = the id maps outside FAISS (`Shard.bookkeeping_bytes()`; "
        "`sharded4`: `ShardedIndex.memory()['id_maps']`, the string ids' bytes excluded). "
        "Build = train + add in batches of "
        f"{cfg['add_batch']:,}; `sharded4` also hashes string ids. Knobs (nprobe / efSearch) "
        f"are swept on `shard`; the operating point is the smallest value reaching recall "
        f"{cfg['target_recall']} (else the smallest within 0.005 of the best).",
        "",
    ]
    notes = [nt for p in result["plans"] for nt in p["notes"]]
    if notes:
        lines += ["Notes:", ""] + [f"* {nt}" for nt in notes] + [""]
    for n in cfg["sizes"]:
        plan = next(p for p in result["plans"] if p["n"] == n)
        ds = next(d for d in result["data_stats"] if d["n"] == n)
        lines += [
            f"## n = {n:,}",
            "",
            f"Parameters: HNSW M={plan['hnsw_m']} efConstruction={plan['hnsw_efc']}; IVF nlist "
            f"{plan['nlist']['shard']} (raw, shard) / {plan['nlist']['sharded4']} per shard "
            f"(sharded4); IVF-PQ pq_m={plan['pq_m']}, pq_nbits {plan['pq_nbits']['shard']} / "
            f"{plan['pq_nbits']['sharded4']}. Data: mean cosine of a query to its true top-1 "
            f"{ds['top1_cos_mean']:.3f}, to its 10th {ds['top10_cos_mean']:.3f}, to a random "
            f"vector {ds['random_pair_cos_mean']:.3f}.",
            "",
            f"| kind | mode | knob | build s | add vec/s | QPS b1 | ×exact b1 | QPS b{b} | "
            f"×exact b{b} | recall@10 | bytes/vec | id B/vec |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in (r for r in result["rows"] if r["n"] == n):
            knob = f"{r['knob']}={r['knob_value']}" if r["knob"] else "–"
            shared = " (shared)" if r.get("build_shared_with_shard") else ""
            lines.append(
                f"| {r['kind']} | {r['mode']} | {knob} | {_fmt(r['build_s'], '.1f')}{shared} | "
                f"{_fmt(r['add_vps'], ',.0f')} | {_fmt(r['qps_b1'], ',.0f')} | "
                f"{_fmt(r['speedup_b1'], '.1f')} | {_fmt(r['qps_batched'], ',.0f')} | "
                f"{_fmt(r['speedup_batched'], '.1f')} | {r['recall_at_10']:.4f} | "
                f"{r['mem_bytes_per_vector']:,.1f} | {r.get('id_bytes_per_vector', 0):,.1f} |"
            )
        lines.append("")
        sw = [s for s in result["sweeps"] if s["n"] == n]
        if sw:
            lines += [
                f"Sweep (`shard` mode, batch {b}):",
                "",
                f"| kind | knob | value | recall@10 | QPS b{b} |",
                "|---|---|---:|---:|---:|",
            ]
            lines += [
                f"| {s['kind']} | {s['knob']} | {s['value']} | {s['recall_at_10']:.4f} | "
                f"{s['qps_batched']:,.0f} |"
                for s in sw
            ]
            lines.append("")
    lines += ["## Target: recall@10 >= 0.95 at >= 10x exact QPS", ""]
    big = max(cfg["sizes"])
    for r in (r for r in result["rows"] if r["n"] == big and r["kind"] != "flat"):
        ok1 = r["recall_at_10"] >= 0.95 and (r["speedup_b1"] or 0) >= 10
        okb = r["recall_at_10"] >= 0.95 and (r["speedup_batched"] or 0) >= 10
        lines.append(
            f"* n={big:,} {r['kind']} {r['mode']}: recall {r['recall_at_10']:.3f}, "
            f"{_fmt(r['speedup_b1'], '.1f')}x at batch 1 ({'met' if ok1 else 'not met'}), "
            f"{_fmt(r['speedup_batched'], '.1f')}x at batch {b} ({'met' if okb else 'not met'})"
        )
    lines.append("")
    lines += ["## Wrapper overhead (QPS of the wrapper / QPS of raw FAISS, same index params)", ""]
    lines += [f"| n | kind | shard b1 | shard b{b} | sharded4 b1 | sharded4 b{b} |"]
    lines += ["|---:|---|---:|---:|---:|---:|"]
    for n in cfg["sizes"]:
        for kind in cfg["kinds"]:
            by = {r["mode"]: r for r in result["rows"] if r["n"] == n and r["kind"] == kind}
            if "raw" not in by:
                continue
            raw = by["raw"]

            def ratio(mode, key, by=by, raw=raw):
                return _fmt(by[mode][key] / raw[key], ".2f") if mode in by else "–"

            lines.append(
                f"| {n:,} | {kind} | {ratio('shard', 'qps_b1')} | {ratio('shard', 'qps_batched')} "
                f"| {ratio('sharded4', 'qps_b1')} | {ratio('sharded4', 'qps_batched')} |"
            )
    lines += ["", f"Plot: `{Path(cfg['out']).name}.png` (recall@10 vs QPS at batch {b}).", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot written")
        return False
    sizes = result["config"]["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    colours = {"flat": "black", "hnsw": "tab:blue", "ivf": "tab:orange", "ivfpq": "tab:green"}
    markers = {"raw": "s", "shard": "o", "sharded4": "^"}
    b = result["config"]["batch"]
    for ax, n in zip(axes[0], sizes, strict=True):
        for kind in result["config"]["kinds"]:
            sw = [s for s in result["sweeps"] if s["n"] == n and s["kind"] == kind]
            if sw:
                ax.plot(
                    [s["qps_batched"] for s in sw],
                    [s["recall_at_10"] for s in sw],
                    "-",
                    color=colours[kind],
                    alpha=0.6,
                    label=f"{kind} sweep ({sw[0]['knob']})",
                )
                for s in sw:
                    ax.annotate(str(s["value"]), (s["qps_batched"], s["recall_at_10"]), fontsize=7)
            for r in (r for r in result["rows"] if r["n"] == n and r["kind"] == kind):
                ax.scatter(
                    r["qps_batched"],
                    r["recall_at_10"],
                    color=colours[kind],
                    marker=markers[r["mode"]],
                    s=40,
                    label=f"{kind} {r['mode']}",
                )
        ax.axhline(0.95, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"QPS (batch {b}, log)")
        ax.set_ylabel("recall@10")
        ax.set_title(f"n = {n:,}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated database sizes")
    p.add_argument("--out", default="bench/results/index", help="output prefix (.json/.md/.png)")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--dim", type=int, default=384, help="synthetic data dimension")
    p.add_argument("--real", help=".npy of real embeddings (n, dim) to use as the base")
    p.add_argument("--perturb", type=float, default=0.3, help="--real: noise norm per repeat")
    p.add_argument("--smoke", action="store_true", help="tiny run (seconds): 2,000 x 32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="faiss.omp_set_num_threads")
    p.add_argument("--batch", type=int, default=64, help="queries per call, batched QPS")
    p.add_argument("--batch1-queries", type=int, default=300)
    p.add_argument("--budget-b1", type=float, default=2.0, help="seconds cap, batch-1 timing")
    p.add_argument("--budget-batched", type=float, default=5.0, help="seconds cap, batched")
    p.add_argument("--add-batch", type=int, default=50_000)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--hnsw-efc", type=int, default=80)
    p.add_argument("--large", type=int, default=200_000, help="sizes above this are 'large'")
    p.add_argument("--hnsw-m-large", type=int, default=16)
    p.add_argument("--hnsw-efc-large", type=int, default=40)
    p.add_argument("--nlist-max", type=int, default=1024)
    p.add_argument("--pq-m", type=int, default=48)
    p.add_argument("--pq-nbits", type=int, default=8)
    p.add_argument(
        "--rerank", type=int, default=0,
        help="IVF-PQ (shard, sharded4): re-rank the top rerank*k with fp16 copies (raw: none)",
    )  # fmt: skip
    p.add_argument(
        "--skip-large-sharded-hnsw",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="above --large, do not build HNSW a second time for sharded4 (noted in the md)",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = p.parse_args(argv)
    args.command = " ".join(
        ["python", "bench/index_bench.py", *(argv if argv is not None else sys.argv[1:])]
    )
    if args.smoke:
        args.sizes, args.dim, args.queries = "2000", 32, 200
        args.batch1_queries, args.budget_b1, args.budget_batched = 50, 0.5, 1.0
        args.add_batch, args.large, args.pq_m = 500, 10**9, 8
    args.sizes = sorted(int(s) for s in str(args.sizes).split(","))
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.modes = [m for m in args.modes.split(",") if m]
    for k in args.kinds:
        if k not in KINDS:
            p.error(f"unknown kind {k!r}; choose from {KINDS}")
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {MODES}")
    if "shard" not in args.modes:
        args.modes.insert(0, "shard")  # knobs are swept on the shard mode
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t_start = time.perf_counter()
    faiss.omp_set_num_threads(args.threads)
    if args.real:
        source = RealSource(args.real, args.queries, args.perturb, args.seed)
        q = source.queries
    else:
        source = SyntheticSource(args.dim, args.seed)
        q = source.sample(args.queries, args.seed + 1)
    dim = source.dim
    log.info("generating %d x %d database vectors", max(args.sizes), dim)
    x_all = source.sample(max(args.sizes), args.seed + 2)
    result: dict = {
        "config": {
            "command": args.command,
            "sizes": args.sizes,
            "kinds": args.kinds,
            "modes": args.modes,
            "dim": dim,
            "queries": len(q),
            "batch": args.batch,
            "batch1_queries": args.batch1_queries,
            "budget_b1": args.budget_b1,
            "budget_batched": args.budget_batched,
            "add_batch": args.add_batch,
            "target_recall": args.target_recall,
            "threads": args.threads,
            "faiss": faiss.__version__,
            "machine": f"{platform.machine()} with {os.cpu_count()} CPUs ({platform.system()})",
            "data": source.description,
            "out": args.out,
            "smoke": args.smoke,
            "loadavg_start": os.getloadavg(),
        },
        "plans": [],
        "rows": [],
        "sweeps": [],
        "data_stats": [],
    }
    for n in args.sizes:
        plan = make_plan(n, dim, args)
        result["plans"].append(plan.__dict__)
        rows, sweeps, stats = run_size(n, x_all, q, plan, args, args.kinds)
        result["rows"] += rows
        result["sweeps"] += sweeps
        result["data_stats"].append(stats)
    add_ratios(result["rows"])
    result["wall_s"] = time.perf_counter() - t_start
    result["config"]["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    plot(result, out.with_suffix(".png"))
    print(md)
    log.info("wrote %s.{json,md,png} in %.0f s", out, result["wall_s"])
    return result


if __name__ == "__main__":
    main()

"""Bytes per item an index holds beyond its vector copies and its strings, measured.

    python bench/id_memory.py [--n 40000]

Builds a ``ShardedIndex`` (4 shards, 8-d vectors: the vectors are negligible) of ``--n``
items with string ids, texts and a metadata field, snapshots it, and restores it under
``tracemalloc`` (which counts numpy's buffers; FAISS's own C++ memory is not traced). Prints
the traced bytes per item minus the UTF-8 bytes of the ids, texts and metadata JSON, minus
the fp16 re-rank copies, for flat, IVF-PQ and IVF-PQ with re-rank. Runs on any commit that
has ``ShardedIndex.add(ids, vecs, records)`` (to compare with an older one: check it out and
run this file from there).
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc

import numpy as np

from irene.index.records import Records
from irene.index.shard import IndexSpec
from irene.index.sharded import ShardedIndex

SPECS = {
    "flat": {"kind": "flat"},
    "ivfpq": {"kind": "ivfpq", "ivf_nlist": 2, "pq_m": 4, "pq_nbits": 1},
    "ivfpq-rerank": {"kind": "ivfpq", "ivf_nlist": 2, "pq_m": 4, "pq_nbits": 1, "rerank": 4},
}


def measure(spec: dict, n: int, dim: int = 8) -> float:
    index = ShardedIndex(dim, 4, IndexSpec(**spec, use_gpu=False))
    rng, strings = np.random.default_rng(0), 0
    for lo in range(0, n, 10_000):
        ids = [f"item-{i:09d}" for i in range(lo, min(n, lo + 10_000))]
        texts, metas = [f"text of {i}" for i in ids], [{"n": 1} for _ in ids]
        strings += sum(len(s.encode()) for s in ids + texts)
        strings += sum(len(json.dumps(m, separators=(",", ":"))) for m in metas)
        index.add(ids, rng.standard_normal((len(ids), dim)), Records.of(texts, metas))
    blob = index.to_bytes()
    del index
    gc.collect()
    tracemalloc.start()
    again = ShardedIndex.from_bytes(blob)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    fp16 = again.memory()["fp16"] if hasattr(again, "memory") else 0
    return (traced - strings - fp16) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=40_000)
    args = p.parse_args()
    for name, spec in SPECS.items():
        try:
            print(f"{name}: {measure(spec, args.n):.1f} B/item", flush=True)
        except (TypeError, ValueError) as e:  # an older commit without this kind
            print(f"{name}: not supported here ({e})")


if __name__ == "__main__":
    main()

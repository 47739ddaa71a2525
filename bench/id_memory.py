"""Bytes per item an index holds beyond its vector copies and its strings, measured.

    python bench/id_memory.py [--n 40000]

Builds a ``ShardedIndex`` (4 shards, 8-d vectors: the vectors are negligible) of ``--n``
items with string ids, texts and a metadata field by appends of 10,000, then snapshots it
and restores it. Both the build ("grown": capacity slack and recent-id dicts included) and
the restore run under ``tracemalloc`` (which counts numpy's buffers; FAISS's own C++ memory
is not traced). Prints the traced bytes per item minus the ids, texts and metadata JSON (as
allocated), minus the fp16 re-rank copies, for flat, IVF-PQ and IVF-PQ with
re-rank. Runs on any commit that
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


def _traced(make):
    """(what ``make()`` returns, bytes it left allocated) under tracemalloc."""
    gc.collect()
    tracemalloc.start()
    out = make()
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return out, traced


def _build(spec: dict, n: int, dim: int) -> tuple[ShardedIndex, int]:
    """The index of ``n`` items and the UTF-8 bytes of their strings."""
    index = ShardedIndex(dim, 4, IndexSpec(**spec, use_gpu=False))
    rng, strings = np.random.default_rng(0), 0
    for lo in range(0, n, 10_000):
        ids = [f"item-{i:09d}" for i in range(lo, min(n, lo + 10_000))]
        texts, metas = [f"text of {i}" for i in ids], [{"n": 1} for _ in ids]
        strings += sum(len(s.encode()) for s in ids + texts)
        strings += sum(len(json.dumps(m, separators=(",", ":"))) for m in metas)
        index.add(ids, rng.standard_normal((len(ids), dim)), Records.of(texts, metas))
    return index, strings


def measure(spec: dict, n: int, dim: int = 8) -> tuple[float, float]:
    """Bytes per item beyond vectors and strings: (grown by appends, restored)."""
    _build(spec, 20_000, dim)  # lazy imports and first-use caches are not the index's
    (index, strings), grown = _traced(lambda: _build(spec, n, dim))
    blob = index.to_bytes()
    beyond = _beyond(index, strings)
    del index
    again, restored = _traced(lambda: ShardedIndex.from_bytes(blob))
    return (grown - beyond) / n, (restored - _beyond(again, strings)) / n


def _beyond(index: ShardedIndex, strings: int) -> int:
    """Bytes of the fp16 copies and the strings as allocated (buffers grown by appends keep
    spare room), where the index reports them (older commits: the UTF-8 bytes)."""
    if not hasattr(index, "memory"):
        return strings
    mem = index.memory()
    return mem["fp16"] + max(strings, mem["strings"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=40_000)
    args = p.parse_args()
    for name, spec in SPECS.items():
        try:
            grown, restored = measure(spec, args.n)
            print(f"{name}: grown {grown:.1f} B/item, restored {restored:.1f} B/item", flush=True)
        except (TypeError, ValueError) as e:  # an older commit without this kind
            print(f"{name}: not supported here ({e})")


if __name__ == "__main__":
    main()

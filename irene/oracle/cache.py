"""On-disk oracle answer cache (sqlite3), so a rerun or resumed job never pays twice.

Key = sha256 of (oracle identity = model + prompt, document, label). Only validated
relevances are written, after a successful call; failures are never cached. Several
processes (Ray actors on one node) may share the file: sqlite serialises the writers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Sequence

import numpy as np

from irene.oracle.base import Oracle, OracleStats, check_relevance

log = logging.getLogger(__name__)


def pair_key(identity: str, document: str, label: str) -> str:
    blob = json.dumps([identity, document, label], ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


class OracleCache:
    """A sqlite table ``answers(key TEXT PRIMARY KEY, relevance REAL)`` at a local path."""

    def __init__(self, path: str) -> None:
        if "://" in path:
            raise ValueError(f"oracle cache must be a local file path, got {path!r}")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=60.0, check_same_thread=False)
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, relevance REAL NOT NULL)"
            )

    def get_many(self, keys: Sequence[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        with self._lock:
            for s in range(0, len(keys), 500):
                chunk = list(keys[s : s + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, relevance FROM answers WHERE key IN ({marks})", chunk
                ).fetchall()
                out.update(rows)
        return out

    def put_many(self, items: dict[str, float]) -> None:
        vals = [(k, float(v)) for k, v in items.items() if 0.0 <= float(v) <= 1.0]
        if len(vals) != len(items):
            raise ValueError("only relevances in [0, 1] can be cached")
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)", vals)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class CachedOracle:
    """Wraps an oracle: answers cached pairs from disk, scores (and then caches) the rest."""

    def __init__(self, inner: Oracle, cache: OracleCache) -> None:
        self.inner, self.cache = inner, cache

    @property
    def identity(self) -> str:
        return self.inner.identity

    @property
    def stats(self) -> OracleStats:
        return self.inner.stats

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        keys = [pair_key(self.identity, d, lab) for d, lab in pairs]
        hit = self.cache.get_many(keys)
        out = np.empty(len(pairs), dtype=np.float32)  # (n,)
        miss = [i for i, k in enumerate(keys) if k not in hit]
        for i, k in enumerate(keys):
            if k in hit:
                out[i] = hit[k]
        self.inner.stats.add(cached_pairs=len(pairs) - len(miss))
        if miss:
            # raises on failure -> nothing below runs, so nothing is cached
            vals = check_relevance(self.inner.score([pairs[i] for i in miss]), len(miss))
            out[miss] = vals
            self.cache.put_many({keys[i]: float(v) for i, v in zip(miss, vals, strict=True)})
        return out

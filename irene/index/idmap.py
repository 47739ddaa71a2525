"""Compact int64 id maps: a sorted numpy array of keys plus a small dict of recent writes.

Used wherever the index maps its ids to positions (shard labels, fp16 slots, record rows):
about ``8 + value size`` bytes per id instead of the ~100 B of a Python dict entry.
"""

from __future__ import annotations

import sys

import numpy as np

_MERGE_MIN = 256  # the recent dict is merged into the sorted arrays beyond this many keys
_MERGE_FRACTION = 64  # ... or beyond 1/64 of the sorted part (each dict entry costs ~100 B)


GROWTH = 1.25  # arrays that grow by appends grow by this factor (amortised O(1) a row)


def grown(a: np.ndarray, need: int, fill=0) -> np.ndarray:
    """``a`` with room for at least ``need`` rows (new rows ``fill``), grown geometrically."""
    if len(a) >= need:
        return a
    out = np.full((max(need, int(GROWTH * len(a)), 16), *a.shape[1:]), fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


def _ids(keys) -> np.ndarray:
    return np.asarray(keys, dtype=np.int64).reshape(-1)


class IdMap:
    """int64 keys -> non-negative integer values (``dtype``: a signed integer type).

    The bulk lives in a sorted key array with its values (``searchsorted``: O(log n) per
    lookup, vectorised over a batch); keys written since the last merge sit in a dict, merged
    (in linear time) once it holds more than ``max(256, n/64)`` keys, so a write costs
    amortised O(batch) and the dict adds at most ~2 B per key. A
    removed key of the sorted part keeps its slot with value -1 until the next merge. A key is
    never in both parts. Not thread-safe: callers hold their own lock."""

    def __init__(self, dtype=np.int64) -> None:
        self._dtype = np.dtype(dtype)
        if self._dtype.kind != "i":
            raise TypeError(f"IdMap values must be a signed integer type, not {self._dtype}")
        self._keys = np.zeros(0, dtype=np.int64)  # sorted
        self._vals = np.zeros(0, dtype=self._dtype)  # value of _keys[i]; -1: removed
        self._recent: dict[int, int] = {}
        self._dead = 0  # removed slots in _vals

    @classmethod
    def from_arrays(cls, keys, vals, dtype=np.int64) -> IdMap:
        """A map of unique ``keys`` (n,) to ``vals`` (n,) >= 0."""
        out = cls(dtype)
        keys = _ids(keys)
        vals = np.asarray(vals, dtype=out._dtype).reshape(-1)
        if len(keys) != len(vals):
            raise ValueError(f"{len(keys)} keys but {len(vals)} values")
        order = np.argsort(keys, kind="stable")
        out._keys, out._vals = keys[order], vals[order]
        if len(keys) > 1 and not (np.diff(out._keys) > 0).all():
            raise ValueError("IdMap keys must be unique")
        return out

    def __len__(self) -> int:
        return len(self._keys) - self._dead + len(self._recent)

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in the sorted part, whether the key is there) per key."""
        pos = np.searchsorted(self._keys, keys)
        hit = pos < len(self._keys)
        hit[hit] = self._keys[pos[hit]] == keys[hit]
        return pos, hit

    def get(self, keys) -> np.ndarray:
        """The value of each key, (n,) int64; -1 where absent."""
        keys = _ids(keys)
        out = np.full(len(keys), -1, dtype=np.int64)
        if len(self._keys):
            pos, hit = self._find(keys)
            out[hit] = self._vals[pos[hit]]
        if self._recent:
            get = self._recent.get
            miss = np.flatnonzero(out < 0)
            found = [get(k, -1) for k in keys[miss].tolist()]
            out[miss] = found
        return out

    def put(self, keys, vals) -> np.ndarray:
        """Set unique ``keys`` to ``vals`` (>= 0); returns the old values (-1: absent)."""
        keys = _ids(keys)
        vals = np.asarray(vals, dtype=self._dtype).reshape(-1)
        old = np.full(len(keys), -1, dtype=np.int64)
        pos, hit = self._find(keys)
        p = pos[hit]
        old[hit] = self._vals[p]
        self._dead -= int((old[hit] < 0).sum())  # removed slots taken again
        self._vals[p] = vals[hit]
        recent = self._recent
        miss = np.flatnonzero(~hit)
        for j, k, v in zip(miss.tolist(), keys[miss].tolist(), vals[miss].tolist(), strict=True):
            old[j] = recent.get(k, -1)
            recent[k] = v
        self._maybe_merge()
        return old

    def remove(self, keys) -> np.ndarray:
        """Remove unique ``keys``; returns their old values (-1: were absent)."""
        keys = _ids(keys)
        old = np.full(len(keys), -1, dtype=np.int64)
        pos, hit = self._find(keys)
        p = pos[hit]
        old[hit] = self._vals[p]
        self._dead += int((old[hit] >= 0).sum())
        self._vals[p] = -1
        pop = self._recent.pop
        miss = np.flatnonzero(~hit)
        old[miss] = [pop(k, -1) for k in keys[miss].tolist()]
        self._maybe_merge()
        return old

    def _maybe_merge(self) -> None:
        bound = max(_MERGE_MIN, len(self._keys) // _MERGE_FRACTION)
        if len(self._recent) > bound or self._dead > bound:
            self.merge()

    def merge(self) -> None:
        """Fold the recent keys into the sorted part and drop removed slots: O(n + r log r)
        for n sorted and r recent keys (the recent ones are sorted and inserted, not the
        whole map re-sorted)."""
        keys, vals = self._keys, self._vals
        if self._dead:
            live = vals >= 0
            keys, vals = keys[live], vals[live]
        if self._recent:
            n = len(self._recent)
            new = np.fromiter(self._recent, np.int64, n)
            new_vals = np.fromiter(self._recent.values(), self._dtype, n)
            order = np.argsort(new)
            new, new_vals = new[order], new_vals[order]
            at = np.searchsorted(keys, new)  # a key is never in both parts: no ties
            keys, vals = np.insert(keys, at, new), np.insert(vals, at, new_vals)
        self._keys, self._vals = keys, vals
        self._recent, self._dead = {}, 0

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys (n,) int64, values (n,)) of every live entry, sorted part first."""
        live = self._vals >= 0
        n = len(self._recent)
        keys = np.concatenate([self._keys[live], np.fromiter(self._recent, np.int64, n)])
        vals = np.fromiter(self._recent.values(), self._dtype, n)
        return keys, np.concatenate([self._vals[live], vals])

    def keys(self) -> np.ndarray:
        """Every live key (n,) int64, unordered."""
        return self.items()[0]

    def nbytes(self) -> int:
        """Memory held: the arrays plus the recent dict with its int objects."""
        ints = 2 * 32 * len(self._recent)  # a key and a value object per entry
        return self._keys.nbytes + self._vals.nbytes + sys.getsizeof(self._recent) + ints

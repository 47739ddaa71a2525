"""fp16 copies of vectors in numbered slots: what an IVF-PQ shard re-ranks with.

One contiguous ``(capacity, dim)`` float16 array; a freed slot is reused by the next write,
so an upsert-heavy shard does not grow. ``2 * dim`` bytes per vector and nothing else (the
shard's ``IdMap`` holds each id's slot).
"""

from __future__ import annotations

import faiss
import numpy as np

from irene.index.idmap import grown


class HalfVectors:
    def __init__(self, dim: int) -> None:
        self.dim = int(dim)
        # FAISS's fp16 codec converts with SIMD: ~3x numpy's astype (README: Filters)
        self._codec = faiss.ScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16)
        self._x = np.zeros((0, self.dim), dtype=np.float16)
        self._used = 0  # slots handed out so far (high-water mark)
        self._free = np.zeros(0, dtype=np.int64)  # freed slots, reused first

    def __len__(self) -> int:
        return self._used - len(self._free)

    def put(self, x: np.ndarray) -> np.ndarray:
        """Store rows of ``x`` (n, dim); returns their slots (n,) int64."""
        n = len(x)
        reuse = self._free[:n]
        self._free = self._free[n:]
        fresh = n - len(reuse)
        need = self._used + fresh
        self._x = grown(self._x, need)
        slots = np.concatenate([reuse, np.arange(self._used, need, dtype=np.int64)])
        self._used = need
        self._x[slots] = x
        return slots

    def free(self, slots: np.ndarray) -> None:
        """Release slots (their rows are overwritten by later puts)."""
        self._free = np.concatenate([self._free, np.asarray(slots, dtype=np.int64)])

    def take(self, slots: np.ndarray) -> np.ndarray:
        """The vectors in ``slots`` as float32 (n, dim)."""
        x16 = self._x[np.asarray(slots, dtype=np.int64)]
        if not len(x16):
            return x16.astype(np.float32)
        return self._codec.decode(x16.view(np.uint8))

    def flat_index(self, slots: np.ndarray) -> faiss.Index:
        """A flat inner-product index over the fp16 vectors in ``slots`` (position i: slot
        ``slots[i]``), holding their codes as they are: a search scores fp16 directly."""
        index = faiss.IndexScalarQuantizer(
            self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        index.add_sa_codes(self._x[np.asarray(slots, dtype=np.int64)].view(np.uint8))
        return index

    def rows(self) -> np.ndarray:
        """Every slot handed out so far (n_used, dim) float16, freed ones included: a view,
        for snapshots (saved with each id's slot, so nothing is copied or reordered)."""
        return self._x[: self._used]

    @classmethod
    def of(cls, dim: int, x16: np.ndarray, slots: np.ndarray | None = None) -> HalfVectors:
        """A store holding ``x16`` (n, dim) float16 in slots 0..n-1, of which ``slots`` are
        in use (None: all); takes the array over (a restore must not hold two copies of the
        largest part of an index)."""
        out = cls(dim)
        x16 = np.asarray(x16, dtype=np.float16).reshape(-1, out.dim)
        if not x16.flags.writeable or not x16.flags.c_contiguous:
            x16 = x16.copy()
        out._x, out._used = x16, len(x16)
        if slots is not None:
            free = np.ones(len(x16), dtype=bool)
            free[np.asarray(slots, dtype=np.int64)] = False
            out._free = np.flatnonzero(free)
        return out

    @property
    def nbytes(self) -> int:
        return self._x.nbytes + self._free.nbytes

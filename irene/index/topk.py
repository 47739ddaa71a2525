"""Top-k hits as arrays, and the one merge of several top-k lists (shards, shard actors).

A search answers ``(scores, ids)``: ``scores`` (m, k) float32 best first, ``ids`` (m, k)
int64 stable ids (``irene.index.sharded.int_id``), padded with ``-inf`` / ``-1`` where fewer
than k items exist. String ids are looked up only where an answer leaves the system (the
HTTP edge, tools): :func:`named`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def empty(m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``m`` rows of ``k`` padding hits."""
    return np.full((m, k), -np.inf, dtype=np.float32), np.full((m, k), -1, dtype=np.int64)


def merge_topk(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best hits per row over several ``(scores (m, k_i), ids (m, k_i))`` parts
    (vectorised: one stable sort of the concatenated rows; ties keep part order)."""
    if len(parts) == 1 and parts[0][0].shape[1] == k:
        return parts[0]
    scores = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in parts], axis=1)
    ids = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts], axis=1)
    if scores.shape[1] < k:  # fewer candidates than k: pad
        pad_s, pad_i = empty(len(scores), k - scores.shape[1])
        scores, ids = np.hstack([scores, pad_s]), np.hstack([ids, pad_i])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (m, k)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def named(
    scores: np.ndarray, ids: np.ndarray, names_of: Callable[[np.ndarray], Sequence[str | None]]
) -> list[list[tuple[str, float]]]:
    """``[(string id, score), ...]`` per row, best first, without padding or ids that
    ``names_of`` (int ids -> string ids, None when gone) no longer knows."""
    flat = ids.reshape(-1)
    valid = flat >= 0
    names: list[str | None] = [None] * len(flat)
    for pos, name in zip(np.flatnonzero(valid).tolist(), names_of(flat[valid]), strict=True):
        names[pos] = name
    k = ids.shape[1] if ids.ndim == 2 else 0
    out = []
    for r, row in enumerate(scores.tolist()):
        base = r * k
        out.append([(names[base + j], s) for j, s in enumerate(row) if names[base + j] is not None])
    return out

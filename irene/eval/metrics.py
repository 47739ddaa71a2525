"""Extreme-classification ranking metrics, reported in percent (0-100).

Label indices are global ints in ``[0, L)``. The usual flow is:

1. ``mask = filter_mask(pairs, n_rows, L)`` for the benchmark's filter (reciprocal-pair) file;
2. ``idx, _ = topk(scores, k, candidates, exclude=mask, row_offset=...)`` per row block
   (or :class:`RankingAccumulator`), so filtered pairs are never ranked;
3. ``evaluate(idx, remove_pairs(Y_test, mask), inverse_propensity(Y_train))`` so filtered
   pairs are never counted as positives either.

Relevance is binary: any stored non-zero of the ground truth is a positive. Rows of the ground
truth with no positives are excluded from every average (``n_eval`` reports how many rows were
averaged over).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)


# --------------------------------------------------------------------------------------------
# helpers on sparse ground truth
# --------------------------------------------------------------------------------------------


def _clean_csr(Y: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """A canonical copy: csr, duplicates summed, explicit zeros dropped, indices sorted."""
    Y = sp.csr_matrix(Y, copy=True)
    Y.sum_duplicates()
    Y.eliminate_zeros()
    Y.sort_indices()
    return Y


def _row_ids(Y: sp.csr_matrix) -> np.ndarray:
    """(nnz,) int64 row id of every stored entry of a csr matrix."""
    return np.repeat(np.arange(Y.shape[0], dtype=np.int64), np.diff(Y.indptr))


def _pair_keys(rows: np.ndarray, cols: np.ndarray, n_labels: int) -> np.ndarray:
    """(m,) int64 key ``row * n_labels + col`` identifying a (row, label) pair."""
    return rows.astype(np.int64) * np.int64(n_labels) + cols.astype(np.int64)


def inverse_propensity(Y_train: sp.spmatrix, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """(L,) float64 inverse label propensities (Jain et al. 2016; XC repository / pyxclib).

    ``N`` = number of train rows, ``N_l`` = number of train rows having label ``l``,
    ``C = (ln N - 1) * (B + 1) ** A`` and ``inv_p_l = 1 + C * (N_l + B) ** (-A)``.
    The usual settings are A=0.55, B=1.5 (most datasets), A=0.6, B=2.6 (Amazon),
    A=0.5, B=0.4 (Wikipedia).
    """
    Y = _clean_csr(Y_train)
    n_rows, n_labels = Y.shape
    freqs = np.bincount(Y.indices, minlength=n_labels).astype(np.float64)  # (L,)
    c = (np.log(n_rows) - 1.0) * (B + 1.0) ** A
    return 1.0 + c * (freqs + B) ** (-A)


def filter_mask(pairs: np.ndarray | None, n_rows: int, n_labels: int) -> sp.csr_matrix:
    """(n_rows, n_labels) int8 csr with a 1 at every filtered (row, label) pair.

    ``pairs`` is (m, 2) int (row, label); ``None`` or an empty array gives an empty mask.
    Duplicate pairs are merged.
    """
    if pairs is None:
        pairs = np.zeros((0, 2), dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)  # (m, 2)
    rows, cols = pairs[:, 0], pairs[:, 1]
    if pairs.size and (
        rows.min() < 0 or rows.max() >= n_rows or cols.min() < 0 or cols.max() >= n_labels
    ):
        raise ValueError(f"filter pairs out of range for shape ({n_rows}, {n_labels})")
    data = np.ones(len(rows), dtype=np.int8)
    mask = sp.csr_matrix((data, (rows, cols)), shape=(n_rows, n_labels))
    mask.sum_duplicates()
    mask.data[:] = 1
    return mask


def remove_pairs(Y: sp.spmatrix, mask: sp.spmatrix | None) -> sp.csr_matrix:
    """Ground truth ``Y`` without the pairs stored in ``mask`` (zeros eliminated)."""
    out = _clean_csr(Y)
    if mask is None:
        return out
    if mask.shape != out.shape:
        raise ValueError(f"mask shape {mask.shape} != ground truth shape {out.shape}")
    m = _clean_csr(mask)
    n_labels = out.shape[1]
    y_keys = _pair_keys(_row_ids(out), out.indices, n_labels)  # (nnz,)
    m_keys = _pair_keys(_row_ids(m), m.indices, n_labels)  # (m,)
    out.data[np.isin(y_keys, m_keys, assume_unique=True)] = 0
    out.eliminate_zeros()
    return out


# --------------------------------------------------------------------------------------------
# top-k ranking
# --------------------------------------------------------------------------------------------


def _topk_block(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of a (r, C) block, descending, ties -> lower column; returns (cols, vals)."""
    r, c = scores.shape
    part = np.argpartition(scores, c - k, axis=1)[:, c - k :]  # (r, k) unordered top-k
    part_vals = np.take_along_axis(scores, part, axis=1)  # (r, k)
    kth = part_vals.min(axis=1)  # (r,) k-th largest value
    # argpartition picks arbitrary members of a tie straddling the k boundary: redo those rows
    # so that, among equal scores at the boundary, the lowest columns win.
    tied = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
    if tied.size:
        sub = scores[tied]  # (t, C)
        v = kth[tied, None]  # (t, 1)
        gt = sub > v
        eq = sub == v
        need = k - gt.sum(axis=1, keepdims=True)  # (t, 1)
        sel = gt | (eq & (np.cumsum(eq, axis=1) <= need))  # exactly k per row
        part[tied] = np.nonzero(sel)[1].reshape(len(tied), k)
        part_vals[tied] = np.take_along_axis(sub, part[tied], axis=1)
    order = np.lexsort((part, -part_vals), axis=1)  # by score desc, then column asc
    cols = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(part_vals, order, axis=1)
    return cols, vals


def topk(
    scores: np.ndarray,
    k: int,
    candidates: np.ndarray | None = None,
    exclude: sp.spmatrix | None = None,
    row_offset: int = 0,
    chunk_rows: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k global label ids per row of a score block.

    Args:
        scores: (n, C) float scores over candidate columns; not modified.
        k: number of labels to return per row, ``1 <= k <= C``.
        candidates: (C,) distinct global label ids of the columns (default ``arange(C)``).
        exclude: (n_total_rows, L) mask (e.g. :func:`filter_mask`); the stored pairs of its rows
            ``row_offset .. row_offset + n`` get score -inf before ranking. Labels that are not
            candidates are ignored.
        row_offset: global row index of ``scores[0]`` (for block-wise ranking).
        chunk_rows: rows processed at once (bounds the temporary memory to about
            ``chunk_rows * C * 12`` bytes).

    Returns:
        ``(idx, vals)``: (n, k) int64 global label ids and (n, k) float32 scores, sorted by
        descending score with ties broken by the lower label id. NaN scores rank as -inf.
        Excluded labels appear (with -inf) only if a row has fewer than k other candidates.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D, got shape {scores.shape}")
    n, c = scores.shape
    if not 1 <= k <= c:
        raise ValueError(f"k={k} must be in [1, {c}] (number of candidate columns)")
    if candidates is None:
        cand_sorted, col_order = np.arange(c, dtype=np.int64), None
    else:
        candidates = np.asarray(candidates, dtype=np.int64)
        if candidates.shape != (c,):
            raise ValueError(f"candidates shape {candidates.shape} != ({c},)")
        col_order = np.argsort(candidates, kind="stable")  # (C,)
        cand_sorted = candidates[col_order]
        if np.any(cand_sorted[1:] == cand_sorted[:-1]):
            raise ValueError("candidates must be distinct")
        if np.all(col_order == np.arange(c)):
            col_order = None
    if exclude is not None:
        exclude = sp.csr_matrix(exclude)
        if exclude.shape[0] < row_offset + n:
            raise ValueError(f"exclude has {exclude.shape[0]} rows, need at least {row_offset + n}")

    idx = np.empty((n, k), dtype=np.int64)
    vals = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        # copy, with columns in ascending label order so "lower column" == "lower label id"
        block = scores[start:stop] if col_order is None else scores[start:stop][:, col_order]
        block = np.array(block, dtype=np.float32, copy=True)  # (r, C)
        block[np.isnan(block)] = -np.inf
        if exclude is not None:
            _apply_exclusion(block, exclude, row_offset + start, cand_sorted)
        cols, v = _topk_block(block, k)
        idx[start:stop] = cand_sorted[cols]
        vals[start:stop] = v
    return idx, vals


def _apply_exclusion(
    block: np.ndarray, exclude: sp.csr_matrix, row0: int, cand_sorted: np.ndarray
) -> None:
    """Set ``block[i, j] = -inf`` where ``exclude[row0 + i, cand_sorted[j]]`` is stored."""
    sub = exclude[row0 : row0 + block.shape[0]].tocoo()
    if sub.nnz == 0:
        return
    labels = sub.col.astype(np.int64)
    pos = np.searchsorted(cand_sorted, labels)  # (m,)
    pos_c = np.minimum(pos, len(cand_sorted) - 1)
    ok = cand_sorted[pos_c] == labels
    block[sub.row[ok], pos_c[ok]] = -np.inf


class RankingAccumulator:
    """Collect top-k rankings block by block (e.g. while streaming query embeddings).

    ``acc.add(scores_block)`` ranks a (r, C) block whose first row is the next global row;
    ``acc.pred`` / ``acc.vals`` give the (n, k) arrays of everything added so far.
    """

    def __init__(
        self,
        k: int,
        candidates: np.ndarray | None = None,
        exclude: sp.spmatrix | None = None,
    ) -> None:
        self.k = k
        self.candidates = candidates
        self.exclude = None if exclude is None else sp.csr_matrix(exclude)
        self.n_rows = 0
        self._idx: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []

    def add(self, scores: np.ndarray) -> None:
        idx, vals = topk(
            scores, self.k, self.candidates, exclude=self.exclude, row_offset=self.n_rows
        )
        self._idx.append(idx)
        self._vals.append(vals)
        self.n_rows += idx.shape[0]

    @property
    def pred(self) -> np.ndarray:
        """(n, k) int64 ranked global label ids."""
        if not self._idx:
            return np.zeros((0, self.k), dtype=np.int64)
        return np.concatenate(self._idx, axis=0)

    @property
    def vals(self) -> np.ndarray:
        """(n, k) float32 scores matching :attr:`pred`."""
        if not self._vals:
            return np.zeros((0, self.k), dtype=np.float32)
        return np.concatenate(self._vals, axis=0)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def _hit_matrix(pred: np.ndarray, Y: sp.csr_matrix) -> np.ndarray:
    """(n, k) bool: ``pred[i, j]`` is a positive of row i (repeats of a label count once)."""
    n, k = pred.shape
    n_labels = Y.shape[1]
    pos_keys = _pair_keys(_row_ids(Y), Y.indices, n_labels)  # (nnz,) sorted (canonical csr)
    in_range = (pred >= 0) & (pred < n_labels)
    rows = np.arange(n, dtype=np.int64)[:, None]
    keys = _pair_keys(rows, np.where(in_range, pred, 0), n_labels)  # (n, k)
    loc = np.searchsorted(pos_keys, keys)
    loc = np.minimum(loc, max(len(pos_keys) - 1, 0))
    hits = in_range & (pos_keys[loc] == keys) if len(pos_keys) else np.zeros_like(in_range)
    if k > 1:  # a label repeated within a row only counts at its first (best) rank
        order = np.argsort(pred, axis=1, kind="stable")
        srt = np.take_along_axis(pred, order, axis=1)
        dup = np.zeros_like(hits)
        np.put_along_axis(dup, order[:, 1:], srt[:, 1:] == srt[:, :-1], axis=1)
        hits &= ~dup
    return hits


def _ideal_propensity_gain(Y: sp.csr_matrix, inv_prop: np.ndarray, ks: Sequence[int]) -> dict:
    """{k: (n,) sum of the top-min(k, |pos|) inverse propensities among each row's positives}."""
    n = Y.shape[0]
    rows = _row_ids(Y)
    w = inv_prop[Y.indices]  # (nnz,)
    order = np.lexsort((-w, rows))  # rows ascending, weight descending within a row
    w_sorted = w[order]
    rank = np.arange(Y.nnz) - Y.indptr[rows]  # rows are already ascending -> rank within row
    return {k: np.bincount(rows, weights=w_sorted * (rank < k), minlength=n) for k in ks}


def evaluate(
    pred: np.ndarray,
    Y_true: sp.spmatrix,
    inv_prop: np.ndarray | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Precision, recall, nDCG and propensity-scored precision at every k in ``ks``, in percent.

    Args:
        pred: (n, k_max) int64 ranked global label ids per query (best first), ``k_max >=
            max(ks)``; ids outside ``[0, L)`` (e.g. -1 padding) count as misses.
        Y_true: (n, L) ground truth, already filtered (:func:`remove_pairs`); binary relevance.
        inv_prop: (L,) inverse propensities (:func:`inverse_propensity`); PSP@k only if given.
        ks: cut-offs.

    Rows of ``Y_true`` without positives are excluded from every average; ``n_eval`` is the
    number of rows averaged over. With ``pos`` the positives of a row and ``hit_r`` whether
    rank r is a positive:

    * ``P@k = sum_{r<=k} hit_r / k``;
    * ``R@k = sum_{r<=k} hit_r / |pos|``;
    * ``nDCG@k = sum_{r<=k} hit_r / log2(r+1)  /  sum_{r=1}^{min(k,|pos|)} 1 / log2(r+1)``;
    * ``PSP@k`` (pyxclib ``psprecision``): ``mean_rows(sum_{r<=k} hit_r * inv_p[pred_r])``
      divided by ``mean_rows(sum of the min(k,|pos|) largest inv_p among pos)``: a ratio of
      row averages, not an average of per-row ratios. (Rows without positives add 0 to both, so
      excluding them does not change PSP.)

    P, R and nDCG are averaged per row. Returns keys ``P@k``, ``R@k``, ``nDCG@k``, ``PSP@k``
    for each k, plus ``n_eval``; metric values are NaN when ``n_eval == 0``.
    """
    pred = np.asarray(pred)
    if pred.ndim != 2:
        raise ValueError(f"pred must be 2-D, got shape {pred.shape}")
    Y = _clean_csr(Y_true)
    n, k_max = pred.shape
    if Y.shape[0] != n:
        raise ValueError(f"pred has {n} rows but Y_true has {Y.shape[0]}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > k_max:
        raise ValueError(f"ks {ks} must lie in [1, {k_max}] (columns of pred)")
    if inv_prop is not None:
        inv_prop = np.asarray(inv_prop, dtype=np.float64)
        if inv_prop.shape != (Y.shape[1],):
            raise ValueError(f"inv_prop shape {inv_prop.shape} != ({Y.shape[1]},)")

    n_pos = np.diff(Y.indptr)  # (n,)
    valid = n_pos > 0
    n_eval = int(valid.sum())
    out: dict[str, float] = {}
    if n_eval == 0:
        log.warning("evaluate: no row has a positive label; metrics are NaN")
        for k in ks:
            for name in ("P", "R", "nDCG") + (("PSP",) if inv_prop is not None else ()):
                out[f"{name}@{k}"] = float("nan")
        out["n_eval"] = 0
        return out

    pred_v = pred[:, : ks[-1]].astype(np.int64)[valid]  # (n_eval, k)
    Yv = Y[valid]
    npos = n_pos[valid].astype(np.float64)  # (n_eval,)
    hits = _hit_matrix(pred_v, Yv)  # (n_eval, k)
    cum_hits = np.cumsum(hits, axis=1)  # (n_eval, k)
    disc = 1.0 / np.log2(np.arange(2, ks[-1] + 2))  # (k,) 1/log2(r+1), r = 1..k
    cum_dcg = np.cumsum(hits * disc, axis=1)  # (n_eval, k)
    cum_idcg = np.cumsum(disc)  # (k,)
    if inv_prop is not None:
        safe = np.clip(pred_v, 0, Y.shape[1] - 1)
        cum_psp = np.cumsum(hits * inv_prop[safe], axis=1)  # (n_eval, k)
        ideal = _ideal_propensity_gain(Yv, inv_prop, ks)

    for k in ks:
        h = cum_hits[:, k - 1]
        out[f"P@{k}"] = 100.0 * float(np.mean(h / k))
        out[f"R@{k}"] = 100.0 * float(np.mean(h / npos))
        idcg = cum_idcg[np.minimum(npos, k).astype(np.int64) - 1]
        out[f"nDCG@{k}"] = 100.0 * float(np.mean(cum_dcg[:, k - 1] / idcg))
        if inv_prop is not None:
            out[f"PSP@{k}"] = 100.0 * float(np.sum(cum_psp[:, k - 1]) / np.sum(ideal[k]))
    out["n_eval"] = n_eval
    return out


def novel_share_at_1(
    pred: np.ndarray, novel_mask: np.ndarray, Y_true: sp.spmatrix
) -> dict[str, float]:
    """How much of the rank-1 predictions and of the ground truth concerns novel labels.

    Over rows of ``Y_true`` with at least one positive, returns in percent:
    ``novel_at_1`` (rows whose rank-1 label is novel) and ``novel_in_positives`` (positive
    (row, label) pairs whose label is novel). ``novel_mask`` is (L,) bool; NaN if no row counts.
    """
    pred = np.asarray(pred)
    novel_mask = np.asarray(novel_mask, dtype=bool)
    Y = _clean_csr(Y_true)
    if pred.shape[0] != Y.shape[0]:
        raise ValueError(f"pred has {pred.shape[0]} rows but Y_true has {Y.shape[0]}")
    if novel_mask.shape != (Y.shape[1],):
        raise ValueError(f"novel_mask shape {novel_mask.shape} != ({Y.shape[1]},)")
    valid = np.diff(Y.indptr) > 0
    if not valid.any():
        return {"novel_at_1": float("nan"), "novel_in_positives": float("nan")}
    top1 = pred[valid, 0].astype(np.int64)
    in_range = (top1 >= 0) & (top1 < len(novel_mask))
    novel_top1 = in_range & novel_mask[np.where(in_range, top1, 0)]
    return {
        "novel_at_1": 100.0 * float(novel_top1.mean()),
        "novel_in_positives": 100.0 * float(novel_mask[Y.indices].mean()),
    }

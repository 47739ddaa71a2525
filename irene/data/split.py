"""Zero-shot split of an XC dataset into seen and novel labels (the IRENE protocol).

Of the labels occurring in training (at least one training query), a seeded random
``round(novel_fraction * n)`` become *novel*; labels that never occur in training are novel
as well. Training keeps only the seen labels (queries left without labels are dropped); the
zero-shot test set is the test queries with at least one novel label, restricted to the novel
labels. Filtered pairs stay in these matrices: the evaluator removes them.
"""

from __future__ import annotations

import io as _stdio
import json
import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from irene import io
from irene.data.xc import XCDataset

log = logging.getLogger(__name__)

SPLIT_NPZ = "split.npz"
SPLIT_JSON = "split.json"
_FORMAT_VERSION = 1
_MATRICES = ("Y_trn", "Y_tst_zero", "Y_tst_full")


def _mask_columns(Y: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """Copy of ``Y`` ((N, L) CSR) with only the columns where ``keep`` ((L,) bool) is True,
    and without explicit zeros."""
    Y = sp.csr_matrix(Y, dtype=np.float32, copy=True)
    Y.data[~keep[Y.indices]] = 0.0
    Y.eliminate_zeros()
    return Y


def _nonempty_rows(Y: sp.csr_matrix) -> np.ndarray:
    return np.flatnonzero(np.diff(Y.indptr) > 0).astype(np.int64)


@dataclass(frozen=True, eq=False)
class ZeroShotSplit:
    seed: int
    novel_fraction: float
    seen: np.ndarray  # (S,) sorted int64 label indices into Y
    novel: np.ndarray  # (U,) sorted int64 label indices; seen and novel partition range(L)
    trn_rows: np.ndarray  # (n_trn_kept,) sorted train query indices with >= 1 seen label
    Y_trn: sp.csr_matrix  # (len(trn_rows), L) float32, only seen columns non-zero
    zero_rows: np.ndarray  # (n_zero,) sorted test query indices with >= 1 novel label
    Y_tst_zero: sp.csr_matrix  # (len(zero_rows), L) float32, only novel columns non-zero
    Y_tst_full: sp.csr_matrix  # (n_tst, L) float32, all labels (== ds.tst_X_Y)

    @property
    def num_labels(self) -> int:
        return self.Y_tst_full.shape[1]

    def stats(self) -> dict:
        n_zero = len(self.zero_rows)
        n_kept = len(self.trn_rows)
        return {
            "seed": self.seed,
            "novel_fraction": self.novel_fraction,
            "n_labels": self.num_labels,
            "n_seen": len(self.seen),
            "n_novel": len(self.novel),
            "n_train_rows": n_kept,
            "n_test": self.Y_tst_full.shape[0],
            "n_zero_shot_rows": n_zero,
            "avg_seen_labels_per_train_row": self.Y_trn.nnz / n_kept if n_kept else 0.0,
            "avg_novel_labels_per_zero_row": self.Y_tst_zero.nnz / n_zero if n_zero else 0.0,
            "n_novel_with_test_queries": int(len(np.unique(self.Y_tst_zero.indices))),
        }

    def save(self, path) -> None:
        """Write ``split.npz`` (arrays) and ``split.json`` (metadata) under directory ``path``."""
        arrays: dict[str, np.ndarray] = {
            "seen": self.seen,
            "novel": self.novel,
            "trn_rows": self.trn_rows,
            "zero_rows": self.zero_rows,
        }
        for name in _MATRICES:
            Y: sp.csr_matrix = getattr(self, name)
            arrays[f"{name}.data"] = Y.data
            arrays[f"{name}.indices"] = Y.indices
            arrays[f"{name}.indptr"] = Y.indptr
            arrays[f"{name}.shape"] = np.asarray(Y.shape, dtype=np.int64)
        buf = _stdio.BytesIO()
        np.savez_compressed(buf, **arrays)
        meta = {
            "format_version": _FORMAT_VERSION,
            "seed": self.seed,
            "novel_fraction": self.novel_fraction,
            "stats": self.stats(),
        }
        io.makedirs(path)
        io.write_bytes(io.join(path, SPLIT_NPZ), buf.getvalue())
        io.write_text(io.join(path, SPLIT_JSON), json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path) -> ZeroShotSplit:
        meta = json.loads(io.read_text(io.join(path, SPLIT_JSON)))
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported split format {meta.get('format_version')!r}")
        with np.load(_stdio.BytesIO(io.read_bytes(io.join(path, SPLIT_NPZ)))) as z:
            mats = {
                name: sp.csr_matrix(
                    (z[f"{name}.data"], z[f"{name}.indices"], z[f"{name}.indptr"]),
                    shape=tuple(int(x) for x in z[f"{name}.shape"]),
                )
                for name in _MATRICES
            }
            return cls(
                seed=int(meta["seed"]),
                novel_fraction=float(meta["novel_fraction"]),
                seen=z["seen"].astype(np.int64),
                novel=z["novel"].astype(np.int64),
                trn_rows=z["trn_rows"].astype(np.int64),
                zero_rows=z["zero_rows"].astype(np.int64),
                **mats,
            )


def zero_shot_split(ds: XCDataset, novel_fraction: float = 0.1, seed: int = 0) -> ZeroShotSplit:
    """Split ``ds`` labels into seen/novel (see module docstring); deterministic per seed."""
    if not 0.0 < novel_fraction < 1.0:
        raise ValueError(f"novel_fraction must be in (0, 1), got {novel_fraction}")
    L = ds.num_labels
    trn = _mask_columns(ds.trn_X_Y, np.ones(L, dtype=bool))  # drops explicit zeros
    in_train = np.flatnonzero(np.bincount(trn.indices, minlength=L) > 0)  # (n,) sorted
    n_novel = round(novel_fraction * len(in_train))
    perm = np.random.default_rng(seed).permutation(in_train)
    is_novel = np.ones(L, dtype=bool)  # labels absent from training are novel
    is_novel[perm[n_novel:]] = False
    split = split_by_mask(ds, trn, is_novel, seed, novel_fraction)
    log.info("zero-shot split of %s: %s", ds.name, split.stats())
    return split


def split_by_mask(
    ds: XCDataset, trn: sp.csr_matrix, is_novel: np.ndarray, seed: int, novel_fraction: float
) -> ZeroShotSplit:
    """The split whose novel labels are ``is_novel`` ((L,) bool): training keeps the seen
    labels of ``trn`` ((n_trn, L)) and the rows left with one; the zero-shot rows are the test
    queries with a novel label."""
    Y_seen = _mask_columns(trn, ~is_novel)
    trn_rows = _nonempty_rows(Y_seen)
    Y_novel = _mask_columns(ds.tst_X_Y, is_novel)
    zero_rows = _nonempty_rows(Y_novel)
    return ZeroShotSplit(
        seed=int(seed),
        novel_fraction=float(novel_fraction),
        seen=np.flatnonzero(~is_novel).astype(np.int64),
        novel=np.flatnonzero(is_novel).astype(np.int64),
        trn_rows=trn_rows,
        Y_trn=Y_seen[trn_rows],
        zero_rows=zero_rows,
        Y_tst_zero=Y_novel[zero_rows],
        Y_tst_full=sp.csr_matrix(ds.tst_X_Y, dtype=np.float32, copy=True),
    )


@dataclass(frozen=True, eq=False)
class ValidationData:
    """The training side of a split, shaped as a dataset of its own (see
    :func:`validation_dataset`); ``labels``/``trn_rows``/``tst_rows`` map its labels and
    queries back to the original dataset's label indices and *train* query indices."""

    ds: XCDataset
    labels: np.ndarray  # (S,) original label index of each validation label (the seen items)
    trn_rows: np.ndarray  # (n_trn,) original train query index of each validation train query
    tst_rows: np.ndarray  # (n_val,) original train query index of each validation query


def validation_dataset(
    ds: XCDataset, split: ZeroShotSplit, fraction: float = 0.2, seed: int = 0
) -> ValidationData:
    """A dataset for choosing defaults without touching the test split.

    Labels: the seen items of ``split``. Queries: the train queries ``split`` keeps; a seeded
    ``fraction`` of them become the validation (test) queries, the rest its train queries.
    Ground truth is restricted to the seen labels; the train filter pairs become its filters.
    Running the usual protocol on it (``zero_shot_split`` with the same novel fraction) makes
    some seen items novel, exactly as the test split does with the real novel items.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    seen, kept = split.seen, split.trn_rows
    perm = np.random.default_rng(seed).permutation(len(kept))
    n_val = max(1, round(fraction * len(kept)))
    val_pos, trn_pos = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    Y = split.Y_trn.tocsc()[:, seen].tocsr()  # (len(kept), S)
    label_pos = np.full(ds.num_labels, -1, dtype=np.int64)
    label_pos[seen] = np.arange(len(seen))

    def filters(pos: np.ndarray) -> np.ndarray | None:
        if ds.filter_train is None:
            return None
        row_pos = np.full(len(ds.trn_X), -1, dtype=np.int64)
        row_pos[kept[pos]] = np.arange(len(pos))
        f = ds.filter_train
        r, c = row_pos[f[:, 0]], label_pos[f[:, 1]]
        ok = (r >= 0) & (c >= 0)
        return np.stack([r[ok], c[ok]], axis=1)

    val = XCDataset(
        trn_X=[ds.trn_X[i] for i in kept[trn_pos]],
        tst_X=[ds.trn_X[i] for i in kept[val_pos]],
        Y=[ds.Y[i] for i in seen],
        trn_X_Y=Y[trn_pos],
        tst_X_Y=Y[val_pos],
        filter_train=filters(trn_pos),
        filter_test=filters(val_pos),
        name=f"{ds.name}-validation",
    )
    return ValidationData(val, seen.copy(), kept[trn_pos], kept[val_pos])

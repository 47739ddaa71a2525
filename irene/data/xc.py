"""Extreme Classification Repository raw-text format.

A dataset directory (local path or ``s3://bucket/prefix``) holds::

    trn_X.txt    one training query text per line
    tst_X.txt    one test query text per line
    Y.txt        one label text per line
    trn_X_Y.txt  header "N L", then exactly N lines of space-separated ``label:value`` pairs
    tst_X_Y.txt  same for the test queries (an empty line = a query without labels)
    filter_labels_train.txt  optional, "query_idx label_idx" per line
    filter_labels_test.txt   optional, "query_idx label_idx" per line

Filter pairs are removed from both the ranking and the ground truth by the evaluator; they are
kept as-is in the label matrices here.

Reading is strict: every malformed line raises :class:`XCFormatError` naming the file and the
1-based line number; nothing is silently skipped.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from irene import io

log = logging.getLogger(__name__)

TRN_X = "trn_X.txt"
TST_X = "tst_X.txt"
Y_TXT = "Y.txt"
TRN_X_Y = "trn_X_Y.txt"
TST_X_Y = "tst_X_Y.txt"
FILTER_TRAIN = "filter_labels_train.txt"
FILTER_TEST = "filter_labels_test.txt"


class XCFormatError(ValueError):
    """A malformed XC file; the message always starts with ``<file>:<line>:``."""

    def __init__(self, file: str | os.PathLike, line: int, message: str) -> None:
        self.file = str(file)
        self.line = line
        super().__init__(f"{self.file}:{line}: {message}")


# ----------------------------------------------------------------------------------------------
# dataset container


def _canonical_csr(Y, what: str, shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR, float32, sorted indices and no duplicates; checks the shape."""
    if not sp.issparse(Y):
        raise TypeError(f"{what} must be a scipy sparse matrix, got {type(Y).__name__}")
    Y = sp.csr_matrix(Y, dtype=np.float32)
    if Y.shape != shape:
        raise ValueError(f"{what} has shape {Y.shape}, expected {shape}")
    if not Y.has_canonical_format:
        Y = Y.copy()
        Y.sum_duplicates()  # also sorts the indices
    return Y


def _check_filter(F, what: str, n_rows: int, n_labels: int) -> np.ndarray | None:
    if F is None:
        return None
    F = np.asarray(F, dtype=np.int64).reshape(-1, 2)  # (m, 2)
    out_of_range = (F < 0).any() or (F[:, 0] >= n_rows).any() or (F[:, 1] >= n_labels).any()
    if out_of_range:
        raise ValueError(f"{what} has indices out of range ({n_rows} queries, {n_labels} labels)")
    return F


@dataclass
class XCDataset:
    trn_X: list[str]
    tst_X: list[str]
    Y: list[str]
    trn_X_Y: sp.csr_matrix  # (n_trn, L) float32
    tst_X_Y: sp.csr_matrix  # (n_tst, L) float32
    filter_train: np.ndarray | None = None  # (m, 2) int64 (train query idx, label idx)
    filter_test: np.ndarray | None = None  # (m, 2) int64 (test query idx, label idx)
    name: str = "dataset"

    def __post_init__(self) -> None:
        L = len(self.Y)
        self.trn_X_Y = _canonical_csr(self.trn_X_Y, "trn_X_Y", (len(self.trn_X), L))
        self.tst_X_Y = _canonical_csr(self.tst_X_Y, "tst_X_Y", (len(self.tst_X), L))
        self.filter_train = _check_filter(self.filter_train, "filter_train", len(self.trn_X), L)
        self.filter_test = _check_filter(self.filter_test, "filter_test", len(self.tst_X), L)

    @property
    def num_labels(self) -> int:
        return len(self.Y)

    def stats(self) -> dict:
        L = self.num_labels
        n_trn, n_tst = len(self.trn_X), len(self.tst_X)
        trn_per_label = np.bincount(self.trn_X_Y.indices, minlength=L)  # (L,)
        queries = self.trn_X + self.tst_X
        return {
            "name": self.name,
            "n_train": n_trn,
            "n_test": n_tst,
            "n_labels": L,
            "avg_labels_per_query_train": self.trn_X_Y.nnz / n_trn if n_trn else 0.0,
            "avg_labels_per_query_test": self.tst_X_Y.nnz / n_tst if n_tst else 0.0,
            "avg_queries_per_label_train": self.trn_X_Y.nnz / L if L else 0.0,
            "n_labels_without_train_queries": int((trn_per_label == 0).sum()),
            "avg_query_chars": sum(map(len, queries)) / len(queries) if queries else 0.0,
            "avg_label_chars": sum(map(len, self.Y)) / L if L else 0.0,
            "n_filter_train": 0 if self.filter_train is None else len(self.filter_train),
            "n_filter_test": 0 if self.filter_test is None else len(self.filter_test),
        }


# ----------------------------------------------------------------------------------------------
# text files


def _decode(path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise XCFormatError(path, line, f"invalid UTF-8: {e.reason}") from None
    return text.removeprefix("\ufeff")


def _split_lines(text: str) -> list[str]:
    """Lines without their terminator ("\\n" or "\\r\\n"); only "\\n" separates lines."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final terminator
    return [s[:-1] if s.endswith("\r") else s for s in lines]


def read_text_lines(path) -> list[str]:
    """One string per line, only the trailing newline stripped."""
    return _split_lines(_decode(path, io.read_bytes(path)))


def _check_writable_texts(texts: list[str], what: str) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{what}[{i}] is not a str: {type(t).__name__}")
        if "\n" in t or t.endswith("\r"):
            raise ValueError(f"{what}[{i}] contains a newline and cannot be written: {t[:80]!r}")


def write_text_lines(path, texts: list[str]) -> None:
    _check_writable_texts(texts, str(path))
    io.write_text(path, "".join(t + "\n" for t in texts))


# ----------------------------------------------------------------------------------------------
# label matrices


def _parse_header(path, line: str | None) -> tuple[int, int]:
    if line is None:
        raise XCFormatError(path, 1, 'empty file, expected a header "N L"')
    parts = line.split()
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise XCFormatError(path, 1, f'malformed header {line[:80]!r}, expected "N L"')
    return int(parts[0]), int(parts[1])


def _parse_rows(path, rows: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``label:value`` rows -> (indptr (N+1,), indices (nnz,), data (nnz,)), unchecked ranges."""
    counts = np.zeros(len(rows) + 1, dtype=np.int64)  # (N+1,)
    indices: list[int] = []
    data: list[float] = []
    for r, line in enumerate(rows):
        toks = line.split()
        counts[r + 1] = len(toks)
        for tok in toks:
            i, sep, v = tok.partition(":")
            try:
                if not sep:
                    raise ValueError
                ii, vv = int(i), float(v)
            except ValueError:
                raise XCFormatError(
                    path, r + 2, f"bad token {tok[:40]!r}, expected label_index:value"
                ) from None
            if not math.isfinite(vv):
                raise XCFormatError(path, r + 2, f"non-finite value in {tok[:40]!r}")
            indices.append(ii)
            data.append(vv)
    return (
        np.cumsum(counts),
        np.asarray(indices, dtype=np.int64),
        np.asarray(data, dtype=np.float32),
    )


def read_label_matrix(
    path, n_rows: int | None = None, n_labels: int | None = None
) -> sp.csr_matrix:
    """Read an XC label matrix file -> (N, L) float32 CSR with sorted indices.

    ``n_rows``/``n_labels``, when given, must match the header (they come from the text files).
    """
    lines = _split_lines(_decode(path, io.read_bytes(path)))
    N, L = _parse_header(path, lines[0] if lines else None)
    if n_rows is not None and N != n_rows:
        raise XCFormatError(
            path, 1, f"header declares {N} rows but the query text file has {n_rows} lines"
        )
    if n_labels is not None and L != n_labels:
        raise XCFormatError(
            path, 1, f"header declares {L} labels but the label text file has {n_labels} lines"
        )
    rows = lines[1:]
    if len(rows) < N:
        raise XCFormatError(
            path, len(lines) + 1, f"file ends after {len(rows)} rows, header declares {N}"
        )
    if len(rows) > N:
        raise XCFormatError(path, N + 2, f"extra line: header declares only {N} rows")
    indptr, indices, data = _parse_rows(path, rows)
    if len(indices):
        bad = np.flatnonzero((indices < 0) | (indices >= L))
        if len(bad):
            pos = int(bad[0])
            row = int(np.searchsorted(indptr, pos, side="right")) - 1
            raise XCFormatError(path, row + 2, f"label index {indices[pos]} out of range [0, {L})")
    Y = sp.csr_matrix((data, indices, indptr), shape=(N, L))
    Y.sort_indices()
    if len(indices):
        row_of = np.repeat(np.arange(N), np.diff(indptr))  # (nnz,)
        dup = np.flatnonzero((np.diff(Y.indices) == 0) & (np.diff(row_of) == 0))
        if len(dup):
            row = int(row_of[dup[0]])
            raise XCFormatError(path, row + 2, f"duplicate label {Y.indices[dup[0]]} on a line")
    return Y


def write_label_matrix(path, Y: sp.csr_matrix) -> None:
    """Write ``Y`` ((N, L) sparse) in the XC format; values use the shortest float32 repr."""
    Y = sp.csr_matrix(Y, dtype=np.float32)
    if not Y.has_canonical_format:
        Y = Y.copy()
        Y.sum_duplicates()
    if not np.isfinite(Y.data).all():
        raise ValueError(f"{path}: label matrix has non-finite values")
    N, L = Y.shape
    pairs = [
        f"{i}:{v}" for i, v in zip(Y.indices.tolist(), Y.data.astype(str).tolist(), strict=True)
    ]
    ptr = Y.indptr.tolist()
    out = [f"{N} {L}\n"]
    out.extend(" ".join(pairs[ptr[r] : ptr[r + 1]]) + "\n" for r in range(N))
    io.write_text(path, "".join(out))


# ----------------------------------------------------------------------------------------------
# filters


def read_filter(path, n_rows: int, n_labels: int) -> np.ndarray:
    """Read "query_idx label_idx" lines -> (m, 2) int64, file order, ranges checked."""
    lines = _split_lines(_decode(path, io.read_bytes(path)))
    out = np.empty((len(lines), 2), dtype=np.int64)  # (m, 2)
    for k, line in enumerate(lines):
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            q, lab = int(parts[0]), int(parts[1])
        except ValueError:
            raise XCFormatError(
                path, k + 1, f"malformed line {line[:80]!r}, expected 'query_idx label_idx'"
            ) from None
        if not 0 <= q < n_rows:
            raise XCFormatError(path, k + 1, f"query index {q} out of range [0, {n_rows})")
        if not 0 <= lab < n_labels:
            raise XCFormatError(path, k + 1, f"label index {lab} out of range [0, {n_labels})")
        out[k] = q, lab
    return out


def write_filter(path, F: np.ndarray) -> None:
    F = np.asarray(F, dtype=np.int64).reshape(-1, 2)
    io.write_text(path, "".join(f"{q} {lab}\n" for q, lab in F.tolist()))


# ----------------------------------------------------------------------------------------------
# whole dataset


def read_xc(path, name: str | None = None) -> XCDataset:
    """Read a dataset directory (local or ``s3://``); ``name`` defaults to its base name."""
    j = lambda f: io.join(path, f)  # noqa: E731
    for f in (TRN_X, TST_X, Y_TXT, TRN_X_Y, TST_X_Y):
        if not io.exists(j(f)):
            raise FileNotFoundError(f"XC dataset file missing: {j(f)}")
    trn_X = read_text_lines(j(TRN_X))
    tst_X = read_text_lines(j(TST_X))
    Y = read_text_lines(j(Y_TXT))
    L = len(Y)
    trn_X_Y = read_label_matrix(j(TRN_X_Y), n_rows=len(trn_X), n_labels=L)
    tst_X_Y = read_label_matrix(j(TST_X_Y), n_rows=len(tst_X), n_labels=L)
    f_trn = read_filter(j(FILTER_TRAIN), len(trn_X), L) if io.exists(j(FILTER_TRAIN)) else None
    f_tst = read_filter(j(FILTER_TEST), len(tst_X), L) if io.exists(j(FILTER_TEST)) else None
    ds = XCDataset(
        trn_X=trn_X,
        tst_X=tst_X,
        Y=Y,
        trn_X_Y=trn_X_Y,
        tst_X_Y=tst_X_Y,
        filter_train=f_trn,
        filter_test=f_tst,
        name=name if name is not None else io.basename(path),
    )
    log.info("read XC dataset %s: %d train, %d test, %d labels", ds.name, len(trn_X), len(tst_X), L)
    return ds


def write_xc(ds: XCDataset, path) -> None:
    """Write ``ds`` to a directory; stale filter files are removed when ``ds`` has none.

    Raises ``ValueError`` (before writing anything) if a text contains a newline.
    """
    _check_writable_texts(ds.trn_X, "trn_X")
    _check_writable_texts(ds.tst_X, "tst_X")
    _check_writable_texts(ds.Y, "Y")
    io.makedirs(path)
    write_text_lines(io.join(path, TRN_X), ds.trn_X)
    write_text_lines(io.join(path, TST_X), ds.tst_X)
    write_text_lines(io.join(path, Y_TXT), ds.Y)
    write_label_matrix(io.join(path, TRN_X_Y), ds.trn_X_Y)
    write_label_matrix(io.join(path, TST_X_Y), ds.tst_X_Y)
    for fname, F in ((FILTER_TRAIN, ds.filter_train), (FILTER_TEST, ds.filter_test)):
        if F is not None:
            write_filter(io.join(path, fname), F)
        elif io.exists(io.join(path, fname)):
            io.delete(io.join(path, fname))

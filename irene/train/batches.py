"""The tables the learned stages stream over, and their in-memory batcher.

The classifier stage streams the **pair table**: one row per (train query, positive seen
item) pair::

    q_emb : (d,)   float32  the query's embedding
    pos   : ()     int64    the positive seen item (position in the seen-item table)
    q_pos : (P,)   int64    all positives of that query, padded with -1
    neg   : (m,)   int64    the query's nearest items by embedding (mined hard negatives)

The generator stage streams the **item table** (label-centric batches): one row per seen item
with its positive queries, of which every epoch samples ``queries_per_item``::

    item  : ()         int64    the seen item
    q_emb : (n_q, d)   float32  embeddings of (up to ``max_queries``) of its positive queries
    q_pos : (n_q, P)   int64    each of those queries' positives, padded with -1

:func:`item_rows` turns a batch of item rows into pair rows (``q_emb``, ``pos``, ``q_pos``),
so both stages feed the same loss. Every sampling draw depends on (seed, epoch, item) only, so
every executor and every sharding draws the same queries for an item.
"""

from __future__ import annotations

from collections.abc import Iterator

import faiss  # noqa: I001
import numpy as np
import scipy.sparse as sp
import torch

NUMERIC = {"q_emb": np.float32, "pos": np.int64, "q_pos": np.int64, "neg": np.int64}


def padded_positives(Y: sp.csr_matrix, max_positives: int) -> np.ndarray:
    """(n, P) int64 positives per row, padded with -1; P = min(max row nnz, max_positives)."""
    Y = Y.tocsr()
    counts = np.diff(Y.indptr)
    P = int(max(1, min(max_positives, counts.max(initial=0))))
    out = np.full((Y.shape[0], P), -1, dtype=np.int64)
    for r in range(Y.shape[0]):  # rows are short; this is fast enough for 1e6 rows
        cols = Y.indices[Y.indptr[r] : Y.indptr[r + 1]][:P]
        out[r, : len(cols)] = cols
    return out


def mine_hard_negatives(query_emb: np.ndarray, item_emb: np.ndarray, m: int) -> np.ndarray:
    """(n, m) int64 nearest items to each query by inner product (positives may appear;
    the objectives mask any positive wherever it shows up)."""
    if m <= 0:
        return np.zeros((len(query_emb), 0), dtype=np.int64)
    index = faiss.IndexFlatIP(item_emb.shape[1])
    index.add(np.ascontiguousarray(item_emb, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), min(m, len(item_emb)))
    return idx.astype(np.int64)


def pair_columns(
    query_emb: np.ndarray,  # (n, d)
    Y: sp.csr_matrix,  # (n, S) positives over seen-item positions
    hard_neg: np.ndarray,  # (n, m)
    max_positives: int = 64,
) -> dict[str, np.ndarray]:
    """The pair table as flat columns, one row per stored entry of ``Y`` (row-major order)."""
    coo = Y.tocsr().tocoo()
    q, item = coo.row.astype(np.int64), coo.col.astype(np.int64)
    return {
        "q_emb": np.ascontiguousarray(query_emb[q], dtype=np.float32),
        "pos": item,
        "q_pos": padded_positives(Y, max_positives)[q],
        "neg": np.asarray(hard_neg, dtype=np.int64)[q],
    }


def item_columns(
    query_emb: np.ndarray,  # (n, d)
    Y: sp.csr_matrix,  # (n, S)
    max_positives: int = 64,
    max_queries: int = 64,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The item table: seen items with >= 1 positive query, each with up to ``max_queries``
    of them (a seeded subset for items with more). Matrix cells are object arrays."""
    Yc = Y.tocsc()
    q_pos = padded_positives(Y, max_positives)  # (n, P)
    rng = np.random.default_rng(seed)
    items, embs, poss = [], [], []
    for j in range(Y.shape[1]):
        qs = Yc.indices[Yc.indptr[j] : Yc.indptr[j + 1]]
        if len(qs) == 0:
            continue
        if len(qs) > max_queries:
            qs = np.sort(rng.choice(qs, max_queries, replace=False))
        items.append(j)
        embs.append(np.ascontiguousarray(query_emb[qs], dtype=np.float32))
        poss.append(q_pos[qs])
    obj = np.empty(len(items), dtype=object)
    q_emb, q_p = obj.copy(), obj.copy()
    q_emb[:], q_p[:] = embs, poss
    return {"item": np.asarray(items, dtype=np.int64), "q_emb": q_emb, "q_pos": q_p}


def _uniform(keys: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Floats in [0, 1) (shape of ``keys``): a fixed hash of (seed, epoch, key) (splitmix64)."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= np.uint64((seed * 1_000_003 + epoch) & 0xFFFFFFFFFFFF) * np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def sample_slots(item: int, n_q: int, k: int, seed: int, epoch: int) -> np.ndarray:
    """(k,) indices into an item's ``n_q`` queries: a hashed permutation, cycled if n_q < k."""
    order = np.argsort(_uniform(np.arange(n_q, dtype=np.int64) + item * 1_000_003, seed, epoch))
    return np.resize(order, k)


def item_rows(
    batch: dict[str, np.ndarray], per_item: int, seed: int, epoch: int
) -> dict[str, np.ndarray]:
    """Pair rows of a batch of item rows: ``per_item`` sampled queries of every item."""
    q_emb, q_pos, pos = [], [], []
    for item, emb, qp in zip(batch["item"].tolist(), batch["q_emb"], batch["q_pos"], strict=True):
        emb, qp = _matrix(emb, np.float32), _matrix(qp, np.int64)  # (n_q, d), (n_q, P)
        slots = sample_slots(item, len(emb), per_item, seed, epoch)
        q_emb.append(emb[slots])
        q_pos.append(qp[slots])
        pos.append(np.full(per_item, item, dtype=np.int64))
    return {
        "q_emb": np.concatenate(q_emb),  # (B * per_item, d)
        "pos": np.concatenate(pos),  # (B * per_item,)
        "q_pos": np.concatenate(q_pos),  # (B * per_item, P)
    }


def _matrix(v, dtype) -> np.ndarray:
    """A (n, k) cell of a list column (Ray Data may hand it as an array of arrays)."""
    v = np.asarray(v)
    if v.dtype == object:
        v = np.stack(list(v))
    return np.ascontiguousarray(v, dtype=dtype)


def _dense(v: np.ndarray, dtype) -> np.ndarray:
    """A column as a contiguous array (Ray Data may hand list columns as arrays of arrays)."""
    if v.dtype == object:
        v = np.stack(list(v)) if len(v) else np.zeros((0,), dtype=dtype)
    v = np.ascontiguousarray(v, dtype=dtype)
    return v if v.flags.writeable else v.copy()


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Numeric pair-table columns as tensors (other columns, e.g. texts, stay as they are)."""
    return {
        k: torch.from_numpy(_dense(v, NUMERIC[k])) if k in NUMERIC else v for k, v in batch.items()
    }


class TableBatches:
    """Shuffled batches of an in-memory table (dict of equal-length columns) for one rank.

    ``epoch(e, batch_size)`` reshuffles with (seed, e) and yields this rank's
    ``batch_size // world`` rows of every global batch, so ``world`` ranks together cover the
    same global batches as one rank alone.
    """

    def __init__(self, columns: dict[str, np.ndarray], seed: int = 0) -> None:
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"table columns differ in length: {sorted(lengths)}")
        self.columns = columns
        self.seed = seed
        self.num_rows = lengths.pop()

    def epoch(
        self,
        epoch: int,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
    ) -> Iterator[dict[str, np.ndarray]]:
        rows = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
        local = max(1, batch_size // world)
        step = local * world
        for s in range(0, len(rows), step):
            idx = rows[s : s + step]
            if len(idx) < step and (drop_last or world > 1):
                return  # ranks must take the same number of steps
            part = idx[rank * local : (rank + 1) * local] if world > 1 else idx
            yield {k: v[part] for k, v in self.columns.items()}

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

With ``classifiers.cluster_size = g > 0`` the pair table is **grouped** (NGAME's clustered
batches): pairs are ordered by a balanced recursive 2-means tree over their queries'
embeddings and cut into rows of ``g`` pairs (cells ``(g, d)``, ``(g,)``, ``(g, P)``,
``(g, m)``), so every batch is a random set of clusters of similar queries whose positives are
each other's hard negatives. :func:`group_rows` turns a batch of such rows back into pair
rows. The encoder is frozen, so the clusters are computed once, in ``prepare``.
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


def pair_rows(Y: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(query, item) int64 of every stored entry of ``Y``, row-major: the pair table's rows."""
    coo = Y.tocsr().tocoo()
    return coo.row.astype(np.int64), coo.col.astype(np.int64)


def drop_likely_positives(
    hard_neg: np.ndarray,  # (n, m) mined items per query, -1 = none
    query_emb: np.ndarray,  # (n, d)
    item_emb: np.ndarray,  # (S, d)
    Y: sp.csr_matrix,  # (n, S) positives
    chunk: int = 8192,
) -> np.ndarray:
    """``hard_neg`` with -1 wherever a mined item scores above every positive of its query
    (by embedding): such an item is more likely a missing label than a negative."""
    Y = Y.tocsr()
    rows, cols = pair_rows(Y)
    pair = np.empty(Y.nnz, dtype=np.float32)  # (nnz,) each positive pair's score
    for a in range(0, Y.nnz, chunk * 8):
        r, c = rows[a : a + chunk * 8], cols[a : a + chunk * 8]
        pair[a : a + len(r)] = np.einsum("nd,nd->n", query_emb[r], item_emb[c])
    best = np.full(Y.shape[0], np.inf, dtype=np.float32)  # rows without positives: keep all
    has = np.diff(Y.indptr) > 0
    best[has] = np.maximum.reduceat(pair, Y.indptr[:-1][has])
    out = np.array(hard_neg, dtype=np.int64, copy=True)
    for a in range(0, len(out), chunk):
        neg = out[a : a + chunk]  # (c, m) view
        score = np.einsum("cd,cmd->cm", query_emb[a : a + chunk], item_emb[np.maximum(neg, 0)])
        neg[score > best[a : a + chunk, None]] = -1
    return out


def pair_columns(
    query_emb: np.ndarray,  # (n, d)
    Y: sp.csr_matrix,  # (n, S) positives over seen-item positions
    hard_neg: np.ndarray,  # (n, m)
    max_positives: int = 64,
) -> dict[str, np.ndarray]:
    """The pair table as flat columns, one row per stored entry of ``Y`` (row-major order)."""
    q, item = pair_rows(Y)
    return {
        "q_emb": np.ascontiguousarray(query_emb[q], dtype=np.float32),
        "pos": item,
        "q_pos": padded_positives(Y, max_positives)[q],
        "neg": np.asarray(hard_neg, dtype=np.int64)[q],
    }


def cluster_order(emb: np.ndarray, leaf_size: int, seed: int = 0, iters: int = 4) -> np.ndarray:
    """(n,) permutation of the rows of ``emb`` (n, d) that keeps similar rows together: a
    balanced recursive 2-means tree (every split halves its node), leaves of <= ``leaf_size``
    rows, read in depth-first order."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    stack = [np.arange(len(emb))]
    while stack:
        idx = stack.pop()
        if len(idx) <= max(1, leaf_size):
            out.append(idx)
            continue
        x = emb[idx]  # (m, d)
        c = x[rng.choice(len(idx), 2, replace=False)]  # (2, d) two random members
        half = len(idx) // 2
        for _ in range(iters):
            order = np.argsort(x @ (c[1] - c[0]), kind="stable")  # closer to c[0] first
            c = np.stack([x[order[:half]].mean(0), x[order[half:]].mean(0)])
        stack += [idx[order[half:]], idx[order[:half]]]  # the c[0] half is read first
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def group_columns(
    columns: dict[str, np.ndarray], row_key: np.ndarray, group_size: int
) -> dict[str, np.ndarray]:
    """Table rows of ``group_size`` consecutive rows of ``columns`` ordered by ``row_key``
    (e.g. each pair's rank in :func:`cluster_order` of the queries). The order is padded to a
    multiple of ``group_size`` by repeating its start, so every group is full."""
    n = len(row_key)
    order = np.argsort(row_key, kind="stable")
    n_groups = max(1, -(-n // group_size))
    order = np.resize(order, n_groups * group_size).reshape(n_groups, group_size)
    out = {}
    for k, v in columns.items():
        cells = np.empty(n_groups, dtype=object)
        cells[:] = [np.ascontiguousarray(v[o]) for o in order]
        out[k] = cells if v.ndim > 1 else np.stack(list(cells))  # (G,) cells or (G, g)
    return out


def group_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pair rows of a batch of grouped rows (:func:`group_columns`): the groups concatenated."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype == object:  # (B,) cells of (g, k) arrays
            out[k] = np.concatenate([_matrix(c, NUMERIC.get(k)) for c in v])  # None: as stored
        else:  # (B, g, ...) -> (B * g, ...)
            out[k] = v.reshape(-1, *v.shape[2:])
    return out


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

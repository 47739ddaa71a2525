"""Query-item pair tables: the unit both training loops stream over.

A batch is a dict of tensors with the same schema whether it comes from memory
(:class:`PairBatches`) or from Ray Data (``iter_torch_batches`` over the Parquet pair table):

    q_emb : (B, d)  float32  the query's frozen embedding
    pos   : (B,)    int64    the positive seen item (position in the seen-item table)
    q_pos : (B, P)  int64    all positives of that query, padded with -1
    neg   : (B, m)  int64    hard negatives of that query (kNN over item embeddings)
"""

from __future__ import annotations

from collections.abc import Iterator

import faiss  # noqa: I001
import numpy as np
import scipy.sparse as sp
import torch

BATCH_KEYS = ("q_emb", "pos", "q_pos", "neg")


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
    the loss treats any positive as a positive wherever it shows up)."""
    if m <= 0:
        return np.zeros((len(query_emb), 0), dtype=np.int64)
    index = faiss.IndexFlatIP(item_emb.shape[1])
    index.add(np.ascontiguousarray(item_emb, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), min(m, len(item_emb)))
    return idx.astype(np.int64)


class PairBatches:
    """In-memory pair table. Iterating yields shuffled batches (one epoch)."""

    def __init__(
        self,
        query_emb: np.ndarray,  # (n, d)
        Y: sp.csr_matrix,  # (n, S) positives over seen-item positions
        hard_neg: np.ndarray,  # (n, m)
        batch_size: int,
        max_positives: int = 64,
        seed: int = 0,
    ) -> None:
        Y = Y.tocsr()
        self.query_emb = torch.from_numpy(np.ascontiguousarray(query_emb, dtype=np.float32))
        self.q_pos = torch.from_numpy(padded_positives(Y, max_positives))
        self.neg = torch.from_numpy(np.asarray(hard_neg, dtype=np.int64))
        coo = Y.tocoo()
        self.pair_q = torch.from_numpy(coo.row.astype(np.int64))
        self.pair_item = torch.from_numpy(coo.col.astype(np.int64))
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    @property
    def num_pairs(self) -> int:
        return int(self.pair_q.numel())

    def __len__(self) -> int:  # batches per epoch
        return -(-self.num_pairs // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def for_epoch(self, epoch: int) -> PairBatches:
        """Reshuffle for ``epoch`` and return self (the ``epoch_batches`` callable of ``fit``)."""
        self.set_epoch(epoch)
        return self

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.num_pairs, generator=g)
        for s in range(0, len(perm), self.batch_size):
            idx = perm[s : s + self.batch_size]
            q = self.pair_q[idx]
            yield {
                "q_emb": self.query_emb[q],
                "pos": self.pair_item[idx],
                "q_pos": self.q_pos[q],
                "neg": self.neg[q],
            }

    def to_columns(self) -> dict[str, np.ndarray]:
        """The whole table as flat columns (one row per pair), e.g. for Parquet."""
        q = self.pair_q
        return {
            "q_emb": self.query_emb[q].numpy(),
            "pos": self.pair_item.numpy(),
            "q_pos": self.q_pos[q].numpy(),
            "neg": self.neg[q].numpy(),
        }


def batch_labels(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Items scored in this batch and the (B, n_items) 0/1 target matrix.

    The items are every positive and hard negative of the batch (in-batch negatives come for
    free: another pair's positive is a negative unless it is one of this query's positives).
    """
    cand = torch.cat([batch["pos"], batch["neg"].reshape(-1)])
    labels = torch.unique(cand[cand >= 0])  # (n,)
    target = (batch["q_pos"].unsqueeze(-1) == labels.view(1, 1, -1)).any(1)  # (B, n)
    return labels, target.float()

"""Selector: K nearest seen items of an item embedding, with cosine scores bucketed 0..10."""

from __future__ import annotations

import json
import os

import faiss  # noqa: I001  (faiss before torch/numpy-heavy libs that bundle OpenMP)
import numpy as np
from safetensors.numpy import load_file, save_file

NUM_SCORE_BUCKETS = 11  # cosine scores map to integers 0..10


def score_buckets(scores: np.ndarray) -> np.ndarray:
    """Cosine scores (any shape) -> int64 buckets round(10 * max(s, 0)) in 0..10."""
    return np.clip(np.rint(np.asarray(scores) * 10.0), 0, NUM_SCORE_BUCKETS - 1).astype(np.int64)


class Selector:
    """Exact (flat) or HNSW inner-product search over seen-item embeddings."""

    def __init__(
        self, item_emb: np.ndarray, kind: str = "flat", hnsw_m: int = 32, ef_search: int = 128
    ) -> None:
        # item_emb: (S, d) float32, L2-normalised
        if kind not in ("flat", "hnsw"):
            raise ValueError(f"selector kind must be 'flat' or 'hnsw', got {kind!r}")
        self.item_emb = np.ascontiguousarray(item_emb, dtype=np.float32)
        self.kind, self.hnsw_m, self.ef_search = kind, hnsw_m, ef_search
        dim = self.item_emb.shape[1]
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        else:
            self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efSearch = ef_search
        self.index.add(self.item_emb)

    @property
    def num_items(self) -> int:
        return int(self.item_emb.shape[0])

    def search(
        self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k seen items for each query row.

        queries: (n, d) float32. exclude: (n,) item positions to drop per row (leave-one-out:
        an item is never its own neighbour), or None.
        Returns (idx (n, k) int64, scores (n, k) float32); missing slots are -1 / 0.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        extra = 1 if exclude is not None else 0
        fetch = min(k + extra, self.num_items)
        scores, idx = self.index.search(queries, fetch)  # (n, fetch)
        if exclude is not None:
            keep = idx != np.asarray(exclude).reshape(-1, 1)  # (n, fetch)
            # stable-move excluded slots to the end, then cut to k
            order = np.argsort(~keep, axis=1, kind="stable")
            idx = np.take_along_axis(np.where(keep, idx, -1), order, axis=1)
            scores = np.take_along_axis(np.where(keep, scores, 0.0), order, axis=1)
        idx, scores = idx[:, :k], scores[:, :k]
        if idx.shape[1] < k:  # fewer items than k
            pad = k - idx.shape[1]
            idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)))
        return idx.astype(np.int64), scores.astype(np.float32)

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        save_file({"item_emb": self.item_emb}, os.path.join(path, "selector.safetensors"))
        with open(os.path.join(path, "selector.json"), "w") as f:
            json.dump({"kind": self.kind, "hnsw_m": self.hnsw_m, "ef_search": self.ef_search}, f)

    @classmethod
    def load(cls, path: str) -> Selector:
        emb = load_file(os.path.join(path, "selector.safetensors"))["item_emb"]
        with open(os.path.join(path, "selector.json")) as f:
            cfg = json.load(f)
        return cls(emb, **cfg)

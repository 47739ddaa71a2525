"""The prepared-artifacts location of the distributed pipeline (a local dir or s3:// prefix).

Layout under ``work_dir``::

    prepare.json          counts, dimension, timings, config hash of the prepare stage
    split/                the zero-shot split (ZeroShotSplit.save)
    items.parquet         label (int64, global), id (str), seen_pos (int64, -1 = novel), emb (d,)
    queries_trn.parquet   row (int64, train query index; split.trn_rows order), emb (d,)
    queries_tst.parquet   row (int64, test query index), emb (d,)
    pairs/part-*.parquet  the (query, item) pair table: q_emb (d,), pos, q_pos (P,), neg (m,)
    neighbours.parquet    leave-one-out neighbours of each seen item: nbr_idx (K,), nbr_bucket (K,)
    classifiers/          trained seen-item classifiers (OVAClassifiers.save)
    generator/            trained generator (IreneGenerator.save)
    history_<stage>.json  per-epoch training metrics of a stage

Everything here is plain pyarrow + numpy; no Ray.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from irene import io

T = TypeVar("T")

PREPARE_META = "prepare.json"
SPLIT_DIR = "split"
ITEMS = "items.parquet"
QUERIES_TRN = "queries_trn.parquet"
QUERIES_TST = "queries_tst.parquet"
PAIRS_DIR = "pairs"
NEIGHBOURS = "neighbours.parquet"
CLASSIFIERS_DIR = "classifiers"
GENERATOR_DIR = "generator"


def history_file(stage: str) -> str:
    return f"history_{stage}.json"


# ----------------------------------------------------------------------------------------------
# arrays <-> Arrow


def matrix_column(x: np.ndarray) -> pa.FixedSizeListArray:
    """(n, k) array -> fixed-size-list column (Ray Data reads it back as (B, k) tensors)."""
    x = np.ascontiguousarray(x)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def column_matrix(col: pa.ChunkedArray | pa.Array, dtype=np.float32) -> np.ndarray:
    """Fixed-size-list column -> (n, k) array."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    k = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, k)


def write_table(uri: str, table: pa.Table) -> None:
    with io.open_output(uri) as f:
        pq.write_table(table, f)


def read_table(uri: str) -> pa.Table:
    with io.open_input(uri) as f:
        return pq.read_table(pa.BufferReader(f.read()))


def write_json(uri: str, obj: Any) -> None:
    io.write_text(uri, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(uri: str) -> Any:
    return json.loads(io.read_text(uri))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------------------------
# embeddings, items, neighbours


def write_embeddings(uri: str, rows: np.ndarray, emb: np.ndarray) -> None:
    """rows: (n,) int64 ids; emb: (n, d) float32."""
    write_table(
        uri,
        pa.table({"row": np.asarray(rows, np.int64), "emb": matrix_column(emb.astype(np.float32))}),
    )


def read_embeddings(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n,), emb (n, d) float32)."""
    t = read_table(uri)
    return t["row"].to_numpy(), column_matrix(t["emb"])


def write_items(uri: str, emb: np.ndarray, seen: np.ndarray) -> None:
    """All L items: emb (L, d); seen (S,) global label indices of the seen items."""
    L = len(emb)
    seen_pos = np.full(L, -1, dtype=np.int64)
    seen_pos[seen] = np.arange(len(seen))
    table = pa.table(
        {
            "label": np.arange(L, dtype=np.int64),
            "id": [str(i) for i in range(L)],
            "seen_pos": seen_pos,
            "emb": matrix_column(emb.astype(np.float32)),
        }
    )
    write_table(uri, table)


def read_items(uri: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids (L,), seen_pos (L,) with -1 for novel items, emb (L, d))."""
    t = read_table(uri)
    return t["id"].to_pylist(), t["seen_pos"].to_numpy(), column_matrix(t["emb"])


def read_seen_items(work_dir: str) -> tuple[list[str], np.ndarray]:
    """(seen item ids in classifier order (S,), seen item embeddings (S, d))."""
    ids, seen_pos, emb = read_items(io.join(work_dir, ITEMS))
    seen = np.flatnonzero(seen_pos >= 0)
    order = seen[np.argsort(seen_pos[seen])]
    return [ids[i] for i in order], emb[order]


def write_neighbours(uri: str, nbr_idx: np.ndarray, nbr_bucket: np.ndarray) -> None:
    """nbr_idx, nbr_bucket: (S, K) int64 (leave-one-out, -1 = none)."""
    write_table(
        uri,
        pa.table(
            {
                "nbr_idx": matrix_column(nbr_idx.astype(np.int64)),
                "nbr_bucket": matrix_column(nbr_bucket.astype(np.int64)),
            }
        ),
    )


def read_neighbours(uri: str) -> tuple[np.ndarray, np.ndarray]:
    t = read_table(uri)
    return column_matrix(t["nbr_idx"], np.int64), column_matrix(t["nbr_bucket"], np.int64)


# ----------------------------------------------------------------------------------------------
# the pair table


def write_pairs(
    dir_uri: str, columns: dict[str, np.ndarray], rows_per_file: int, seed: int = 0
) -> int:
    """Write the pair table (``PairBatches.to_columns()``) shuffled once, in Parquet parts.

    Returns the number of files. Old parts under ``dir_uri`` are removed first.
    """
    n = len(columns["pos"])
    perm = np.random.default_rng(seed).permutation(n)
    if io.exists(dir_uri):
        io.delete(dir_uri)
    io.makedirs(dir_uri)
    n_files = max(1, -(-n // rows_per_file))
    for f, s in enumerate(range(0, max(n, 1), rows_per_file)):
        idx = perm[s : s + rows_per_file]
        table = pa.table(
            {
                "q_emb": matrix_column(columns["q_emb"][idx].astype(np.float32)),
                "pos": columns["pos"][idx].astype(np.int64),
                "q_pos": matrix_column(columns["q_pos"][idx].astype(np.int64)),
                "neg": matrix_column(columns["neg"][idx].astype(np.int64)),
            }
        )
        write_table(io.join(dir_uri, f"part-{f:05d}.parquet"), table)
    return n_files


# ----------------------------------------------------------------------------------------------
# model parts (their save/load work on local directories)


def save_dir(uri: str, save: Callable[[str], None]) -> None:
    """Run ``save(local_dir)`` and place the result at ``uri`` (local or s3://)."""
    if not io.is_s3(uri):
        save(str(uri))
        return
    with tempfile.TemporaryDirectory() as tmp:
        save(tmp)
        io.copy_tree(tmp, uri)


def load_dir(uri: str, load: Callable[[str], T]) -> T:
    """``load(local_dir)`` of a directory at ``uri`` (downloaded first when on S3)."""
    if not io.is_s3(uri):
        return load(str(uri))
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "part")
        io.copy_tree(uri, local)
        return load(local)

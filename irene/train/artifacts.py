"""The prepared-artifacts location of the distributed pipeline (a local dir or s3:// prefix).

Layout under ``work_dir``::

    prepare.json          counts, dimension, timings, config hash of the prepare stage
    split/                the zero-shot split (ZeroShotSplit.save)
    items.parquet         label (int64, global), id, text, metadata (JSON), seen_pos (int64,
                          -1 = novel / generated), emb (d,)
    queries_trn.parquet   row (int64, train query index; split.trn_rows order), emb (d,)
    queries_tst.parquet   row (int64, test query index), emb (d,)
    pairs/part-*.parquet  the (query, item) pair table of the classifier stage (irene.train.batches)
    item_queries/         the item table of the generator stage (each seen item, its queries)
    text_pairs/           (query text, item text, hard-negative texts) for encoder fine-tuning
    encoder/              the fine-tuned encoder (when the finetune stage ran)
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
ITEM_QUERIES_DIR = "item_queries"
TEXT_PAIRS_DIR = "text_pairs"
ENCODER_DIR = "encoder"
RESULTS = "results.json"
NEIGHBOURS = "neighbours.parquet"
CLASSIFIERS_DIR = "classifiers"
GENERATOR_DIR = "generator"
PAIRS_PER_FILE = 50_000  # rows per Parquet part of the pair tables
ITEMS_PER_FILE = 5_000  # rows per Parquet part of the item table


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


def write_items(
    uri: str,
    emb: np.ndarray,
    seen: np.ndarray,
    ids: list[str] | None = None,
    texts: list[str] | None = None,
    metadata: list[dict] | None = None,
) -> None:
    """All L items: emb (L, d); seen (S,) global label indices of the seen items; the items'
    ids (default: their row numbers), texts and metadata (stored as JSON)."""
    L = len(emb)
    seen_pos = np.full(L, -1, dtype=np.int64)
    seen_pos[seen] = np.arange(len(seen))
    meta = metadata if metadata is not None else [{}] * L
    table = pa.table(
        {
            "label": np.arange(L, dtype=np.int64),
            "id": ids if ids is not None else [str(i) for i in range(L)],
            "text": texts if texts is not None else [""] * L,
            "metadata": [json.dumps(m, sort_keys=True) for m in meta],
            "seen_pos": seen_pos,
            "emb": matrix_column(emb.astype(np.float32)),
        }
    )
    write_table(uri, table)


def read_items(uri: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids (L,), seen_pos (L,) with -1 for novel items, emb (L, d))."""
    t = read_table(uri)
    return t["id"].to_pylist(), t["seen_pos"].to_numpy(), column_matrix(t["emb"])


def read_item_payloads(uri: str) -> tuple[list[str], list[dict]]:
    """(texts (L,), metadata (L,)) of the items table."""
    t = read_table(uri)
    return t["text"].to_pylist(), [json.loads(m) for m in t["metadata"].to_pylist()]


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
# tables (the pair table, text-pair tables)


def _is_matrix_cells(col: Any) -> bool:
    return (
        isinstance(col, np.ndarray)
        and col.dtype == object
        and len(col) > 0
        and isinstance(col[0], np.ndarray)
        and col[0].ndim == 2
    )


def table_from_columns(columns: dict[str, Any]) -> pa.Table:
    """Numpy columns -> Arrow: 2-D arrays become fixed-size lists, object arrays of (n_i, k)
    arrays lists of fixed-size lists, Python lists of lists list columns."""
    out = {}
    for name, col in columns.items():
        if isinstance(col, np.ndarray) and col.ndim == 2:
            out[name] = matrix_column(col)
        elif _is_matrix_cells(col):
            offsets = np.concatenate([[0], np.cumsum([len(c) for c in col])]).astype(np.int32)
            values = matrix_column(np.concatenate(list(col)))
            out[name] = pa.ListArray.from_arrays(pa.array(offsets), values)
        else:
            out[name] = pa.array(list(col) if not isinstance(col, np.ndarray) else col)
    return pa.table(out)


def columns_from_table(table: pa.Table) -> dict[str, np.ndarray]:
    """Arrow -> numpy columns (fixed-size lists as 2-D arrays, lists of fixed-size lists as
    object arrays of 2-D arrays, other lists as object arrays of lists)."""
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table[name].combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            out[name] = column_matrix(col, col.type.value_type.to_pandas_dtype())
        elif pa.types.is_list(col.type) and pa.types.is_fixed_size_list(col.type.value_type):
            flat = column_matrix(col.flatten(), col.type.value_type.value_type.to_pandas_dtype())
            offsets = col.offsets.to_numpy()
            cells = np.empty(len(col), dtype=object)
            cells[:] = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
            out[name] = cells
        elif pa.types.is_list(col.type):
            out[name] = np.array(col.to_pylist() + [None], dtype=object)[:-1]
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def write_table_parts(
    dir_uri: str, columns: dict[str, Any], rows_per_file: int, seed: int | None = 0
) -> int:
    """Write a table as Parquet parts under ``dir_uri`` (old parts removed first), rows shuffled
    once with ``seed`` (None keeps the order). Returns the number of files."""
    n = len(next(iter(columns.values())))
    perm = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    if io.exists(dir_uri):
        io.delete(dir_uri)
    io.makedirs(dir_uri)
    n_files = max(1, -(-n // rows_per_file))
    for f in range(n_files):
        idx = perm[f * rows_per_file : (f + 1) * rows_per_file]
        part = {
            k: v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]
            for k, v in columns.items()
        }
        write_table(io.join(dir_uri, f"part-{f:05d}.parquet"), table_from_columns(part))
    return n_files


def read_table_parts(dir_uri: str) -> dict[str, np.ndarray]:
    """Every part of a table written by :func:`write_table_parts`, as numpy columns."""
    parts = sorted(n for n in io.listdir(dir_uri) if n.endswith(".parquet"))
    if not parts:
        raise FileNotFoundError(f"no Parquet parts under {dir_uri}")
    return columns_from_table(pa.concat_tables([read_table(io.join(dir_uri, p)) for p in parts]))


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

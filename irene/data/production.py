"""What ``irene train`` trains on: a user's catalogue + interactions (or an XC directory),
shaped as the pipeline's dataset, and the production split (nothing held out).

The dataset's labels are the catalogue items in catalogue order (``Y`` = their texts), its
train queries the interaction queries, its test queries the held-out queries of the quality
report (``eval_interactions`` or a seeded ``eval_fraction`` of the queries; none by default).
An XC directory is read as is: its ids come from ``Y_ids.txt`` (one id per line of ``Y.txt``)
when present, else they are the row numbers of ``Y.txt`` ("0", "1", ...).

The production split trains every item with at least ``min_interactions`` training queries
(*trained* items); every other catalogue item gets a generated classifier at bundle time
(*generated* items, the split's ``novel``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from irene import io
from irene.config import CatalogueConfig
from irene.data import catalogue as cat
from irene.data.split import ZeroShotSplit, _mask_columns, split_by_mask
from irene.data.xc import XCDataset, read_text_lines, read_xc

log = logging.getLogger(__name__)

Y_IDS = "Y_ids.txt"
CATALOGUE, INTERACTIONS, EVAL_INTERACTIONS = "catalogue", "interactions", "eval_interactions"


@dataclass
class TrainingData:
    ds: XCDataset  # labels = catalogue items; train = interaction queries; test = held out
    ids: list[str]  # (L,) the user's item ids, aligned with ds.Y
    metadata: list[dict[str, Any]] = field(default_factory=list)  # (L,) per item
    trained_on: dict[str, Any] = field(default_factory=dict)  # inputs, fingerprints, counts


def is_catalogue_dir(data: str, cfg: CatalogueConfig) -> bool:
    return bool(cfg.items) or cat.find_table(data, CATALOGUE) is not None


def _table(data: str, given: str, stem: str, required: bool) -> str | None:
    uri = given or (cat.find_table(data, stem) if data else None)
    if uri is None and required:
        raise cat.DataError(
            f"{data or '(no data directory)'}: no {stem} table ({stem}.parquet, {stem}.csv or "
            f"{stem}.jsonl), and catalogue.{'items' if stem == CATALOGUE else stem} is not set"
        )
    return uri


def _as_dataset(
    name: str, c: cat.Catalogue, train: cat.Interactions, test: cat.Interactions | None
) -> XCDataset:
    L = len(c.ids)
    empty = sp.csr_matrix((0, L), dtype=np.float32)
    return XCDataset(
        trn_X=list(train.queries),
        tst_X=list(test.queries) if test is not None else [],
        Y=list(c.texts),
        trn_X_Y=train.Y,
        tst_X_Y=test.Y if test is not None else empty,
        name=name,
    )


def read_catalogue_data(data: str, cfg: CatalogueConfig) -> TrainingData:
    """Catalogue + interactions (+ held-out queries); raises ``catalogue.DataError``."""
    items_uri = _table(data, cfg.items, CATALOGUE, True)
    c = cat.read_catalogue(items_uri)
    inter_uri = _table(data, cfg.interactions, INTERACTIONS, True)
    queries = cfg.queries or None
    train = cat.read_interactions(inter_uri, c, queries, cfg.drop_unknown)
    eval_uri = _table(data, cfg.eval_interactions, EVAL_INTERACTIONS, False)
    test = None
    if eval_uri is not None:
        test = cat.read_interactions(eval_uri, c, queries, cfg.drop_unknown)
    elif cfg.eval_fraction > 0:
        train, test = cat.split_queries(train, cfg.eval_fraction, cfg.seed)
    name = io.basename(data) if data else io.basename(items_uri)
    trained_on = {
        "format": "catalogue",
        "catalogue": {"uri": c.uri, "fingerprint": c.fingerprint, "items": len(c.ids)},
        "interactions": {
            "uri": train.uri,
            "fingerprint": train.fingerprint,
            "rows": train.n_rows,
            "dropped_unknown": train.n_dropped,
            "queries": len(train.queries),
        },
    }
    if test is not None:
        trained_on["eval"] = {
            "uri": test.uri,
            "fingerprint": test.fingerprint,
            "queries": len(test.queries),
            "from": "eval_interactions" if eval_uri else f"eval_fraction={cfg.eval_fraction}",
        }
    return TrainingData(_as_dataset(name, c, train, test), c.ids, c.metadata, trained_on)


def read_xc_data(data: str) -> TrainingData:
    """An XC directory as training data: ids from ``Y_ids.txt`` or the row numbers."""
    ds = read_xc(data)
    uri = io.join(data, Y_IDS)
    if io.exists(uri):
        ids = read_text_lines(uri)
        if len(ids) != len(ds.Y):
            raise cat.DataError(f"{uri}: {len(ids)} ids for {len(ds.Y)} lines of Y.txt")
        seen: dict[str, int] = {}
        for i, s in enumerate(ids):
            if not s:
                raise cat.DataError(f"{uri}: row {i + 1}: empty id")
            if s in seen:
                raise cat.DataError(f"{uri}: rows {seen[s] + 1} and {i + 1}: duplicate id {s!r}")
            seen[s] = i
    else:
        ids = [str(i) for i in range(len(ds.Y))]
    trained_on = {
        "format": "xc",
        "data": data,
        "ids": Y_IDS if io.exists(uri) else "row numbers of Y.txt",
        "items": len(ds.Y),
        "train_queries": len(ds.trn_X),
        "eval_queries": len(ds.tst_X),
    }
    return TrainingData(ds, ids, [{} for _ in ids], trained_on)


def read_training_data(data: str, cfg: CatalogueConfig) -> TrainingData:
    """The catalogue tables when ``data`` (or ``cfg``) names them, else the XC directory."""
    if is_catalogue_dir(data, cfg):
        return read_catalogue_data(data, cfg)
    return read_xc_data(data)


def production_split(ds: XCDataset, min_interactions: int = 1) -> ZeroShotSplit:
    """Trained items: those with >= ``min_interactions`` training queries; every other item is
    ``novel`` (generated at bundle time). The zero-shot test rows are the held-out queries
    with a generated positive; the full test matrix is every held-out query."""
    L = ds.num_labels
    trn = _mask_columns(ds.trn_X_Y, np.ones(L, dtype=bool))
    counts = np.bincount(trn.indices, minlength=L)  # (L,) training queries per item
    trained = counts >= min_interactions
    split = split_by_mask(ds, trn, ~trained, 0, 0.0)
    log.info("production split of %s: %s", ds.name, split.stats())
    return split

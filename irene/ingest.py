"""Bulk ingest of novel items: (id, text, metadata) rows -> encode -> select + generate -> the
index, each item stored with its record (text, metadata, source "generated", bundle version).

The stages (:mod:`irene.ingest_stages`, with the readers and the report) are plain callables
over Ray-Data-style batches (``{"id": array, ...}``), so the same code runs in-process
(:func:`ingest_local` here, ``irene ingest``) and as Ray Data ``map_batches`` actors
(``irene.ray.ingest``, ``python -m pipelines.ingest``); :func:`run` picks one:

    Skip      drop ids already in the index (a rerun after a failure resumes; idempotent)
    Encode    texts -> (B, d) embeddings (the bundle's encoder)
    Generate  embeddings -> (B, d) classifiers (selector kNN + the IRENE generator)
    Write     one durable upsert per batch through the index's router (each shard actor logs
              its part before it acknowledges; read replicas have it on return)

Every stage adds a ``t_<stage>`` column (its seconds spread over the batch's rows) so the
driver can report the share of time per stage. Input formats: Parquet or JSONL with ``id``
and ``text`` columns, or TSV lines ``id<TAB>text``; a file or a directory of files, local or
``s3://``. In Parquet and JSONL a ``metadata`` column (an object: struct, map or JSON string)
and every other column become the item's metadata (nulls skipped), checked by the same
validator as ``POST /v1/items`` (:func:`irene.metadata.check_metadata`); it travels through the
stages as canonical JSON in a ``meta`` column.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from irene.config import Config, IndexConfig
from irene.ingest_stages import (  # noqa: F401  (the shared pieces, re-exported)
    FORMATS,
    NO_META,
    RESERVED,
    STAGES,
    Encode,
    Generate,
    IngestError,
    IngestReport,
    Skip,
    Write,
    byte_ranges,
    check_ingest_config,
    check_rows,
    count_items,
    item_files,
    iter_items,
    parse_jsonl,
    parse_rows,
    parse_tsv,
    progress,
    read_lines,
    row_metadata,
    write_tsv,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- in-process
def open_local_index(index: IndexConfig, dim: int):
    """The index's shard owners opened in this process (no Ray): each takes its shard's
    lock, so this fails while the shard actors of a running app hold them."""
    from irene.index.actor import IndexActor, actor_settings
    from irene.index.router import RoutedIndex

    return RoutedIndex([IndexActor(s) for s in actor_settings(index, dim)])


def ingest_local(
    cfg: Config, show_progress: bool = True, index=None, stages: tuple | None = None
) -> IngestReport:
    """Run the stages in this process over ``cfg.ingest.items`` into ``cfg.ingest.index``
    (opened here), or into ``index`` (e.g. a running app's shard actors: ``RoutedIndex``;
    left open). ``stages``: ``(Encode, Generate)`` of ``cfg.bundle`` already loaded (a
    caller that ingests several times, e.g. ``irene upgrade``'s sync rounds)."""
    from irene.bundle import bundle_version, read_manifest

    ing = cfg.ingest
    check_ingest_config(cfg)
    manifest = read_manifest(cfg.bundle)
    dim = int(manifest["dim"])
    owned = index is None
    index = open_local_index(ing.index, dim) if owned else index
    skip, write = Skip(index), Write(index, bundle_version(manifest))
    encode, generate = stages or (Encode(cfg.bundle), Generate(cfg.bundle))
    report = IngestReport(executor="local")
    t0 = time.perf_counter()
    try:
        with progress(count_items(ing.items), show_progress) as bar:
            for ids, texts, metas in iter_items(ing.items, ing.batch_size):
                batch = {
                    "id": np.asarray(ids, dtype=object),
                    "text": np.asarray(texts, object),
                    "meta": np.asarray(metas, object),
                }
                read = len(ids)
                if ing.skip_existing:
                    batch = skip(batch)
                report.skipped += read - len(batch["id"])
                if len(batch["id"]):
                    batch = write(generate(encode(batch)))
                report.observe(batch, read)
                report.observe_first(time.perf_counter() - t0, len(batch["id"]))
                bar.update(read)
        report.seconds = time.perf_counter() - t0
        report.index_count = int(index.count())
    finally:
        if owned:
            index.close()
    return report


def run(cfg: Config, show_progress: bool = True) -> IngestReport:
    """Ingest with ``cfg.executor`` (local: in-process; ray: Ray Data + the shard actors)."""
    if cfg.executor == "ray":
        from irene.ray.ingest import ingest_ray

        return ingest_ray(cfg, show_progress)
    return ingest_local(cfg, show_progress)


def driver_main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.ingest --config CONFIG.yaml``; returns the exit code."""
    import argparse
    import sys

    from irene.config import ConfigError, load_config

    p = argparse.ArgumentParser(prog="pipelines.ingest", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="Config YAML (local or s3://)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    p.add_argument("--bundle", help="bundle location (overrides the config)")
    p.add_argument("--executor", choices=("local", "ray"), default="ray")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = load_config(args.config, args.overrides, bundle=args.bundle, executor=args.executor)
        report = run(cfg, show_progress=not args.no_progress)
    except (ConfigError, IngestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("ingest finished: %s", json.dumps(report.to_dict()))
    print(json.dumps(report.to_dict()))
    return 0

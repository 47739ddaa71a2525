"""Bulk ingest on Ray Data: the stages of ``irene.ingest_stages`` as ``map_batches`` actor pools
(``irene.ingest.run`` dispatches here; this module never imports ``irene.ingest``).

    read (Parquet / JSONL / TSV, local or s3://)
      -> Skip + Encode (encoder actors, GPU if any: ids already in the index dropped first)
                                               ``ingest.encode_actors`` (0 = per GPU / CPU)
      -> Generate (selector + generator)      ``ingest.generate_actors``
      -> Write (the index's shard actors)     ``ingest.write_actors``

Writes go to the index's named shard actors (``irene.ray.index``; created with
``ingest.index`` settings when absent, else the running app's), so every batch is durable in
each shard's log before it is acknowledged and is in every read replica of a running Serve
app on return: bulk-loaded items are queryable without a restart. Each item is written with
its record (text, metadata, source "generated", the bundle's version), as ``irene.ingest``
describes.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from irene import io
from irene.config import Config, IndexConfig, to_dict
from irene.ingest_stages import (
    NO_META,
    Encode,
    Generate,
    IngestReport,
    Skip,
    Write,
    byte_ranges,
    check_ingest_config,
    count_items,
    item_files,
    parse_jsonl,
    parse_rows,
    parse_tsv,
    progress,
    read_lines,
)

log = logging.getLogger(__name__)

LIGHT_CPUS = 0.1  # read / parse / skip / generate / write: little compute next to the encoder
READ_TASKS = 3  # read tasks at once: their CPUs are budgeted, so they never starve an actor


def shard_actors(index: IndexConfig | dict, dim: int, env: dict[str, str] | None = None):
    """The index's shard actors (created with these settings when absent; running with
    other settings: ``SettingsMismatch``), as a synchronous routed index."""
    from irene.config import from_dict
    from irene.ray.index import actors_for

    ix = index if isinstance(index, IndexConfig) else from_dict(IndexConfig, index)
    shards = actors_for(ix, dim, env, max_task_retries=-1)
    shards.verify_sync(timeout=300)
    return shards.sync()


class _SkipEncode(Encode):
    """Skip + Encode in one actor: a separate skip pool would merge the read blocks into one
    and leave all but one encoder idle (measured)."""

    def __init__(self, bundle: str, device: str, skip: bool, index: dict, dim: int, env: dict):
        super().__init__(bundle, device)
        self.skip = Skip(shard_actors(index, dim, env)) if skip else None

    def __call__(self, batch: dict) -> dict:
        return super().__call__(self.skip(batch) if self.skip else batch)


class _Write(Write):
    def __init__(self, index: dict, dim: int, env: dict, version: str) -> None:
        super().__init__(shard_actors(index, dim, env), version)


def _columns(ids: list, texts: list, metas: list) -> dict:
    return {
        "id": np.asarray(ids, dtype=object),
        "text": np.asarray(texts, dtype=object),
        "meta": np.asarray(metas, dtype=object),  # canonical JSON per row
    }


def _read_ranges(fmt: str):
    """Ray Data UDF: byte ranges of the items files -> {"id", "text", "meta"} rows."""

    def read(batch: dict) -> dict:
        ids, texts, metas = [], [], []
        for path, start, end in zip(batch["path"], batch["start"], batch["end"], strict=True):
            lines = [ln for ln in read_lines(str(path), int(start), int(end)) if ln.strip()]
            where = f"{path}@{start}"
            if fmt == "tsv":
                i, t = parse_tsv(lines, where)
                m = [NO_META] * len(i)
            else:
                i, t, m = parse_jsonl(lines, where)
            ids += i
            texts += t
            metas += m
        return _columns(ids, texts, metas)

    return read


def _parquet_rows(table) -> dict:
    """Ray Data UDF (pyarrow batches): Parquet rows -> {"id", "text", "meta"} (the metadata
    column and every other column become metadata, as in-process)."""
    return _columns(*parse_rows(table.to_pylist(), "parquet items"))


def read_items(uri: str, parts: int = 64):
    """The items as a Ray Dataset of {"id", "text", "meta"} rows, streamed in ~``parts``
    blocks (byte ranges of TSV/JSONL files, row groups of Parquet) so the encoder actors work
    in parallel and a big file is never loaded whole."""
    import ray.data

    fmt, files = item_files(uri)
    if fmt == "parquet":
        fs, _ = io.resolve(files[0])
        return ray.data.read_parquet(
            [io.resolve(f)[1] for f in files],
            filesystem=fs,
            num_cpus=LIGHT_CPUS,
            override_num_blocks=parts,
            concurrency=READ_TASKS,
        ).map_batches(
            _parquet_rows, batch_format="pyarrow", num_cpus=LIGHT_CPUS, concurrency=READ_TASKS
        )
    ranges = byte_ranges(files, parts)
    return ray.data.from_items(ranges, override_num_blocks=len(ranges)).map_batches(
        _read_ranges(fmt),
        batch_size=1,
        batch_format="numpy",
        num_cpus=LIGHT_CPUS,
        concurrency=READ_TASKS,
    )


def _encoder_pool(ing, use_gpu: bool) -> tuple[int, float]:
    """(encoder actors, CPUs each): one per GPU, else the CPUs that are free now (other
    actors, e.g. a running Serve app or the shard actors, keep theirs) left by the light
    stages. Every stage's CPUs fit at once: a read task holding the CPU an actor waits for
    would stall the pipeline for good (measured: a 2-core job hung with its writer pending)."""
    import ray

    cpus = float(ray.available_resources().get("CPU", ray.cluster_resources().get("CPU", 1)))
    light = LIGHT_CPUS * (READ_TASKS + ing.generate_actors + ing.write_actors)
    if use_gpu:
        return ing.encode_actors or int(ray.cluster_resources().get("GPU", 1)), 1.0
    actors = ing.encode_actors or max(1, round(cpus))  # 1.6 CPUs free: 2 one-thread actors
    return actors, max(0.1, min(1.0, (cpus - light) / actors))


def ingest_ray(cfg: Config, show_progress: bool = True) -> IngestReport:
    """Bulk ingest ``cfg.ingest.items`` into ``cfg.ingest.index`` on the job's Ray cluster."""
    import ray.data

    from irene.bundle import bundle_version, read_manifest
    from irene.ray import ensure_ray, resolve_use_gpu

    check_ingest_config(cfg)
    ensure_ray(cfg.ray.address or None)
    ing = cfg.ingest
    manifest = read_manifest(cfg.bundle)
    dim = int(manifest["dim"])
    env = io.s3_env()
    index = shard_actors(ing.index, dim, env)  # create them here, once, before the workers
    index.count()  # placed and holding their CPUs before the pools are sized
    use_gpu = resolve_use_gpu(cfg.ray.use_gpu)
    n_enc, enc_cpus = _encoder_pool(ing, use_gpu)
    remote = {"runtime_env": {"env_vars": env}} if env else {}
    idx = (to_dict(ing.index), dim, env)
    total = count_items(ing.items)
    log.info("ingesting %d items with %d encoder actor(s) (%.2f CPU each)", total, n_enc, enc_cpus)

    def pool(size: int) -> ray.data.ActorPoolStrategy:
        return ray.data.ActorPoolStrategy(size=size)

    ds = read_items(ing.items, max(4 * n_enc, -(-total // ing.batch_size)))
    ds = ds.map_batches(
        _SkipEncode,
        fn_constructor_args=(cfg.bundle, "cuda" if use_gpu else "cpu", ing.skip_existing, *idx),
        batch_size=ing.batch_size,
        batch_format="numpy",
        compute=pool(n_enc),
        num_cpus=enc_cpus,
        num_gpus=1 if use_gpu else 0,
        **remote,
    )
    ds = ds.map_batches(
        Generate,
        fn_constructor_args=(cfg.bundle,),
        batch_size=ing.batch_size,
        batch_format="numpy",
        compute=pool(ing.generate_actors),
        num_cpus=LIGHT_CPUS,
        **remote,
    )
    ds = ds.map_batches(
        _Write,
        fn_constructor_args=(*idx, bundle_version(manifest)),
        batch_size=ing.batch_size,
        batch_format="numpy",
        compute=pool(ing.write_actors),
        num_cpus=LIGHT_CPUS,
        **remote,
    )
    report = IngestReport(executor="ray")
    t0 = time.perf_counter()
    with progress(total, show_progress) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            report.observe(batch, len(batch["id"]))
            report.observe_first(time.perf_counter() - t0, len(batch["id"]))
            bar.update(len(batch["id"]))
        bar.update(max(0, total - bar.n))  # the skipped rows
    report.seconds = time.perf_counter() - t0
    report.skipped = total - report.written
    report.items = total
    report.index_count = int(index.count())
    return report

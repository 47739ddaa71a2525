"""``irene upgrade`` / ``rollback`` / ``export`` against a running app's shard actors: the
procedure of ``irene.upgrade`` wired to Ray (named shard actors, the bulk ingest stages
in-process or on Ray Data). ``python -m pipelines.upgrade`` is the ``ray job submit`` entry."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace

import yaml

from irene import io as iio
from irene.bundle import bundle_version, read_manifest
from irene.config import Config, ConfigError, IndexConfig, IngestConfig, from_dict
from irene.index.filters import as_filter
from irene.index.generations import current
from irene.index.router import RoutedIndex
from irene.ray.index import index_actors
from irene.upgrade import Generations, catalogue

log = logging.getLogger(__name__)

APP_IMPORT_PATH = "serve_app.app:build_app"


def app_index(config_path: str, app: str | None = None) -> tuple[IndexConfig, str]:
    """``(args.index, args.bundle)`` of the irene application in a Serve config file."""
    with open(config_path) as f:
        cfg = yaml.safe_load(f)
    apps = [
        a
        for a in (cfg or {}).get("applications", [])
        if a.get("import_path") == APP_IMPORT_PATH and (app is None or a.get("name") == app)
    ]
    if len(apps) != 1:
        raise ConfigError(f"{config_path}: expected one irene application, found {len(apps)}")
    args = apps[0].get("args") or {}
    index = dict(args.get("index") or {})
    if "index_uri" in args:
        index.setdefault("uri", args["index_uri"])
    index.setdefault("uri", "runs/index")
    bundle = os.environ.get("IRENE_BUNDLE") or args.get("bundle", "runs/bundle")
    return from_dict(IndexConfig, index, "index"), bundle


def _env() -> dict[str, str]:
    return iio.s3_env()


def ray_generations(index: IndexConfig, dim: int, run: Config) -> Generations:
    """The generations of ``index`` as named shard actors; regeneration with ``run``'s
    executor (local: this process; ray: Ray Data), ``run.ingest`` batch settings."""
    import ray

    opened: dict[str, RoutedIndex] = {}

    def open_(cfg: IndexConfig) -> RoutedIndex:
        if cfg.uri not in opened:
            opened[cfg.uri] = RoutedIndex(index_actors(cfg, dim, _env()), ray.get)
        return opened[cfg.uri]

    def seed(idx: RoutedIndex, bundle: str) -> int:
        n = len(idx.owners)
        chunk = index.seed_chunk
        return sum(
            ray.get(
                [h.seed_from_bundle.remote(bundle, chunk, i, n) for i, h in enumerate(idx.owners)]
            )
        )

    loaded: dict[str, tuple] = {}  # bundle -> its (Encode, Generate), kept across rounds

    def regenerate(path: str, cfg: IndexConfig, idx: RoutedIndex, bundle: str):
        from irene.ingest import Encode, Generate, ingest_local
        from irene.ingest import run as ingest_run

        job = replace(
            run,
            bundle=bundle,
            ingest=replace(run.ingest, items=path, index=cfg, skip_existing=False),
        )
        if run.executor == "ray":
            return ingest_run(job, show_progress=False)
        if bundle not in loaded:
            loaded[bundle] = (Encode(bundle), Generate(bundle))
        return ingest_local(job, show_progress=False, index=idx, stages=loaded[bundle])

    return Generations(index, open_, seed, regenerate)


def upgrade_app(
    config_path: str,
    bundle: str,
    executor: str = "local",
    address: str | None = None,
    max_rounds: int = 5,
    settle: int = 100,
) -> dict:
    """Upgrade the index of the app in ``config_path`` to ``bundle`` (``irene.upgrade``)."""
    from irene.ray import ensure_ray
    from irene.upgrade import upgrade

    index, serving = app_index(config_path)
    ensure_ray(address)
    dim = int(read_manifest(bundle)["dim"])
    _, _, gen = current(index)
    serving = gen.bundle if gen is not None else serving
    run = Config(executor=executor, ingest=IngestConfig())
    return upgrade(
        ray_generations(index, dim, run),
        bundle,
        bundle_version(read_manifest(bundle)),
        serving,
        bundle_version(read_manifest(serving)),
        max_rounds=max_rounds,
        settle=settle,
    )


def rollback_app(
    config_path: str, executor: str = "local", address: str | None = None, max_rounds: int = 5
) -> dict:
    from irene.ray import ensure_ray
    from irene.upgrade import rollback

    index, bundle = app_index(config_path)
    ensure_ray(address)
    _, _, gen = current(index)
    dim = int(read_manifest(gen.bundle if gen is not None else bundle)["dim"])
    run = Config(executor=executor, ingest=IngestConfig())
    return rollback(ray_generations(index, dim, run), max_rounds=max_rounds)


def export_app(
    config_path: str, out: str, filter: dict | None = None, address: str | None = None
) -> int:
    """Write the serving generation's items (id, text, metadata, source, version) as JSONL
    to ``out`` (local or s3://); returns how many."""
    from irene.ray import ensure_ray

    index, bundle = app_index(config_path)
    ensure_ray(address)
    name, cfg, gen = current(index)
    dim = int(read_manifest(gen.bundle if gen is not None else bundle)["dim"])
    import ray

    items = catalogue(RoutedIndex(index_actors(cfg, dim, _env()), ray.get), as_filter(filter))
    lines = [json.dumps({"id": i, **r}, ensure_ascii=False) for i, r in sorted(items.items())]
    iio.write_text(out, "\n".join(lines) + ("\n" if lines else ""))
    log.info("exported %d items of generation %r to %s", len(lines), name, out)
    return len(lines)

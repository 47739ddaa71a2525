"""Application builder for ``serve run`` / ``serve deploy``.

``serve run serve_app/configs/local.yaml`` calls ``build_app(args)`` with the YAML's
``applications[0].args``; ``IRENE_BUNDLE`` (local path or ``s3://``) overrides ``args.bundle``.
Programmatic use::

    from ray import serve
    from serve_app.app import build_app
    serve.run(build_app({"bundle": "runs/bundle", "index": {"uri": "runs/index"}}))
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from serve_app.schemas import AppArgs

BUNDLE_ENV = "IRENE_BUNDLE"


def _absolute(uri: str) -> str:
    """Local paths become absolute here (replicas may run in another working directory)."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def resolve_args(
    args: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> AppArgs:
    """Validate ``args`` (unknown keys are errors) and apply the ``IRENE_BUNDLE`` override."""
    env = os.environ if environ is None else environ
    raw = dict(args or {})
    if env.get(BUNDLE_ENV):
        raw["bundle"] = env[BUNDLE_ENV]
    parsed = AppArgs(**raw)
    index = dataclasses.replace(parsed.index, uri=_absolute(parsed.index.uri))
    return parsed.model_copy(update={"bundle": _absolute(parsed.bundle), "index": index})


def build_app(args: dict[str, Any] | None = None):
    """The Serve ``Application``: Ingress(Encoder, Generator) + the shared index actors
    (Ingress(None, Generator) when the encoder runs in the Ingress), plus one
    ``ShardReader-<i>`` deployment per shard actor with ``index.shard_readers``."""
    from serve_app.deployments import Encoder, Generator, Ingress, ShardReader

    cfg = resolve_args(args)
    opts = cfg.deployment_options
    readers = None  # index.shard_readers: ShardReader-<i> holds copies of shard actor i
    if cfg.index.shard_readers:
        readers = [
            ShardReader.options(name=f"ShardReader-{i}", **opts.get("ShardReader", {})).bind(
                cfg.model_dump(), i
            )
            for i in range(cfg.index.n_owners)
        ]
    encoder = None  # encoder_placement "ingress": each Ingress replica runs the encoder
    if cfg.encoder_placement == "deployment":
        encoder = Encoder.options(**opts.get("Encoder", {})).bind(cfg.model_dump())
    generator = Generator.options(**opts.get("Generator", {})).bind(
        cfg.bundle, cfg.generator_batch.model_dump(), cfg.threads
    )
    return Ingress.options(**opts.get("Ingress", {})).bind(
        encoder, generator, cfg.model_dump(), readers
    )

"""Configuration of the distributed pipeline (``pipelines/`` drivers and ``irene train``).

One frozen dataclass shared by every stage; it nests the library's :class:`TrainConfig` so the
Ray path and the in-process benchmark train with the very same hyper-parameters. Unknown keys
are errors, as everywhere in irene.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from irene import io
from irene.config import ConfigError, TrainConfig, config_hash, from_dict

USE_GPU_VALUES = ("auto", "true", "false")


@dataclass(frozen=True)
class PipelineConfig:
    data: str = ""  # XC dataset directory, local or s3://
    work_dir: str = ""  # prepared artifacts and stage outputs, local or s3://
    bundle: str = ""  # bundle output, local or s3://
    train: TrainConfig = field(default_factory=TrainConfig)
    num_workers: int = 2  # Ray Train workers (DDP ranks)
    use_gpu: str = "auto"  # auto | true | false
    # On a 2-core machine a TorchTrainer fed by Ray Data hangs unless workers take a fraction.
    resources_per_worker: dict = field(default_factory=lambda: {"CPU": 0.5})
    storage_path: str = ""  # RunConfig storage, local or s3://; "" = <work_dir>/ray_results
    run_name: str = ""  # "" = irene-<stage>-<hash of data, work_dir and train config>
    max_failures: int = 1  # worker failures recovered from the latest checkpoint
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always saves)
    keep_checkpoints: int = 0  # checkpoints kept in storage; 0 = all
    encode_actors: int = 0  # encoder actor pool size in `prepare`; 0 = one per GPU, else per CPU
    encode_batch_size: int = 256
    pairs_per_file: int = 50_000  # rows per Parquet file of the pair table
    shuffle_buffer: int = 4096  # Ray Data local shuffle buffer (rows) per worker; 0 = off
    evaluate: bool = True  # zero-shot evaluation in build_bundle (metrics in the manifest)

    def storage(self) -> str:
        return self.storage_path or io.join(self.work_dir, "ray_results")

    def name_for(self, stage: str, lineage: str = "") -> str:
        """Ray Train run name of a stage. Same name + storage = resume (a resubmitted job);
        ``lineage`` identifies the stage's inputs (e.g. the prepare id) so new inputs start
        a new run instead of resuming a finished one."""
        if self.run_name:
            return f"{self.run_name}-{stage}"
        key = json.dumps([self.data, self.work_dir, config_hash(self.train), lineage])
        return f"irene-{stage}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    """YAML-friendly spellings: ``use_gpu: true`` means "true"."""
    data = dict(data)
    if isinstance(data.get("use_gpu"), bool):
        data["use_gpu"] = "true" if data["use_gpu"] else "false"
    return data


def validate(cfg: PipelineConfig) -> PipelineConfig:
    """Check values (not locations); raises :class:`ConfigError`."""
    if cfg.use_gpu not in USE_GPU_VALUES:
        raise ConfigError(f"'use_gpu' must be one of {USE_GPU_VALUES}, got {cfg.use_gpu!r}")
    for name in ("num_workers", "checkpoint_every", "encode_batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"'{name}' must be >= 1, got {getattr(cfg, name)}")
    for name in ("max_failures", "keep_checkpoints", "shuffle_buffer", "encode_actors"):
        if getattr(cfg, name) < 0 and not (name == "max_failures" and cfg.max_failures == -1):
            raise ConfigError(f"'{name}' must be >= 0, got {getattr(cfg, name)}")
    if cfg.pairs_per_file < 1:
        raise ConfigError(f"'pairs_per_file' must be >= 1, got {cfg.pairs_per_file}")
    for key, value in cfg.resources_per_worker.items():
        if (
            not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, int | float)
        ):
            raise ConfigError(
                f"'resources_per_worker' must map names to numbers, got {key}: {value!r}"
            )
        if value < 0:
            raise ConfigError(f"'resources_per_worker.{key}' must be >= 0, got {value}")
    return cfg


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a nested dict."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override must look like key=value, got {item!r}")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[leaf] = yaml.safe_load(raw)
    return data


def load_pipeline_config(
    path: str | None = None, overrides: list[str] | None = None, **values: Any
) -> PipelineConfig:
    """Read a YAML file (local or s3://), apply overrides and non-None ``values``, validate."""
    data: dict[str, Any] = {}
    if path:
        if not io.exists(path):
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(io.read_text(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a YAML mapping")
    data = apply_overrides(data, list(overrides or []))
    data.update({k: v for k, v in values.items() if v is not None})
    return validate(absolute_paths(from_dict(PipelineConfig, _normalise(data))))


PATH_FIELDS = ("data", "work_dir", "bundle", "storage_path")


def absolute_paths(cfg: PipelineConfig) -> PipelineConfig:
    """Local paths made absolute against the driver's working directory: Ray Train workers
    and Ray Data actors run in other directories (s3:// URIs are left alone)."""
    changes = {
        f: os.path.abspath(os.path.expanduser(getattr(cfg, f)))
        for f in PATH_FIELDS
        if getattr(cfg, f) and not io.is_s3(getattr(cfg, f))
    }
    return dataclasses.replace(cfg, **changes)


def replace(cfg: PipelineConfig, **changes: Any) -> PipelineConfig:
    return validate(dataclasses.replace(cfg, **changes))

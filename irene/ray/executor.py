"""RayExecutor: the executor seams of :mod:`irene.executor` (encode, fit, score) on a Ray
cluster. It implements the ``irene.executor.Executor`` protocol without importing that module
(``irene.executor.make_executor`` imports this one)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from irene import io
from irene.config import Config, EncoderConfig
from irene.train.result import FitResult

log = logging.getLogger(__name__)


class RayExecutor:
    """Ray Data encoder actors, Ray Train DDP workers over the streamed table, Ray Data oracle
    actors. Connects to ``cfg.ray.address`` (or the job's cluster, or a local Ray) on first use."""

    name = "ray"

    def __init__(self, cfg: Config, oracle_factory=None) -> None:
        self.cfg = cfg
        self._oracle_factory = oracle_factory

    def _ray(self) -> None:
        from irene.ray import ensure_ray

        ensure_ray(self.cfg.ray.address or None)

    def encode(self, texts: list[str], encoder: EncoderConfig) -> np.ndarray:
        from irene.ray import resolve_use_gpu
        from irene.ray.encode import encode_texts

        self._ray()
        r = self.cfg.ray
        return encode_texts(
            texts, encoder, r.encode_actors, r.encode_batch_size, resolve_use_gpu(r.use_gpu)
        )

    def fit(self, stage: str, config: dict[str, Any], table: str, run_name: str) -> FitResult:
        from irene.ray.train import TrainerSettings, read_table, run_trainer

        self._ray()
        r = self.cfg.ray
        loop_config = {
            **config,
            "stage": stage,
            "shuffle_buffer": r.shuffle_buffer,
            "env": self._worker_env(),
        }
        settings = TrainerSettings(
            num_workers=r.num_workers,
            use_gpu=r.use_gpu,
            resources_per_worker=dict(r.resources_per_worker),
            storage=self.cfg.storage(),
            run_name=run_name,
            max_failures=r.max_failures,
            keep_checkpoints=r.keep_checkpoints,
        )
        state, kept, seconds = run_trainer(loop_config, read_table(table), settings)
        return FitResult(
            run_name, state, list(state["history"]), seconds, [m.get("epoch") for m in kept]
        )

    def score(self, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, dict]:
        from irene.ray.oracle import score_pairs

        self._ray()
        r = self.cfg.ray
        return score_pairs(
            pairs,
            self.cfg.oracle,
            self._oracle_factory,
            r.oracle_actors,
            self.cfg.oracle.batch_size,
            r.oracle_cpus,
        )

    def _worker_env(self) -> dict[str, str]:
        """S3 settings for the workers when artifacts live on S3 (they may not share the
        driver's environment)."""
        if not (io.is_s3(self.cfg.work_dir) or io.is_s3(self.cfg.storage())):
            return {}
        return io.s3_env()

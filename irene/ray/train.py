"""The stages' train_funcs on Ray Train DDP workers, fed by Ray Data.

:func:`train_worker` is the TorchTrainer's ``train_loop_per_worker``: it builds a
:class:`RayContext` and calls the very ``train_func`` the local executor calls
(``irene.train.stages.TRAIN_FUNCS``). The context maps the train_func's needs onto Ray Train:
batches from this worker's Ray Data shard, DDP via ``prepare_model``, ``all_gather`` over the
ranks, ``train.report`` with a checkpoint from rank 0, restore from ``train.get_checkpoint``.
:func:`run_trainer` is the driver side.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import faiss  # noqa: F401,I001  (before torch)
import numpy as np
import torch

from irene import io
from irene.train.loop import EpochStats

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"


# ----------------------------------------------------------------------------------------------
# worker side


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class RayContext:
    """:class:`irene.train.loop.TrainContext` on a Ray Train worker."""

    def __init__(self, config: dict[str, Any]) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.seed = int(config.get("seed", 0))
        self.shuffle = int(config.get("shuffle_buffer", 0)) or None
        self._shard = ray.train.get_dataset_shard("train")
        self._epoch = -1

    # -- data
    def batches(self, epoch: int, batch_size: int):
        """This rank's ``batch_size // world`` rows per step; every rank stops as soon as one
        rank has no full batch left (equal step counts for the collectives)."""
        self._epoch = epoch
        local = max(1, batch_size // self.world_size)
        buffer: dict[str, list[np.ndarray]] = {}
        held = 0
        it = self._shard.iter_batches(
            batch_size=local,
            batch_format="numpy",
            local_shuffle_buffer_size=self.shuffle,
            local_shuffle_seed=None if self.shuffle is None else self.seed * 100_003 + epoch + 1,
        )
        for b in it:
            for k, v in b.items():
                buffer.setdefault(k, []).append(v)
            held += len(next(iter(b.values())))
            while held >= local:
                cat = {k: np.concatenate(v) for k, v in buffer.items()}
                out = {k: v[:local] for k, v in cat.items()}
                buffer = {k: [v[local:]] for k, v in cat.items()}
                held -= local
                if not self._all_have_batch(True):
                    return
                yield out
        if self.world_size == 1 and held > 0:
            yield {k: np.concatenate(v) for k, v in buffer.items()}
            return
        self._all_have_batch(False)

    def _all_have_batch(self, mine: bool) -> bool:
        if not _distributed():
            return mine
        import torch.distributed as dist

        flag = torch.tensor([1 if mine else 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    # -- model and collectives
    def prepare(self, model: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"broadcast_buffers": False, **ddp_kwargs}
        )

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """1-D ``t`` of every rank (lengths may differ), concatenated in rank order; padding
        uses -1, so this is for id tensors (the objectives drop negative ids)."""
        if not _distributed():
            return t
        import torch.distributed as dist

        n = torch.tensor([t.numel()], dtype=torch.int64, device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        m = int(max(s.item() for s in sizes))
        padded = torch.full((m,), -1, dtype=t.dtype, device=t.device)
        padded[: t.numel()] = t.reshape(-1)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])

    def reduce(self, stats: EpochStats) -> dict[str, float]:
        return reduce_stats(stats, self.device)

    # -- checkpoints
    def restore(self) -> dict[str, Any] | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return None if checkpoint is None else load_checkpoint_state(checkpoint, self.device)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        import ray.train

        if state is not None:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(state, os.path.join(tmp, CHECKPOINT_FILE))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if self.rank == 0:
            log.info(
                "epoch %d loss %.4f (%d workers)",
                metrics["epoch"],
                metrics["loss"],
                self.world_size,
            )


def reduce_stats(stats: EpochStats, device: torch.device | str = "cpu") -> dict[str, float]:
    """Epoch metrics over all workers: pair-weighted loss, total pairs, slowest worker's time."""
    loss, pairs, seconds = stats.loss, float(stats.pairs), stats.seconds
    if _distributed():
        import torch.distributed as dist

        sums = torch.tensor([loss * pairs, pairs], dtype=torch.float64, device=device)
        slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        pairs, seconds = float(sums[1]), float(slowest[0])
        loss = float(sums[0]) / max(pairs, 1.0)
    return {
        "epoch": stats.epoch,
        "loss": loss,
        "pairs": int(pairs),
        "seconds": seconds,
        "pairs_per_s": pairs / max(seconds, 1e-9),
    }


def train_worker(config: dict[str, Any]) -> None:
    """TorchTrainer ``train_loop_per_worker``: the stage's train_func in a RayContext."""
    from irene.train.stages import TRAIN_FUNCS

    os.environ.update(config.get("env") or {})
    logger = logging.getLogger("irene")
    logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    TRAIN_FUNCS[config["stage"]](config, RayContext(config))


def load_checkpoint_state(checkpoint, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CHECKPOINT_FILE), map_location=map_location)


# ----------------------------------------------------------------------------------------------
# driver side


@dataclass(frozen=True)
class TrainerSettings:
    """Where and how a TorchTrainer runs (the scaling/run config shared by every stage)."""

    num_workers: int
    use_gpu: str  # auto | true | false
    resources_per_worker: dict
    storage: str  # RunConfig storage, local dir or s3://
    run_name: str
    max_failures: int = 1
    keep_checkpoints: int = 0  # 0 = all


def storage_args(uri: str) -> dict[str, Any]:
    """RunConfig storage kwargs: S3 as ``bucket/path`` plus a pyarrow S3FileSystem."""
    if io.is_s3(uri):
        fs, path = io.resolve(uri)
        return {"storage_path": path, "storage_filesystem": fs}
    return {"storage_path": io.resolve(uri)[1]}


def read_table(uri: str):
    """A Parquet table directory as a lazily read (streamed) Ray Dataset."""
    import ray.data

    fs, path = io.resolve(uri)
    return ray.data.read_parquet(path, filesystem=fs)


def run_trainer(loop_config: dict[str, Any], dataset, s: TrainerSettings):
    """Run :func:`train_worker` on ``s.num_workers`` DDP workers fed by ``dataset``; returns
    ``(final state, kept checkpoints' metrics, seconds)``. A run with the name of an
    interrupted one (same storage) resumes from its latest checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from irene.ray import resolve_use_gpu

    use_gpu = resolve_use_gpu(s.use_gpu)
    resources = dict(s.resources_per_worker)
    if use_gpu:
        resources.setdefault("GPU", 1)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=s.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=s.run_name,
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=s.keep_checkpoints or None),
            **storage_args(s.storage),
        ),
        datasets={"train": dataset},
    )
    log.info(
        "training %s: %d workers (gpu=%s, %s each), storage %s, run %s",
        loop_config.get("stage"),
        s.num_workers,
        use_gpu,
        resources,
        s.storage,
        s.run_name,
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"training stage {loop_config.get('stage')} ended without a checkpoint")
    kept = [dict(m) for _, m in (result.best_checkpoints or [])]
    return load_checkpoint_state(result.checkpoint), kept, seconds

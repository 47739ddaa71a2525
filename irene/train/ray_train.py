"""Ray Train glue: the per-worker training functions and the driver that runs them.

Each worker builds its objective with the factories of :mod:`irene.train.stages` (the frozen
tensors come from the prepared artifacts in ``work_dir``, local or s3://), wraps it for DDP with
``ray.train.torch.prepare_model`` and calls the one loop, :func:`irene.train.loop.fit`, over its
shard of the Ray Data pair table. ``on_epoch_end`` reduces the epoch's loss and pairs/s over the
workers and calls ``ray.train.report`` (rank 0 attaches a checkpoint every ``checkpoint_every``
epochs and after the last). A worker that starts with ``ray.train.get_checkpoint()`` restores
model + optimizer state and continues at the next epoch.

Importing this module does not import (or start) Ray.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss  # noqa: F401,I001  (before torch)
import torch

from irene import io
from irene.config import TrainConfig, from_dict, to_dict
from irene.model.classifiers import OVAClassifiers
from irene.pipeline_config import PipelineConfig
from irene.train import artifacts
from irene.train.loop import EpochStats, fit
from irene.train.stages import (
    classifier_objective,
    classifier_optimizer,
    generator_objective,
    generator_optimizer,
)

log = logging.getLogger(__name__)

STAGES = ("classifiers", "generator")
CHECKPOINT_FILE = "state.pt"
BATCH_DTYPES = {
    "q_emb": torch.float32,
    "pos": torch.int64,
    "q_pos": torch.int64,
    "neg": torch.int64,
}
# Forwarded to the workers when artifacts live on S3 (workers may not share the driver's env).
S3_ENV_VARS = io.S3_ENV_VARS
# Testing hook read by the driver: "rank=1,epoch=1,marker=/tmp/x[,delay_s=3]" makes that rank
# exit hard after reporting that epoch, once (the marker file records that it happened).
FAULT_ENV = "IRENE_FAULT_INJECT"


@dataclass(frozen=True)
class FaultInjection:
    rank: int
    epoch: int
    marker: str
    delay_s: float = 3.0  # a crash < 2 s after train.report can lose that checkpoint

    @classmethod
    def from_env(cls, value: str | None = None) -> FaultInjection | None:
        value = os.environ.get(FAULT_ENV, "") if value is None else value
        if not value:
            return None
        kv = dict(part.split("=", 1) for part in value.split(",") if part)
        return cls(int(kv["rank"]), int(kv["epoch"]), kv["marker"], float(kv.get("delay_s", 3.0)))

    def maybe_crash(self, rank: int, epoch: int) -> None:
        if rank != self.rank or epoch != self.epoch or os.path.exists(self.marker):
            return
        with open(self.marker, "w") as f:
            f.write(f"rank {rank} crashed after epoch {epoch}\n")
        log.warning("fault injection: rank %d exits after epoch %d", rank, epoch)
        time.sleep(self.delay_s)
        os._exit(1)


# ----------------------------------------------------------------------------------------------
# worker side


def train_classifiers_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker function of the classifier stage."""
    _worker_setup(config)
    cfg = from_dict(TrainConfig, config["train"]).classifiers
    _, seen_emb = artifacts.read_seen_items(config["work_dir"])  # (S, d)
    torch.manual_seed(cfg.seed)
    obj = classifier_objective(seen_emb, cfg)
    _train(
        obj, lambda m: classifier_optimizer(m, cfg), cfg.epochs, cfg.batch_size, cfg.seed, config
    )


def train_generator_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker function of the generator stage (needs the trained classifiers)."""
    _worker_setup(config)
    cfg = from_dict(TrainConfig, config["train"]).generator
    work_dir = config["work_dir"]
    _, seen_emb = artifacts.read_seen_items(work_dir)  # (S, d)
    clf = artifacts.load_dir(io.join(work_dir, artifacts.CLASSIFIERS_DIR), OVAClassifiers.load)
    W = clf.weights().numpy()  # (S, d)
    nbr_idx, nbr_bucket = artifacts.read_neighbours(io.join(work_dir, artifacts.NEIGHBOURS))
    obj = generator_objective(seen_emb, W, nbr_idx, nbr_bucket, cfg)
    _train(obj, lambda m: generator_optimizer(m, cfg), cfg.epochs, cfg.batch_size, cfg.seed, config)


def train_contrastive_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker function of contrastive encoder fine-tuning (oracle distillation).

    The shard holds text rows ``anchor``, ``candidate``, ``weight`` and ``hard`` (a list of
    hard-negative candidate texts); each worker tokenises its own batches.
    """
    import numpy as np
    import ray
    import ray.train

    from irene.config import EncoderConfig
    from irene.model.encoder import TextEncoder
    from irene.train.contrastive import ContrastiveObjective, collate_text_pairs

    _worker_setup(config)
    c = config["contrastive"]
    enc_cfg = from_dict(EncoderConfig, {**config["encoder"], "device": "cpu"})
    encoder = TextEncoder.from_config(enc_cfg)  # prepare_model moves it to the device
    if config.get("encoder_state") is not None:  # the driver's current weights
        encoder.load_state_dict(ray.get(config["encoder_state"]))
    torch.manual_seed(c["seed"])
    obj = ContrastiveObjective(encoder, c["temperature"])
    rank = ray.train.get_context().get_world_rank()

    def make_batches(shard, per_worker_batch: int, epoch: int, shuffle: int | None):
        rng = np.random.default_rng(c["seed"] * 100_003 + epoch * 101 + rank)
        for b in shard.iter_batches(
            batch_size=per_worker_batch,
            batch_format="pandas",
            local_shuffle_buffer_size=shuffle,
            local_shuffle_seed=None if shuffle is None else c["seed"] * 100_003 + epoch + 1,
        ):
            if len(b) < 2:  # equal shards: every rank skips the same step
                continue
            yield collate_text_pairs(
                encoder,
                b["anchor"].tolist(),
                b["candidate"].tolist(),
                b["weight"].to_numpy(),
                [list(h) for h in b["hard"]],
                c["num_hard_negatives"],
                rng,
            )

    _train(
        obj,
        lambda m: torch.optim.AdamW(m.parameters(), lr=c["lr"]),
        c["epochs"],
        c["batch_size"],
        c["seed"],
        config,
        make_batches=make_batches,
        ddp_kwargs={"find_unused_parameters": True},  # e.g. the HF pooler is never used
    )


WORKER_FNS: dict[str, Callable[[dict[str, Any]], None]] = {
    "classifiers": train_classifiers_per_worker,
    "generator": train_generator_per_worker,
}


def _worker_setup(config: dict[str, Any]) -> None:
    os.environ.update(config.get("env") or {})
    logger = logging.getLogger("irene")
    logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _train(
    obj: torch.nn.Module,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    epochs: int,
    batch_size: int,
    seed: int,
    config: dict[str, Any],
    make_batches: Callable[[Any, int, int, int | None], Any] | None = None,
    ddp_kwargs: dict[str, Any] | None = None,
) -> None:
    """DDP-wrap ``obj``, restore a checkpoint if any, and run the one loop over this worker's
    shard. ``make_batches(shard, per_worker_batch, epoch, shuffle_buffer)`` turns the shard into
    an epoch's batches (default: the numeric pair table as torch tensors)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(
        obj, parallel_strategy_kwargs={"broadcast_buffers": False, **(ddp_kwargs or {})}
    )
    optimizer = make_optimizer(model)
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = load_checkpoint_state(checkpoint, map_location=device)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
        log.info(
            "rank %d resumes at epoch %d (checkpoint of epoch %d)",
            rank,
            start_epoch,
            start_epoch - 1,
        )
    shard = ray.train.get_dataset_shard("train")
    per_worker_batch = max(1, batch_size // world)  # the global batch matches in-process training
    shuffle = int(config.get("shuffle_buffer", 0)) or None
    every = int(config.get("checkpoint_every", 1))
    fault = FaultInjection(**config["fault"]) if config.get("fault") else None

    def epoch_batches(epoch: int):
        if make_batches is not None:
            return make_batches(shard, per_worker_batch, epoch, shuffle)
        return shard.iter_torch_batches(
            batch_size=per_worker_batch,
            dtypes=BATCH_DTYPES,
            device="cpu",  # run_epoch moves batches to the device
            local_shuffle_buffer_size=shuffle,
            local_shuffle_seed=None if shuffle is None else seed * 100_003 + epoch + 1,
        )

    def on_epoch_end(stats: EpochStats) -> None:
        metrics = {**reduce_stats(stats, device), "start_epoch": start_epoch, "world_size": world}
        history.append(metrics)
        if rank == 0:
            log.info(
                "[%s] epoch %d loss %.4f %.0f pairs/s (%d workers)",
                config.get("stage"),
                stats.epoch,
                metrics["loss"],
                metrics["pairs_per_s"],
                world,
            )
        save = (stats.epoch + 1) % every == 0 or stats.epoch == epochs - 1
        if save and rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(
                    {
                        "model": _unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": stats.epoch,
                        "history": history,
                    },
                    os.path.join(tmp, CHECKPOINT_FILE),
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if fault is not None:
            fault.maybe_crash(rank, stats.epoch)

    fit(model, epoch_batches, optimizer, epochs, start_epoch, device, on_epoch_end)


def reduce_stats(stats: EpochStats, device: torch.device | str = "cpu") -> dict[str, float]:
    """Epoch metrics over all workers: pair-weighted loss, total pairs, slowest worker's time."""
    import torch.distributed as dist

    loss, pairs, seconds = stats.loss, float(stats.pairs), stats.seconds
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
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


def load_checkpoint_state(checkpoint, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CHECKPOINT_FILE), map_location=map_location)


def sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of an objective's state dict under ``prefix.`` (e.g. the generator's)."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}


# ----------------------------------------------------------------------------------------------
# driver side


@dataclass
class StageRun:
    run_name: str
    state: dict[str, Any]  # the final checkpoint's state (model, optimizer, epoch, history)
    history: list[dict[str, Any]]  # per-epoch metrics, resumed epochs counted once
    checkpoint_metrics: list[dict[str, Any]]  # metrics attached to every kept checkpoint
    seconds: float


def resolve_use_gpu(value: str) -> bool:
    import ray

    if value == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return value == "true"


def storage_args(uri: str) -> dict[str, Any]:
    """RunConfig storage kwargs: S3 as ``bucket/path`` plus a pyarrow S3FileSystem."""
    if io.is_s3(uri):
        fs, path = io.resolve(uri)
        return {"storage_path": path, "storage_filesystem": fs}
    return {"storage_path": io.resolve(uri)[1]}


def pairs_dataset(work_dir: str):
    """The pair table as a lazily read (streamed) Ray Dataset."""
    import ray.data

    fs, path = io.resolve(io.join(work_dir, artifacts.PAIRS_DIR))
    return ray.data.read_parquet(path, filesystem=fs)


def worker_env(cfg: PipelineConfig) -> dict[str, str]:
    if not io.is_s3(cfg.work_dir):
        return {}
    return {k: os.environ[k] for k in S3_ENV_VARS if os.environ.get(k)}


def fit_stage(
    stage: str,
    cfg: PipelineConfig,
    fault: FaultInjection | None = None,
    run_name: str | None = None,
) -> StageRun:
    """Run one training stage with a TorchTrainer; returns the final checkpoint's state.

    A run with the name of an earlier, interrupted one (same storage) resumes from its latest
    checkpoint. ``run_name`` defaults to ``cfg.name_for(stage)``.
    """
    if stage not in WORKER_FNS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    loop_config = {
        "stage": stage,
        "work_dir": cfg.work_dir,
        "train": to_dict(cfg.train),
        "checkpoint_every": cfg.checkpoint_every,
        "shuffle_buffer": cfg.shuffle_buffer,
        "env": worker_env(cfg),
        "fault": None if fault is None else to_dict(fault),
    }
    return run_trainer(
        WORKER_FNS[stage],
        loop_config,
        pairs_dataset(cfg.work_dir),
        TrainerSettings(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=dict(cfg.resources_per_worker),
            storage=cfg.storage(),
            run_name=run_name or cfg.name_for(stage),
            max_failures=cfg.max_failures,
            keep_checkpoints=cfg.keep_checkpoints,
        ),
    )


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


def run_trainer(worker_fn, loop_config: dict[str, Any], dataset, s: TrainerSettings) -> StageRun:
    """Run ``worker_fn`` on ``s.num_workers`` DDP workers fed by ``dataset``; returns the final
    checkpoint's state. A run with the name of an interrupted one (same storage) resumes."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = resolve_use_gpu(s.use_gpu)
    resources = dict(s.resources_per_worker)
    if use_gpu:
        resources.setdefault("GPU", 1)
    trainer = TorchTrainer(
        worker_fn,
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
    stage = loop_config.get("stage")
    log.info(
        "training %s: %d workers (gpu=%s, %s each), storage %s, run %s",
        stage,
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
        raise RuntimeError(f"training stage {stage} finished without a checkpoint")
    state = load_checkpoint_state(result.checkpoint)
    kept = [dict(m) for _, m in (result.best_checkpoints or [])]
    return StageRun(s.run_name, state, list(state["history"]), kept, seconds)


def fit_contrastive(
    anchors: list[str],
    candidates: list[str],
    weights,
    hard_negatives: list[list[str]],
    encoder,
    params: dict[str, Any],
    settings: TrainerSettings,
    shuffle_buffer: int = 1024,
) -> StageRun:
    """Contrastive fine-tuning of ``encoder`` (a ``TextEncoder``, its weights shipped through
    the object store) on Ray Train workers running ``train_contrastive_per_worker``.

    ``params``: epochs, batch_size (global), lr, temperature, seed, num_hard_negatives. The
    fine-tuned weights are ``sub_state(run.state["model"], "encoder")``.
    """
    import numpy as np
    import pandas as pd
    import ray
    import ray.data

    order = np.random.default_rng(params["seed"]).permutation(len(anchors))
    df = pd.DataFrame(
        {
            "anchor": [anchors[i] for i in order],
            "candidate": [candidates[i] for i in order],
            "weight": np.asarray(weights, dtype=np.float32)[order],
            "hard": [list(hard_negatives[i]) for i in order],
        }
    )
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    loop_config = {
        "stage": "contrastive",
        "encoder": to_dict(encoder.cfg),
        "encoder_state": ray.put(state),
        "contrastive": params,
        "checkpoint_every": 1,
        "shuffle_buffer": shuffle_buffer,
        "env": {},
        "fault": None,
    }
    return run_trainer(
        train_contrastive_per_worker, loop_config, ray.data.from_pandas(df), settings
    )

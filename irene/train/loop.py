"""The one training loop and the context it runs in (one process, or a Ray Train worker).

A stage's ``train_func(config, ctx)`` (:mod:`irene.train.stages`) is written once against
:class:`TrainContext`: where its batches come from, how the model is wrapped (DDP or not), how
tensors are gathered over ranks, and where metrics and checkpoints go. :class:`LocalContext`
runs it in this process over an in-memory table; :mod:`irene.ray.train` runs the very same
function on every Ray Train worker over its Ray Data shard. :func:`run_stage` is the part
every stage shares: optimiser, warm-up, checkpoint restore, the epoch loop and reporting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from irene.train.batches import TableBatches, to_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    pairs: int
    seconds: float

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / max(self.seconds, 1e-9)

    def as_dict(self) -> dict[str, float]:
        return {
            "epoch": self.epoch,
            "loss": self.loss,
            "pairs": self.pairs,
            "seconds": self.seconds,
            "pairs_per_s": self.pairs_per_s,
        }


def run_epoch(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    epoch: int,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
    scheduler: Any = None,
) -> EpochStats:
    model.train()
    total, n_pairs, steps = 0.0, 0, 0
    t0 = time.perf_counter()
    for batch in tqdm(
        batches, desc=f"epoch {epoch}", disable=not show_progress, unit="batch", leave=False
    ):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach())
        n_pairs += int(next(iter(batch.values())).shape[0])
        steps += 1
    return EpochStats(epoch, total / max(steps, 1), n_pairs, time.perf_counter() - t0)


def fit(
    model: nn.Module,
    epoch_batches: Callable[[int], Iterable[dict[str, Any]]],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    start_epoch: int = 0,
    device: torch.device | str = "cpu",
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    show_progress: bool = False,
    scheduler: Any = None,
) -> list[EpochStats]:
    history = []
    for epoch in range(start_epoch, epochs):
        stats = run_epoch(
            model, epoch_batches(epoch), optimizer, epoch, device, show_progress, scheduler
        )
        log.info(
            "epoch %d loss %.4f (%d pairs, %.0f pairs/s)",
            epoch,
            stats.loss,
            stats.pairs,
            stats.pairs_per_s,
        )
        history.append(stats)
        if on_epoch_end is not None:
            on_epoch_end(stats)
    return history


class TrainContext(Protocol):
    """What a ``train_func`` may ask of the executor that runs it."""

    rank: int
    world_size: int
    device: torch.device

    def batches(self, epoch: int, batch_size: int) -> Iterable[dict[str, np.ndarray]]:
        """This rank's part of each global batch of ``batch_size`` table rows of the epoch."""

    def prepare(self, model: nn.Module, **ddp_kwargs: Any) -> nn.Module:
        """The model on the device, wrapped for data parallelism when world_size > 1."""

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (1-D) of every rank, concatenated in rank order."""

    def reduce(self, stats: EpochStats) -> dict[str, float]:
        """Epoch metrics over every rank (pair-weighted loss, total pairs, slowest time)."""

    def restore(self) -> dict[str, Any] | None:
        """The latest checkpoint's state of an interrupted run, if any."""

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        """Record an epoch's metrics, with a checkpoint when ``state`` is given."""


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


@dataclass
class LocalContext:
    """One process over an in-memory table; keeps the history and the last reported state."""

    table: TableBatches
    show_progress: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] | None = None

    def batches(self, epoch: int, batch_size: int):
        return self.table.epoch(epoch, batch_size)

    def prepare(self, model: nn.Module, **ddp_kwargs: Any) -> nn.Module:
        return model.to(self.device)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def reduce(self, stats: EpochStats) -> dict[str, float]:
        return stats.as_dict()

    def restore(self) -> dict[str, Any] | None:
        return None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        self.history.append(dict(metrics))
        if state is not None:
            self.state = state


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int):
    """Linear warm-up over ``warmup_steps`` optimiser steps, then constant (None if 0)."""
    if warmup_steps <= 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps)
    )


def run_stage(
    objective: nn.Module,
    ctx: TrainContext,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    epochs: int,
    batch_size: int,
    warmup_steps: int = 0,
    checkpoint_every: int = 1,
    collate: Callable[[dict[str, Any], int], dict[str, torch.Tensor]] | None = None,
    on_report: Callable[[dict[str, Any]], None] | None = None,
    ddp_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Train ``objective`` in ``ctx``: restore a checkpoint if there is one, run the epochs,
    report each (with a checkpoint every ``checkpoint_every`` epochs and after the last).
    ``collate(batch, epoch)`` turns a table batch into the objective's tensors (default: the
    numeric columns as tensors). Returns the unwrapped model."""
    collate = collate or (lambda b, epoch: to_tensors(b))
    model = ctx.prepare(objective, **(ddp_kwargs or {}))
    optimizer = make_optimizer(model)
    scheduler = warmup_schedule(optimizer, warmup_steps)
    start_epoch, history = 0, []
    state = ctx.restore()
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
        log.info("rank %d resumes at epoch %d", ctx.rank, start_epoch)

    def on_epoch_end(stats: EpochStats) -> None:
        metrics = {**ctx.reduce(stats), "start_epoch": start_epoch, "world_size": ctx.world_size}
        history.append(metrics)
        save = (stats.epoch + 1) % checkpoint_every == 0 or stats.epoch == epochs - 1
        checkpoint = None
        if save and ctx.rank == 0:
            checkpoint = {
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "epoch": stats.epoch,
                "history": list(history),
            }
        ctx.report(metrics, checkpoint)
        if on_report is not None:
            on_report(metrics)

    fit(
        model,
        lambda e: (collate(b, e) for b in ctx.batches(e, batch_size)),
        optimizer,
        epochs,
        start_epoch,
        ctx.device,
        on_epoch_end,
        getattr(ctx, "show_progress", False),
        scheduler,
    )
    return unwrap(model)

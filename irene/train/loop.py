"""The one training loop, used in-process (``irene benchmark``) and inside Ray Train workers.

``fit`` knows nothing about Ray: it takes an objective module (``model(batch)`` returns the
scalar loss, so DDP wrapping works unchanged), a callable giving an epoch's batches, and an ``on_epoch_end`` hook (where Ray reports metrics
and checkpoints). Resuming is ``start_epoch`` > 0 with restored model/optimizer state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

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
    batches: Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    epoch: int,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
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
        total += float(loss.detach())
        n_pairs += int(next(iter(batch.values())).shape[0])
        steps += 1
    return EpochStats(epoch, total / max(steps, 1), n_pairs, time.perf_counter() - t0)


def fit(
    model: nn.Module,
    epoch_batches: Callable[[int], Iterable[dict[str, torch.Tensor]]],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    start_epoch: int = 0,
    device: torch.device | str = "cpu",
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    show_progress: bool = False,
) -> list[EpochStats]:
    history = []
    for epoch in range(start_epoch, epochs):
        stats = run_epoch(model, epoch_batches(epoch), optimizer, epoch, device, show_progress)
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

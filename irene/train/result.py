"""What a training run returns, whichever executor ran it (no torch, no Ray here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FitResult:
    """An executor's ``fit``: one run of a stage's train_func."""

    run_name: str
    state: dict[str, Any]  # the final checkpoint (model, optimizer, epoch, history)
    history: list[dict[str, Any]]  # per-epoch metrics, resumed epochs counted once
    seconds: float
    checkpoint_epochs: list[int] = field(default_factory=list)


def sub_state(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of an objective's state dict under ``prefix.`` (e.g. the generator's)."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}

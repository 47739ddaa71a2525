"""Fault injection for the chaos tests, all on the test side: product code has no fault hooks.

- :class:`CrashAfterEpoch`: a Ray Train ``train_loop_per_worker`` that runs the real one
  (``irene.ray.train.train_worker``) with ``RayContext.report`` patched *in the worker
  process*, so that one rank exits hard right after reporting (and checkpointing) one epoch,
  once. The ``worker_crash`` fixture (tests/conftest.py) swaps it in on the driver, where
  ``irene.ray.train.run_trainer`` hands it to the TorchTrainer; Ray ships it to the workers by
  reference (they import ``tests.faults``: Ray puts the driver's working directory, the repo
  root, on their ``sys.path``).
- ``python -m tests.faults kill-after-writes N MODULE [ARGS...]``: runs ``python -m MODULE
  ARGS...`` in this process with the ingest Write stage patched to SIGKILL the process right
  after its N-th durable batch write (:func:`kill_after_writes_command` builds the command).
"""

from __future__ import annotations

import logging
import os
import runpy
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the cwd that makes `tests.faults` importable

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Ray Train workers


@dataclass(frozen=True)
class CrashAfterEpoch:
    """``train_loop_per_worker``: the real worker, with rank ``rank`` exiting (``os._exit(1)``)
    ``delay_s`` after it reported epoch ``epoch``, once (the ``marker`` file records that it
    happened and disarms the crash for the restarted workers)."""

    rank: int
    epoch: int
    marker: str
    delay_s: float = 3.0  # a crash < 2 s after train.report can lose that checkpoint

    def __call__(self, config: dict[str, Any]) -> None:
        import irene.ray.train as ray_train

        report = ray_train.RayContext.report
        crash = self

        def report_then_maybe_crash(ctx, metrics, state) -> None:
            report(ctx, metrics, state)
            crash.maybe_crash(ctx.rank, int(metrics["epoch"]))

        ray_train.RayContext.report = report_then_maybe_crash
        try:
            ray_train.train_worker(config)  # the worker process's own, unpatched function
        finally:
            ray_train.RayContext.report = report

    def maybe_crash(self, rank: int, epoch: int) -> None:
        if rank != self.rank or epoch != self.epoch or os.path.exists(self.marker):
            return
        with open(self.marker, "w") as f:
            f.write(f"rank {rank} crashed after epoch {epoch}\n")
        log.warning("fault injection: rank %d exits after epoch %d", rank, epoch)
        time.sleep(self.delay_s)
        os._exit(1)


class WorkerCrash:
    """The ``worker_crash`` fixture: ``arm(rank, epoch, marker)`` makes the next Ray Train
    runs started from this process crash that way; ``disarm()`` restores the real worker."""

    def __init__(self, monkeypatch) -> None:
        import irene.ray.train as ray_train

        self.monkeypatch = monkeypatch
        self.module = ray_train
        self.real = ray_train.train_worker

    def arm(self, rank: int, epoch: int, marker: str, delay_s: float = 3.0) -> None:
        crash = CrashAfterEpoch(rank, epoch, str(marker), delay_s)
        self.monkeypatch.setattr(self.module, "train_worker", crash)

    def disarm(self) -> None:
        self.monkeypatch.setattr(self.module, "train_worker", self.real)


# ----------------------------------------------------------------------------------------------
# in-process ingest (a child process started by the test)


def kill_after_writes(n: int) -> None:
    """Patch the ingest Write stage: SIGKILL this process right after its ``n``-th batch write
    returned (durable in every shard's log)."""
    from irene.ingest_stages import Write

    write = Write.__call__
    done = 0

    def write_then_maybe_die(self, batch: dict) -> dict:
        nonlocal done
        out = write(self, batch)
        done += 1
        if done >= n:
            log.warning("fault injection: SIGKILL after %d written batches", done)
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    Write.__call__ = write_then_maybe_die


def kill_after_writes_command(n: int, module: str, args: list[str]) -> list[str]:
    """The command running ``python -m module *args`` SIGKILLed after ``n`` batch writes (run
    it with ``cwd=ROOT``)."""
    return [sys.executable, "-m", "tests.faults", "kill-after-writes", str(n), module, *args]


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] != "kill-after-writes":
        sys.exit("usage: python -m tests.faults kill-after-writes N MODULE [ARGS...]")
    n, module, args = int(argv[1]), argv[2], argv[3:]
    kill_after_writes(n)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])

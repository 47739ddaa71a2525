"""A training worker dies mid-run: the run (or the resubmitted job) resumes from the last
checkpoint instead of repeating epochs from zero. The crash is injected from the test side
(the ``worker_crash`` fixture, tests/faults.py)."""

from __future__ import annotations

import dataclasses

import pytest
from ray.train import TrainingFailedError

import pipelines.prepare
from irene.config import load_config, replace
from irene.pipeline import train_classifiers, train_generator
from irene.ray.executor import RayExecutor
from tests.pipelines.common import tiny_config, write_config, write_inputs


def _retries(cfg, n: int):
    return replace(cfg, ray=dataclasses.replace(cfg.ray, max_failures=n))


@pytest.mark.slow  # ~1.5 min: in `make test-slow`
def test_worker_crash_resumes_from_checkpoint(ray_local, tmp_path, worker_crash):
    data, enc = write_inputs(tmp_path)
    raw = tiny_config(enc, data, str(tmp_path / "work"), str(tmp_path / "bundle"))
    raw["train"]["classifiers"]["epochs"] = 4
    raw["train"]["generator"]["epochs"] = 3
    cfg_path = write_config(tmp_path / "cfg.yaml", raw)
    assert pipelines.prepare.main(["--config", cfg_path]) == 0
    cfg = load_config(cfg_path)

    # 1. rank 1 exits hard after epoch 1's checkpoint; FailureConfig(max_failures=1) restarts
    #    the worker group, which restores the epoch-1 checkpoint and runs epochs 2 and 3 only.
    marker = tmp_path / "crashed-classifiers"
    worker_crash.arm(rank=1, epoch=1, marker=marker)
    cfg1 = _retries(cfg, 1)
    record = train_classifiers(cfg1, RayExecutor(cfg1))
    assert marker.exists()
    epochs = record["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert [e["start_epoch"] for e in epochs] == [0, 0, 2, 2]  # resumed, not repeated
    assert record["checkpoint_epochs"] == [0, 1, 2, 3]

    # 2. with no retries left the run fails; resubmitting the same job resumes from storage.
    marker = tmp_path / "crashed-generator"
    worker_crash.arm(rank=1, epoch=0, marker=marker)
    cfg0 = _retries(cfg, 0)
    with pytest.raises(TrainingFailedError):
        train_generator(cfg0, RayExecutor(cfg0))
    assert marker.exists()
    worker_crash.disarm()
    record = train_generator(cfg0, RayExecutor(cfg0))
    epochs = record["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert [e["start_epoch"] for e in epochs] == [0, 1, 1]

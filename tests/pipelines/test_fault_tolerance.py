"""A training worker dies mid-run: the run (or the resubmitted job) resumes from the last
checkpoint instead of repeating epochs from zero."""

from __future__ import annotations

import pytest
from ray.train import TrainingFailedError

import pipelines.prepare
from irene.pipeline import train_classifiers, train_generator
from irene.pipeline_config import load_pipeline_config, replace
from irene.train.ray_train import FAULT_ENV
from tests.pipelines.common import tiny_config, write_config, write_inputs


def test_worker_crash_resumes_from_checkpoint(ray_local, tmp_path, monkeypatch):
    data, enc = write_inputs(tmp_path)
    raw = tiny_config(enc, data, str(tmp_path / "work"), str(tmp_path / "bundle"))
    raw["train"]["classifiers"]["epochs"] = 4
    raw["train"]["generator"]["epochs"] = 3
    cfg_path = write_config(tmp_path / "cfg.yaml", raw)
    assert pipelines.prepare.main(["--config", cfg_path]) == 0
    cfg = load_pipeline_config(cfg_path)

    # 1. rank 1 exits hard after epoch 1's checkpoint; FailureConfig(max_failures=1) restarts
    #    the worker group, which restores the epoch-1 checkpoint and runs epochs 2 and 3 only.
    marker = tmp_path / "crashed-classifiers"
    monkeypatch.setenv(FAULT_ENV, f"rank=1,epoch=1,marker={marker}")
    record = train_classifiers(replace(cfg, max_failures=1))
    assert marker.exists()
    epochs = record["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert [e["start_epoch"] for e in epochs] == [0, 0, 2, 2]  # resumed, not repeated
    assert record["checkpoint_epochs"] == [0, 1, 2, 3]

    # 2. with no retries left the run fails; resubmitting the same job resumes from storage.
    marker = tmp_path / "crashed-generator"
    monkeypatch.setenv(FAULT_ENV, f"rank=1,epoch=0,marker={marker}")
    with pytest.raises(TrainingFailedError):
        train_generator(replace(cfg, max_failures=0))
    assert marker.exists()
    monkeypatch.delenv(FAULT_ENV)
    record = train_generator(replace(cfg, max_failures=0))
    epochs = record["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert [e["start_epoch"] for e in epochs] == [0, 1, 1]

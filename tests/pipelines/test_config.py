"""Bad pipeline configs fail fast, with a clear message, before any Ray work starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

import irene.pipeline
import pipelines.build_bundle
import pipelines.prepare
import pipelines.train_classifiers
from irene.config import ConfigError
from irene.data.xc import write_xc
from irene.pipeline import EXIT_CONFIG
from irene.pipeline_config import PipelineConfig, load_pipeline_config
from irene.train import artifacts
from tests.helpers import synthetic_xc
from tests.pipelines.common import write_config


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a driver tries to start or join Ray."""

    def forbidden(*a, **kw):
        raise AssertionError("Ray was started although the config is invalid")

    monkeypatch.setattr(irene.pipeline, "ensure_ray", forbidden)


@pytest.fixture
def data_dir(tmp_path):
    path = str(tmp_path / "data")
    write_xc(synthetic_xc(n_labels=10, n_train=20, n_test=5), path)
    return path


def test_unknown_key_fails_fast(tmp_path, data_dir, no_ray, capsys):
    cfg = {"data": data_dir, "work_dir": str(tmp_path / "w"), "num_wrokers": 2}
    rc = pipelines.prepare.main(["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert rc == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "unknown config key" in err and "num_wrokers" in err
    # nested keys too
    cfg = {"data": data_dir, "work_dir": str(tmp_path / "w"), "train": {"generator": {"epoch": 1}}}
    rc = pipelines.prepare.main(["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert rc == EXIT_CONFIG and "train.generator" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_missing_data_fails_fast(tmp_path, no_ray, capsys):
    cfg = {"data": str(tmp_path / "nope"), "work_dir": str(tmp_path / "w")}
    rc = pipelines.prepare.main(["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert rc == EXIT_CONFIG
    assert "dataset" in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_missing_config_file_and_bad_values(tmp_path, no_ray, capsys):
    assert pipelines.prepare.main(["--config", str(tmp_path / "absent.yaml")]) == EXIT_CONFIG
    assert "config file not found" in capsys.readouterr().err
    for bad in ({"num_workers": 0}, {"use_gpu": "maybe"}, {"resources_per_worker": {"CPU": "x"}}):
        with pytest.raises(ConfigError):
            load_pipeline_config(None, None, **bad)


def test_missing_stage_inputs_fail_fast(tmp_path, no_ray, capsys):
    cfg = {"work_dir": str(tmp_path / "w"), "bundle": str(tmp_path / "b")}
    path = write_config(tmp_path / "c.yaml", cfg)
    assert pipelines.train_classifiers.main(["--config", path]) == EXIT_CONFIG
    assert "pipelines.prepare" in capsys.readouterr().err
    assert pipelines.build_bundle.main(["--config", path]) == EXIT_CONFIG
    assert "lacks" in capsys.readouterr().err


def _fake_prepared(work) -> None:
    for name in (artifacts.PREPARE_META, artifacts.ITEMS):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text("{}")
    (work / artifacts.PAIRS_DIR).mkdir()


def test_unreachable_s3_storage_fails_fast(tmp_path, no_ray, monkeypatch, capsys):
    monkeypatch.setenv("IRENE_S3_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    work = tmp_path / "w"
    _fake_prepared(work)
    cfg = {"work_dir": str(work), "storage_path": "s3://no-bucket/ray"}
    rc = pipelines.train_classifiers.main(["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert rc == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "storage_path location s3://no-bucket/ray is unreachable" in err


def test_unwritable_local_storage_fails_fast(tmp_path, no_ray, capsys):
    work = tmp_path / "w"
    _fake_prepared(work)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = {"work_dir": str(work), "storage_path": str(blocker / "ray")}
    rc = pipelines.train_classifiers.main(["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert rc == EXIT_CONFIG and "not writable" in capsys.readouterr().err


def test_config_defaults_and_overrides(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"work_dir": "s3://b/w", "use_gpu": False})
    cfg = load_pipeline_config(path, ["train.generator.epochs=7", "num_workers=3"])
    assert cfg.train.generator.epochs == 7 and cfg.num_workers == 3 and cfg.use_gpu == "false"
    assert cfg.resources_per_worker == {"CPU": 0.5}
    assert cfg.storage() == "s3://b/w/ray_results"
    assert cfg.name_for("generator") != cfg.name_for("classifiers")
    assert PipelineConfig(work_dir="x").name_for("g") == PipelineConfig(work_dir="x").name_for("g")


def test_importing_the_ray_modules_does_not_import_ray():
    code = (
        "import sys, irene.train.ray_train, irene.pipeline, pipelines.prepare; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

"""Bad pipeline configs fail fast, with a clear message, before any Ray work starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

import irene.ray
import pipelines.build_bundle
import pipelines.prepare
import pipelines.train_classifiers
from irene.config import Config, ConfigError, load_config
from irene.data.xc import write_xc
from irene.pipeline import EXIT_CONFIG, PREPARED
from tests.helpers import synthetic_xc
from tests.pipelines.common import write_config


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a driver tries to start or join Ray."""

    def forbidden(*a, **kw):
        raise AssertionError("Ray was started although the config is invalid")

    monkeypatch.setattr(irene.ray, "ensure_ray", forbidden)


@pytest.fixture
def data_dir(tmp_path):
    path = str(tmp_path / "data")
    write_xc(synthetic_xc(n_labels=10, n_train=20, n_test=5), path)
    return path


def test_unknown_key_fails_fast(tmp_path, data_dir, no_ray, capsys):
    cfg = {"data": data_dir, "work_dir": str(tmp_path / "w"), "ray": {"num_wrokers": 2}}
    rc = pipelines.prepare.main(["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert rc == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "unknown config key" in err and "num_wrokers" in err and "'ray'" in err
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
    for bad in (
        ["ray.num_workers=0"],
        ["ray.use_gpu=maybe"],
        ["ray.resources_per_worker={CPU: x}"],
        ["executor=spark"],
        ["train.generator.batch_size=0"],
        ["train.split.validation_fraction=1.0"],
        ["train.classifiers.hard_negatives=20"],  # more than the mined pool
        ["train.classifiers.epochs=two"],
    ):
        with pytest.raises(ConfigError):
            load_config(None, bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.generator.epochs"])


def test_missing_stage_inputs_fail_fast(tmp_path, no_ray, capsys):
    cfg = {"work_dir": str(tmp_path / "w"), "bundle": str(tmp_path / "b")}
    path = write_config(tmp_path / "c.yaml", cfg)
    assert pipelines.train_classifiers.main(["--config", path]) == EXIT_CONFIG
    assert "pipelines.prepare" in capsys.readouterr().err
    assert pipelines.build_bundle.main(["--config", path]) == EXIT_CONFIG
    assert "lacks" in capsys.readouterr().err


def _fake_prepared(work) -> None:
    for name in PREPARED:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith((".json", ".parquet")):
            (work / name).write_text("{}")
        else:
            (work / name).mkdir()


def test_unreachable_s3_storage_fails_fast(tmp_path, no_ray, monkeypatch, capsys):
    monkeypatch.setenv("IRENE_S3_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    work = tmp_path / "w"
    _fake_prepared(work)
    cfg = {"work_dir": str(work), "ray": {"storage_path": "s3://no-bucket/ray"}}
    rc = pipelines.train_classifiers.main(["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert rc == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "storage_path location s3://no-bucket/ray is unreachable" in err


def test_unwritable_local_storage_fails_fast(tmp_path, no_ray, capsys):
    work = tmp_path / "w"
    _fake_prepared(work)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = {"work_dir": str(work), "ray": {"storage_path": str(blocker / "ray")}}
    rc = pipelines.train_classifiers.main(["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert rc == EXIT_CONFIG and "not writable" in capsys.readouterr().err


def test_config_defaults_and_overrides(tmp_path, monkeypatch):
    path = write_config(tmp_path / "c.yaml", {"work_dir": "s3://b/w", "ray": {"use_gpu": False}})
    cfg = load_config(path, ["train.generator.epochs=7", "ray.num_workers=3"], data="rel/data")
    assert cfg.train.generator.epochs == 7 and cfg.ray.num_workers == 3
    assert cfg.ray.use_gpu == "false" and cfg.ray.resources_per_worker == {"CPU": 0.5}
    assert cfg.storage() == "s3://b/w/ray_results"
    assert cfg.data == str(tmp_path.cwd() / "rel" / "data")  # local paths made absolute
    assert cfg.run_name("generator") != cfg.run_name("classifiers")
    assert Config(work_dir="x").run_name("g") == Config(work_dir="x").run_name("g")
    # the options of every command are shorthands of the same keys: one parser
    from irene.config import with_seed

    seeded = with_seed(cfg, 5)
    t = seeded.train
    assert (t.split.seed, t.classifiers.seed, t.generator.seed, t.finetune.seed) == (5, 5, 5, 5)


def test_importing_the_ray_modules_does_not_import_ray():
    code = (
        "import sys, irene.ray.train, irene.ray.executor, irene.ray.index, irene.ray.encode, "
        "irene.ray.oracle, irene.pipeline, irene.benchmark, irene.cli, pipelines.prepare; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_numbers_in_exponent_notation_and_int_fields():
    cfg = load_config(None, ["train.classifiers.lr=1e-3", "train.generator.epochs=3.0"])
    assert cfg.train.classifiers.lr == 1e-3 and cfg.train.generator.epochs == 3
    assert isinstance(cfg.train.generator.epochs, int)
    with pytest.raises(ConfigError, match="integer"):
        load_config(None, ["train.generator.epochs=2.5"])

"""The whole distributed chain on a tiny dataset: local directory and moto S3."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

import pipelines.build_bundle
import pipelines.demo
import pipelines.prepare
import pipelines.train_classifiers
import pipelines.train_generator
from irene import io
from irene.bundle import load_bundle
from irene.cli import app
from irene.train import artifacts
from tests.conftest import MOTO_BUCKET, free_port
from tests.helpers import N_COLD, N_ITEMS, make_tiny_encoder, write_catalogue_dir
from tests.pipelines.common import check_bundle_scores, tiny_config, write_config, write_inputs


def _check_manifest(manifest: dict, epochs: int = 2) -> None:
    m = manifest["metrics"]
    for stage in ("classifiers", "generator"):
        hist = m["training"][stage]["epochs"]
        assert [h["epoch"] for h in hist] == list(range(epochs))
        assert all(h["world_size"] == 2 and h["pairs_per_s"] > 0 for h in hist)
        assert m["training"][stage]["executor"] == "ray"
        assert all(h["pairs"] > 0 for h in hist)
    assert m["prepare"]["num_pairs"] > 0
    assert m["eval"]["seen"]["classifiers"]["P@1"] >= 0
    irene = m["eval"]["arms"]["irene"]
    assert 0.0 <= irene["zero_shot"]["P@1"] <= 100.0 and 0.0 <= irene["full"]["nDCG@5"] <= 100.0


def test_irene_train_local_bundle(ray_local, tmp_path, monkeypatch):
    """`irene train DATA --bundle OUT` on a catalogue + interactions: the whole chain (2 DDP
    workers) to a local directory, given as paths relative to the driver's directory (workers
    run elsewhere), then the demo's serve + HTTP half on the result."""
    (tmp_path / "data").mkdir()
    written = write_catalogue_dir(tmp_path / "data", new_items=12)
    make_tiny_encoder(str(tmp_path / "enc"))
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(str(tmp_path / "enc"), "", "", "")
    for key in ("data", "work_dir", "bundle", "protocol"):
        del cfg[key]
    cfg_path = write_config(tmp_path / "cfg.yaml", cfg)
    data, out, work = "data", tmp_path / "bundle", tmp_path / "work"
    res = CliRunner().invoke(
        app, ["train", data, "--bundle", "bundle", "--config", cfg_path, "--work-dir", "work"]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{") :])
    assert summary["bundle"] == str(out)
    assert summary["num_trained_items"] == len(written["trained"]) == N_ITEMS - N_COLD
    assert summary["num_generated_items"] == N_COLD
    # the stage outputs are where the layout says, and the pair table is split into parts
    assert io.listdir(str(work / artifacts.PAIRS_DIR))[0].startswith("part-")
    assert (work / artifacts.CLASSIFIERS_DIR).is_dir() and (work / artifacts.GENERATOR_DIR).is_dir()
    manifest = json.loads((out / "manifest.json").read_text())
    _check_manifest(manifest)
    check_bundle_scores(str(out), n_seen=manifest["num_seen_items"])

    # the rest of `make demo`: serve the bundle (the index seeded with every catalogue item),
    # run held-out queries over HTTP (equal to the same queries ranked in-process), then
    # bulk-ingest the new items (the Ray Data job, into the running app's shard actors)
    demo_out = tmp_path / "demo"
    argv = [data, "--bundle", "bundle", "--work-dir", "work", "--out", "demo", "--ingest", "bulk"]
    assert pipelines.demo.main([*argv, "--port", str(free_port())]) == 0
    report = json.loads((demo_out / "http_metrics.json").read_text())
    assert report["seeded_items"] == N_ITEMS
    assert report["bundle_version"] == manifest["version"]
    assert report["query"]["queries"] > 0 and report["max_abs_diff"] <= 0.1
    assert report["held_out_http"]["P@1"] > 0  # the tiny data is learnable
    hit = report["examples"][0]["hits"][0]
    i = written["ids"].index(hit["id"])  # answers carry catalogue ids, text and metadata
    assert hit["text"] == written["texts"][i]
    assert hit["metadata"]["category"] == written["meta"]["category"][i]
    assert hit["source"] == ("trained" if hit["id"] in written["trained"] else "generated")
    new = report["new_items"]
    assert new["items"] == 12 and new["via"] == "bulk"
    first = written["new"][0]
    assert new["read_back"]["text"] == first["text"]
    assert new["read_back"]["metadata"] == first["metadata"]
    assert new["read_back"]["source"] == "generated"


@pytest.mark.slow  # ~1.5 min: in `make test-slow`
def test_pipeline_drivers_on_s3(ray_local, moto_s3, tmp_path):
    """The four drivers with data, work_dir, Ray storage and bundle all on the moto S3 server."""
    root = f"s3://{MOTO_BUCKET}/{uuid.uuid4().hex[:8]}"
    data, enc = write_inputs(tmp_path, data_uri=f"{root}/data")
    cfg = tiny_config(enc, data, f"{root}/work", f"{root}/bundle")
    cfg_uri = write_config(f"{root}/cfg.yaml", cfg)  # the config itself is read from S3 too
    for driver in (
        pipelines.prepare,
        pipelines.train_classifiers,
        pipelines.train_generator,
        pipelines.build_bundle,
    ):
        assert driver.main(["--config", cfg_uri]) == 0, driver.__name__
    # Ray Train checkpoints went to S3 storage (<work_dir>/ray_results)
    assert any(n.startswith("irene-classifiers-") for n in io.listdir(f"{root}/work/ray_results"))
    assert not (tmp_path / "work").exists()
    b = load_bundle(f"{root}/bundle", device="cpu")
    _check_manifest(b.manifest)
    check_bundle_scores(f"{root}/bundle", n_seen=len(b.item_ids))

"""`irene train` on a catalogue + interactions: the production bundle (nothing held out)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from irene.bundle import iter_index_items, load_bundle, read_manifest
from irene.cli import app
from irene.data.production import production_split
from tests.helpers import N_COLD, N_ITEMS, make_tiny_encoder, synthetic_xc, write_catalogue_dir

TINY = [
    "train.encoder.max_length=16",
    "train.classifiers.epochs=2",
    "train.classifiers.batch_size=64",
    "train.classifiers.mined_negatives=5",
    "train.generator.epochs=2",
    "train.generator.batch_size=16",
    "train.generator.num_heads=2",
]


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    (tmp / "data").mkdir()
    written = write_catalogue_dir(tmp / "data")
    enc = make_tiny_encoder(str(tmp / "enc"))
    args = ["train", str(tmp / "data"), "--bundle", str(tmp / "bundle"), "--executor", "local"]
    args += ["--work-dir", str(tmp / "work"), "--set", f"train.encoder.model={enc}"]
    for s in TINY:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return tmp, written, json.loads(res.output[res.output.index("{") :])


def test_every_item_is_in_the_bundle_trained_or_generated(trained_bundle):
    tmp, written, summary = trained_bundle
    n_trained = len(written["trained"])
    assert n_trained == N_ITEMS - N_COLD  # every item with interactions
    assert summary["num_items"] == N_ITEMS
    assert summary["num_trained_items"] == n_trained
    assert summary["num_generated_items"] == N_COLD
    manifest = read_manifest(str(tmp / "bundle"))
    assert manifest["version"] == summary["version"]
    assert manifest["encoder_runtime"] == "torch"  # tiny test encoders stay torch (auto)
    on = manifest["trained_on"]
    assert on["format"] == "catalogue" and on["catalogue"]["items"] == N_ITEMS
    assert len(on["catalogue"]["fingerprint"]) == 64 and on["interactions"]["rows"] > 0
    assert on["eval"]["queries"] == summary["eval_queries"] > 0
    # the trained items keep the catalogue's ids, in classifier order
    b = load_bundle(str(tmp / "bundle"), device="cpu")
    assert set(b.item_ids) == written["trained"]
    # held-out-query figures are in the manifest (full ranking over every item)
    irene = manifest["metrics"]["eval"]["arms"]["irene"]["full"]
    assert manifest["metrics"]["eval"]["setting"] == "held-out queries"
    assert 0.0 <= irene["R@10"] <= 100.0


def test_seed_items_carry_ids_records_and_the_right_vectors(trained_bundle):
    tmp, written, summary = trained_bundle
    b = load_bundle(str(tmp / "bundle"), device="cpu")
    chunks = list(iter_index_items(str(tmp / "bundle"), chunk=16))
    assert len(chunks) == 3  # 40 items in chunks of 16
    ids = [i for c in chunks for i in c[0]]
    vecs = np.concatenate([c[1] for c in chunks])
    recs = [c[2].row(j) for c in chunks for j in range(len(c[0]))]
    assert ids == written["ids"]  # every catalogue item, catalogue order
    W = b.seen_classifiers()
    row_of = {s: r for r, s in enumerate(b.item_ids)}
    cold_emb = b.encoder.encode([written["texts"][i] for i in range(N_ITEMS - N_COLD, N_ITEMS)])
    generated = b.synthesize(cold_emb)
    for i, (s, rec) in enumerate(zip(ids, recs, strict=True)):
        assert rec["text"] == written["texts"][i]
        assert rec["version"] == summary["version"]
        meta = rec["metadata"]
        assert meta["category"] == written["meta"]["category"][i]
        assert meta["price"] == written["meta"]["price"][i]
        assert meta["in_stock"] is written["meta"]["in_stock"][i]
        assert meta["tags"] == written["meta"]["tags"][i]
        if s in written["trained"]:
            assert rec["source"] == "trained"
            np.testing.assert_allclose(vecs[i], W[row_of[s]], atol=1e-6)
        else:
            assert rec["source"] == "generated"
            j = i - (N_ITEMS - N_COLD)
            np.testing.assert_allclose(vecs[i], generated[j], atol=1e-4)


def test_production_split_min_interactions():
    ds = synthetic_xc(n_labels=20, n_train=100, n_test=30, seed=1)
    counts = np.bincount(ds.trn_X_Y.indices, minlength=20)
    for m in (1, int(np.median(counts)), int(counts.max()) + 1):
        split = production_split(ds, m)
        assert set(split.seen.tolist()) == set(np.flatnonzero(counts >= m).tolist())
        assert sorted([*split.seen.tolist(), *split.novel.tolist()]) == list(range(20))
        assert split.Y_tst_full.shape == ds.tst_X_Y.shape


def test_bad_input_exits_2_and_writes_nothing(tmp_path):
    (tmp_path / "data").mkdir()
    write_catalogue_dir(tmp_path / "data", ext="jsonl")
    bad = (
        (tmp_path / "data" / "interactions.jsonl").read_text()
        + json.dumps({"query": "q", "item_id": "sku-999", "weight": 1.0})
        + "\n"
    )
    (tmp_path / "data" / "interactions.jsonl").write_text(bad)
    out = tmp_path / "bundle"
    args = ["train", str(tmp_path / "data"), "--bundle", str(out), "--executor", "local"]
    res = CliRunner().invoke(app, [*args, "--work-dir", str(tmp_path / "work")])
    assert res.exit_code == 2
    assert "interactions.jsonl" in res.output and "sku-999" in res.output
    assert not out.exists() and not (tmp_path / "work").exists()

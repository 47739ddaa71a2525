import json
import os

import numpy as np
import pytest

from irene.bundle import BundleError, load_bundle, load_encoder
from tests.helpers import make_tiny_bundle, tiny_item_text


def test_bundle_round_trip_and_scores(tmp_path):
    path = make_tiny_bundle(str(tmp_path / "b"), n_seen=12)
    b = load_bundle(path)
    assert b.item_ids[:2] == ["seen-0", "seen-1"] and len(b.item_ids) == 12
    assert b.manifest["num_seen_items"] == 12 and b.manifest["config_hash"]
    W = b.seen_classifiers()
    assert W.shape == (12, b.dim)
    q = b.encoder.encode([tiny_item_text(3)])
    assert int(np.argmax(q @ W.T)) == 3  # a seen item's own text ranks its classifier first
    u = b.synthesize(b.encoder.encode(["w150 w151 w152", "w1"]))
    assert u.shape == (2, b.dim)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-5)


def test_bundle_detects_corruption(tmp_path):
    path = make_tiny_bundle(str(tmp_path / "b"), n_seen=5)
    target = os.path.join(path, "generator", "generator.safetensors")
    with open(target, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"xyz")
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(path)
    with pytest.raises(BundleError, match="manifest"):
        load_bundle(str(tmp_path / "nothing"))


def test_bundle_rejects_unknown_format(tmp_path):
    path = make_tiny_bundle(str(tmp_path / "b"), n_seen=5)
    m = json.load(open(os.path.join(path, "manifest.json")))
    m["format_version"] = 99
    json.dump(m, open(os.path.join(path, "manifest.json"), "w"))
    with pytest.raises(BundleError, match="unsupported"):
        load_bundle(path)


def test_load_encoder_reads_only_the_encoder(tmp_path):
    path = make_tiny_bundle(str(tmp_path / "b"), n_seen=5)
    texts = [tiny_item_text(1), "w7 w9"]
    expected = load_bundle(path).encoder.encode(texts)
    # the other parts may be missing or corrupt: an encoder-only process never reads them
    os.remove(os.path.join(path, "generator", "generator.safetensors"))
    np.testing.assert_allclose(load_encoder(path).encode(texts), expected, atol=1e-6)
    with open(os.path.join(path, "encoder", "model.safetensors"), "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"xyz")
    with pytest.raises(BundleError, match="encoder/model.safetensors"):
        load_encoder(path)


def _s3_bundle_with_read_log(tmp_path, monkeypatch, name: str, n_seen: int):
    """(local bundle, its copy on moto S3, the list of S3 objects read from now on)."""
    from irene import io
    from tests.conftest import MOTO_BUCKET

    path = make_tiny_bundle(str(tmp_path / "b"), n_seen=n_seen)
    uri = f"s3://{MOTO_BUCKET}/bundles/{name}"
    io.copy_tree(path, uri)
    read: list[str] = []
    real_read = io.read_bytes

    def logged(u):
        if str(u).startswith(uri):
            read.append(str(u))
        return real_read(u)

    monkeypatch.setattr(io, "read_bytes", logged)
    monkeypatch.setattr(io, "copy_tree", None)  # no whole-tree copy
    return path, uri, read


def test_load_encoder_from_s3_copies_only_the_encoder(moto_s3, tmp_path, monkeypatch):
    path, uri, read = _s3_bundle_with_read_log(tmp_path, monkeypatch, "enc-only", 5)
    texts = [tiny_item_text(2)]
    np.testing.assert_allclose(
        load_encoder(uri).encode(texts), load_bundle(path).encoder.encode(texts), atol=1e-6
    )
    assert read[0] == f"{uri}/manifest.json"
    assert len(read) > 1 and all(u.startswith(f"{uri}/encoder/") for u in read[1:])


def test_load_seen_classifiers_reads_only_classifiers_and_ids(moto_s3, tmp_path, monkeypatch):
    from irene.bundle import load_seen_classifiers

    path, uri, read = _s3_bundle_with_read_log(tmp_path, monkeypatch, "seed-only", 6)
    ids, W = load_seen_classifiers(uri)
    b = load_bundle(path)
    assert ids == b.item_ids and np.allclose(W, b.seen_classifiers())
    wanted = (f"{uri}/manifest.json", f"{uri}/classifiers/", f"{uri}/items.json")
    assert read and all(u.startswith(wanted) for u in read)

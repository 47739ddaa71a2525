import json
import os

import numpy as np
import pytest

from irene.bundle import BundleError, load_bundle
from tests.helpers import make_tiny_bundle, tiny_item_text


def test_bundle_round_trip_and_scores(tmp_path):
    path = make_tiny_bundle(str(tmp_path / "b"), n_seen=12)
    b = load_bundle(path)
    assert b.item_ids[:2] == ["seen-0", "seen-1"] and len(b.item_ids) == 12
    assert b.manifest["num_seen_items"] == 12 and b.manifest["config_hash"]
    W = b.seen_classifiers()
    assert W.shape == (12, b.dim)
    q = b.embed([tiny_item_text(3)])
    assert int(np.argmax(q @ W.T)) == 3  # a seen item's own text ranks its classifier first
    u = b.synthesize(b.embed(["w150 w151 w152", "w1"]))
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

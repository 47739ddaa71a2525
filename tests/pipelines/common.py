"""Shared inputs for the pipeline tests: a tiny XC dataset, a tiny encoder and a config."""

from __future__ import annotations

import numpy as np
import yaml

from irene import io
from irene.data.xc import write_xc
from tests.helpers import make_tiny_encoder, synthetic_xc


def tiny_config(encoder_dir: str, data: str, work_dir: str, bundle: str, **extra) -> dict:
    """A Config dict (Ray executor) small enough for 2 CPUs (2 epochs per stage)."""
    cfg = {
        "data": data,
        "work_dir": work_dir,
        "bundle": bundle,
        "protocol": "zero-shot",  # the tiny XC data's test split: generated items to rank
        "executor": "ray",
        "ray": {
            "num_workers": 2,
            "resources_per_worker": {"CPU": 0.5},
            "encode_actors": 1,
            "encode_batch_size": 64,
            "shuffle_buffer": 64,
        },
        "train": {
            "encoder": {"model": encoder_dir, "max_length": 16, "batch_size": 64},
            "split": {"novel_fraction": 0.2, "seed": 1},
            "classifiers": {"epochs": 2, "batch_size": 64, "mined_negatives": 5},
            "generator": {"epochs": 2, "batch_size": 16, "num_heads": 2},
        },
    }
    for key, value in extra.items():
        cfg[key] = value
    return cfg


def write_inputs(tmp_path, data_uri: str | None = None) -> tuple[str, str]:
    """Write the synthetic dataset (to ``data_uri`` or tmp_path/data) and the tiny encoder."""
    data = data_uri or str(tmp_path / "data")
    write_xc(synthetic_xc(n_labels=40, n_train=300, n_test=80), data)
    enc = make_tiny_encoder(str(tmp_path / "enc"))
    return data, enc


def write_config(path, cfg: dict) -> str:
    io.write_text(str(path), yaml.safe_dump(cfg))
    return str(path)


def check_bundle_scores(uri: str, n_seen: int | None = None) -> None:
    """Load the bundle, synthesize classifiers for new items and rank them for queries."""
    from irene.bundle import load_bundle

    b = load_bundle(uri, device="cpu")
    if n_seen is not None:
        assert len(b.item_ids) == n_seen
    items = b.encoder.encode(["w1 w2 w3", "w10 w11 w12", "w5 w50 w150"])
    u = b.synthesize(items)  # (3, d)
    assert u.shape == (3, b.dim) and np.allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-4)
    q = b.encoder.encode(["w1 w2", "w11 w12 w90"])
    W = np.concatenate([b.seen_classifiers(), u])  # (S + 3, d)
    scores = q @ W.T
    top = np.argsort(-scores, axis=1)[:, :5]
    assert np.isfinite(scores).all() and top.shape == (2, 5)
    assert (top < len(b.item_ids) + 3).all()

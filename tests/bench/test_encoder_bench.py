"""Smoke run of bench/encoder_bench.py in-process (model load included, ~10 s), and the
opt-in bf16 autocast of TextEncoder.encode that the bench measures."""

from __future__ import annotations

import json
from pathlib import Path

import faiss  # noqa: F401  faiss before anything that may pull in torch
import numpy as np

from tests.bench import load_bench

ROOT = Path(__file__).resolve().parents[2]


def test_encoder_bench_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    bench = load_bench("encoder_bench")
    bench.main(["--smoke", "--out", str(tmp_path), "--data", str(ROOT / "data" / "wordnet")])
    result = json.loads((tmp_path / "encoder.json").read_text())
    assert (tmp_path / "encoder.md").read_text().startswith("# Encoder throughput")
    assert result["smoke"] and result["texts"] == 64 and result["threads"] == 2
    rows = {r["variant"]: r for r in result["rows"]}
    for name in ("bare", "ours"):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["texts_per_s"] > 0
    assert rows["ours"]["max_1_minus_cos"] < 1e-3  # TextEncoder.encode == bare transformers
    assert rows["serving"]["status"] == "ok" and rows["serving"]["max_1_minus_cos"] < 1e-3
    assert rows["bf16-autocast"]["max_1_minus_cos"] < 1e-3
    assert rows["onnxruntime"]["status"].startswith("skipped")  # not in --smoke


def test_bf16_autocast_is_opt_in(tmp_path):
    from irene.config import EncoderConfig
    from irene.model.encoder import TextEncoder
    from tests.helpers import make_tiny_encoder

    cfg = EncoderConfig(model=make_tiny_encoder(str(tmp_path / "e")), max_length=16, device="cpu")
    enc = TextEncoder.from_config(cfg)
    assert enc.bf16_autocast is False
    texts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10"]
    fp32 = enc.encode(texts)
    bf16 = TextEncoder.from_config(cfg, bf16_autocast=True).encode(texts)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(fp32 * bf16, axis=1))) > 0.99  # random tiny model: loose bar
    np.testing.assert_allclose(enc.encode(texts), fp32, atol=1e-6)  # default unchanged

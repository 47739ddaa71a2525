"""Smoke run of bench/encoder_bench.py in-process (model load and one export included,
~20 s), and the opt-in bf16 autocast spelling of TextEncoder."""

from __future__ import annotations

import json
from pathlib import Path

import faiss  # noqa: F401  faiss before anything that may pull in torch
import numpy as np

from tests.bench import load_bench

ROOT = Path(__file__).resolve().parents[2]


def test_encoder_bench_smoke(tmp_path, monkeypatch):
    from irene.model import runtime as rt

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv(rt.CACHE_ENV, str(tmp_path / "cache"))
    bench = load_bench("encoder_bench")
    bench.main(["--smoke", "--out", str(tmp_path), "--data", str(ROOT / "data" / "wordnet")])
    result = json.loads((tmp_path / "encoder.json").read_text())
    assert (tmp_path / "encoder.md").read_text().startswith("# Encoder throughput")
    assert result["smoke"] and result["texts"] == 64 and result["threads"] == 2
    rows = {r["variant"]: r for r in result["rows"]}
    for name in ("bare", "torch", "torch-bf16", "auto", "serving"):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["texts_per_s"] > 0
        assert rows[name]["mean_1_minus_cos"] < 1e-3, rows[name]
    assert rows["torch"]["max_1_minus_cos"] < 1e-5  # TextEncoder.encode == bare transformers
    assert rows["torch"]["guard"] == "reference" and rows["torch"]["eligible_for_auto"] is False
    assert rows["torch-bf16"]["guard"] == "exact: pass" and rows["torch-bf16"]["eligible_for_auto"]
    # the default resolves to a runtime of this machine, and a bundle serves with the same one
    auto = result["auto"]["runtime"]
    assert auto == rt.resolve("auto", "cpu", 10**8) == rows["auto"]["runtime"]
    assert result["auto"]["serving_runtime"] == auto
    assert rows["onnx"]["status"].startswith("skipped")  # not in --smoke
    assert rows["torch-compile"]["status"].startswith("skipped")
    assert result["fastest_eligible"]["runtime"] in rt.TIERS


def test_bf16_autocast_is_opt_in(tmp_path):
    from irene.config import EncoderConfig
    from irene.model.encoder import TextEncoder
    from tests.helpers import make_tiny_encoder

    cfg = EncoderConfig(model=make_tiny_encoder(str(tmp_path / "e")), max_length=16, device="cpu")
    enc = TextEncoder.from_config(cfg)
    assert enc.bf16_autocast is False and enc.runtime == "torch"  # tiny model: auto -> torch
    texts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10"]
    fp32 = enc.encode(texts)
    bf16_enc = TextEncoder.from_config(cfg, bf16_autocast=True)
    assert bf16_enc.runtime == "torch-bf16" and bf16_enc.bf16_autocast
    bf16 = bf16_enc.encode(texts)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(fp32 * bf16, axis=1))) > 0.99  # random tiny model: loose bar
    np.testing.assert_allclose(enc.encode(texts), fp32, atol=1e-6)  # default unchanged

"""Encoder runtimes (irene.model.runtime): resolution, export cache, save/load, and the
accuracy guard of the exact tier on real WordNet texts (the full 5,000-text guard is
bench/encoder_bench.py's)."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from irene.config import ConfigError, EncoderConfig, load_config
from irene.model import runtime as rt
from irene.model.encoder import CONFIG_FILE, TextEncoder
from tests.helpers import make_tiny_encoder

ROOT = Path(__file__).resolve().parents[2]
WORDNET = ROOT / "data" / "wordnet"
GUARD_TEXTS = 256
EXPORTED = [r for r in ("onnx", "openvino", "openvino-bf16") if rt.installed(r)]


@pytest.fixture(autouse=True)
def export_cache(tmp_path_factory, monkeypatch):
    """One export cache for this module's tests (exports are made once, not in ~/.cache)."""
    monkeypatch.setenv(rt.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "runtime-cache"))


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_encoder(str(tmp_path_factory.mktemp("enc")))


def tiny(path: str, runtime: str = "auto") -> TextEncoder:
    return TextEncoder.from_config(
        EncoderConfig(model=path, max_length=16, batch_size=4, device="cpu", runtime=runtime)
    )


TEXTS = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10", "w1 w2 w3", "w7 w8"]


def test_resolve_rules(monkeypatch):
    big = 20_000_000
    assert rt.resolve("auto", "cuda", big) == "torch"  # CUDA keeps torch
    assert rt.resolve("openvino-bf16", "cuda:0", big) == "torch"
    assert rt.resolve("auto", "cpu", 10_000) == "torch"  # tiny models: no export
    monkeypatch.setattr(rt, "installed", lambda r: True)
    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert rt.resolve("auto", "cpu", big) == "openvino-bf16"
    assert rt.resolve("auto", "cpu", big, exclude=frozenset({"openvino-bf16"})) == "torch-bf16"
    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset({"avx2"}))  # no native bf16
    assert rt.resolve("auto", "cpu", big) == "openvino"
    assert rt.resolve("torch-bf16", "cpu", big) == "torch-bf16"  # a named one is honoured
    # packages missing: exact runtimes fall back within the tier, int8 is an error
    monkeypatch.setattr(rt, "installed", lambda r: r.startswith("torch"))
    assert rt.resolve("auto", "cpu", big) == "torch"
    assert rt.resolve("openvino", "cpu", big) == "torch"
    with pytest.raises(RuntimeError, match="not interchangeable"):
        rt.resolve("onnx-int8", "cpu", big)
    # only exact runtimes are ever auto's pick
    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert all(rt.TIERS[r] != "quantised" for r in rt.auto_order())


def test_runtime_is_a_validated_config_key(tmp_path):
    assert EncoderConfig().runtime == "auto"
    with pytest.raises(ConfigError, match="encoder.runtime"):
        EncoderConfig(runtime="tensorrt")
    cfg = load_config(None, ["train.encoder.runtime=openvino"])
    assert cfg.train.encoder.runtime == "openvino"
    with pytest.raises(ConfigError):
        load_config(None, ["train.encoder.runtime=fast"])


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino installed")
@pytest.mark.parametrize("runtime", EXPORTED)
def test_exported_runtime_matches_torch_and_is_cached(tiny_path, runtime, monkeypatch):
    ref = tiny(tiny_path, "torch").encode(TEXTS)
    enc = tiny(tiny_path, runtime)
    assert enc.runtime == runtime
    emb = enc.encode(TEXTS, batch_size=2)
    assert emb.dtype == np.float32 and emb.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    tol = 1e-2 if runtime.endswith("bf16") else 1e-4  # random tiny model: bf16's loose bar
    assert float(np.max(1 - np.sum(emb * ref, axis=1))) < tol
    # another encoder (another process: a Ray actor, a Serve replica) loads the cached export
    monkeypatch.setattr(rt, "_export", lambda *a: pytest.fail("exported twice"))
    again = tiny(tiny_path, runtime)
    np.testing.assert_allclose(again.encode(TEXTS), emb, atol=1e-6)
    # pickles without its compiled session, rebuilt on the next encode
    np.testing.assert_allclose(pickle.loads(pickle.dumps(again)).encode(TEXTS), emb, atol=1e-6)


@pytest.mark.skipif(not rt.installed("openvino"), reason="openvino not installed")
def test_changed_weights_are_exported_again(tiny_path):
    enc = tiny(tiny_path, "openvino")
    before = enc.encode(TEXTS)
    exports = set(os.listdir(rt.cache_root()))
    with torch.no_grad():  # an optimizer step / load_state_dict: in-place updates
        enc.model.embeddings.word_embeddings.weight.mul_(1.5).add_(0.1)
    after = enc.encode(TEXTS)
    assert not np.allclose(before, after, atol=1e-3)
    ref = TextEncoder(dataclasses.replace(enc.cfg, runtime="torch"), enc.model, enc.tokenizer)
    np.testing.assert_allclose(after, ref.eval().encode(TEXTS), atol=1e-4)
    assert len(set(os.listdir(rt.cache_root())) - exports) == 1  # one export per weights hash


def test_save_load_carries_the_resolved_runtime(tiny_path, tmp_path):
    enc = tiny(tiny_path)  # auto on a tiny model: torch
    enc.save(str(tmp_path / "a"))
    assert json.loads((tmp_path / "a" / CONFIG_FILE).read_text())["runtime"] == "torch"
    assert TextEncoder.load(str(tmp_path / "a"), device="cpu").runtime == "torch"
    named = tiny(tiny_path, "torch-bf16")
    named.save(str(tmp_path / "b"))
    loaded = TextEncoder.load(str(tmp_path / "b"), device="cpu")
    assert loaded.cfg.runtime == loaded.runtime == "torch-bf16"
    assert TextEncoder.load(str(tmp_path / "b"), device="cpu", runtime="torch").runtime == "torch"
    # an encoder saved before runtimes existed loads with the default
    cfg = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    del cfg["runtime"]
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps(cfg))
    assert TextEncoder.load(str(tmp_path / "a"), device="cpu").cfg.runtime == "auto"


def test_auto_falls_back_when_an_export_fails(tiny_path, monkeypatch):
    monkeypatch.setattr(rt, "AUTO_MIN_PARAMS", 0)  # let the tiny model use auto's pick
    monkeypatch.setattr(rt, "auto_order", lambda: ["openvino", "torch"])
    monkeypatch.setattr(rt, "installed", lambda r: True)

    def broken(*a, **k):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(rt, "export_backend", broken)
    enc = tiny(tiny_path)
    assert enc.runtime == "openvino"
    np.testing.assert_allclose(enc.encode(TEXTS), tiny(tiny_path, "torch").encode(TEXTS), atol=1e-6)
    assert enc.runtime == "torch"
    with pytest.raises(RuntimeError, match="unsupported op"):  # a named runtime: an error
        tiny(tiny_path, "openvino").encode(TEXTS)


# ----------------------------------------------------------------------------- the guard
def real_texts(n: int) -> list[str]:
    """Real texts: WordNet train queries + label texts (``make data``), else synset texts."""
    if (WORDNET / "Y.txt").exists() and (WORDNET / "trn_X.txt").exists():
        rng = np.random.default_rng(0)
        with open(WORDNET / "trn_X.txt") as f:
            trn = [x.rstrip("\n") for x in f]
        with open(WORDNET / "Y.txt") as f:
            y = [x.rstrip("\n") for x in f]
        q = [trn[i] for i in rng.permutation(len(trn))[: n - n // 5]]
        return q + [y[i] for i in rng.permutation(len(y))[: n // 5]]
    from irene.data.wordnet import parse_data_noun

    syn = list(parse_data_noun("/usr/share/wordnet/data.noun").values())
    return [s.text for s in syn[:: max(1, len(syn) // n)]][:n]


@pytest.fixture(scope="module")
def minilm():
    enc = TextEncoder.from_config(EncoderConfig(device="cpu", runtime="torch")).eval()
    texts = real_texts(GUARD_TEXTS)
    return enc, texts, enc.encode(texts)


@pytest.mark.parametrize("runtime", [r for r in rt.TIERS if rt.TIERS[r] == "exact"])
def test_exact_tier_guard_on_real_texts(minilm, runtime):
    """Every exact runtime (auto's candidates) within mean 1 - cos 1e-3 of torch fp32."""
    # `make venv` installs the cpu-runtimes extra: a missing package is a broken install
    assert rt.installed(runtime), f"{rt.PACKAGES[runtime]} not installed"
    base, texts, ref = minilm
    enc = TextEncoder(
        EncoderConfig(device="cpu", runtime=runtime), base.model, base.tokenizer
    ).eval()
    assert enc.runtime == runtime
    one_minus_cos = 1.0 - np.sum(enc.encode(texts) * ref, axis=1)
    assert float(np.mean(one_minus_cos)) <= rt.EXACT_BAR, runtime
    assert float(np.max(one_minus_cos)) <= 10 * rt.EXACT_BAR, runtime


def test_auto_picks_an_exact_runtime_for_the_real_model(minilm):
    base, _, _ = minilm
    enc = TextEncoder(EncoderConfig(device="cpu"), base.model, base.tokenizer)
    assert enc.runtime in rt.auto_order() and rt.TIERS[enc.runtime] in ("exact", "reference")
    if rt.cpu_has_bf16():  # this machine's CPUs: a bf16 runtime
        assert enc.runtime.endswith("bf16")

"""Smoke runs of bench/shard_bench.py and bench/ingest_bench.py (tiny sizes, real code paths)."""

from __future__ import annotations

import json
from pathlib import Path

import faiss  # noqa: F401 -- faiss before anything that may pull in torch
import pytest

from tests.bench import load_bench


def test_shard_bench_smoke(tmp_path, monkeypatch):
    shard_bench = load_bench("shard_bench")

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    rep = shard_bench.main(
        ["--n", "1500", "--dim", "32", "--queries", "64", "--kinds", "flat",
         "--add-batch", "500", "--budget-s", "0.2", "--out", str(tmp_path)]
    )  # fmt: skip
    systems = [(r["kind"], r["system"]) for r in rep["rows"]]
    assert systems == [("flat", s) for s in ("direct", "1 actor", "4 actors")]
    assert all(r["qps_b1"] > 0 and r["qps_b64"] > 0 and r["add_per_s"] > 0 for r in rep["rows"])
    assert json.loads((tmp_path / "shards.json").read_text())["n"] == 1500
    assert "4 actors" in (tmp_path / "shards.md").read_text()


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").exists(), reason="needs wordnet-base")
def test_ingest_bench_smoke(tmp_path):
    ingest_bench = load_bench("ingest_bench")
    from tests.helpers import make_tiny_bundle

    bundle = make_tiny_bundle(str(tmp_path / "bundle"), n_seen=20)
    rep = ingest_bench.main(
        ["--bundle", bundle, "--items", "40", "--batch-size", "16", "--owners", "2",
         "--runs", "local", "--out", str(tmp_path), "--no-progress"]
    )  # fmt: skip
    assert rep["encode_only"]["items_per_s"] > 0
    assert rep["local"]["written"] == rep["local"]["index_count"] == 40
    assert set(rep["local"]["stage_share"]) == {"skip", "encode", "generate", "write"}
    assert "ratio to encode-only" in (tmp_path / "ingest-40.md").read_text()

"""Smoke run of bench/index_bench.py in-process (seconds): every kind and mode reports sane numbers."""

from __future__ import annotations

import json

import faiss  # noqa: F401  faiss before anything that may pull in torch

from tests.bench import load_bench


def test_index_bench_smoke(tmp_path):
    bench = load_bench("index_bench")
    out = tmp_path / "index"
    bench.main(["--smoke", "--out", str(out), "--no-progress", "--rerank", "10"])
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".md").read_text().startswith("# Index benchmark")
    assert out.with_suffix(".png").stat().st_size > 0

    rows = result["rows"]
    assert {r["kind"] for r in rows} == set(bench.KINDS)
    assert {(r["kind"], r["mode"]) for r in rows} == {
        (k, m) for k in bench.KINDS for m in bench.MODES
    }
    for r in rows:
        assert 0.0 <= r["recall_at_10"] <= 1.0, r
        assert r["qps_b1"] > 0 and r["qps_batched"] > 0, r
        assert r["mem_bytes_per_vector"] > 0, r
        assert r["build_s"] > 0 and r["add_vps"] > 0, r
        if r["kind"] in ("ivf", "ivfpq"):
            assert r["trained"] is True, r  # the smoke sizes leave the flat fallback
    by = {(r["kind"], r["mode"]): r for r in rows}
    for mode in bench.MODES:
        assert by["flat", mode]["recall_at_10"] == 1.0
        assert by["ivfpq", mode]["mem_bytes_per_vector"] < by["flat", mode]["mem_bytes_per_vector"]
    assert by["flat", "raw"]["speedup_b1"] == 1.0
    for kind in bench.KINDS:  # the id maps outside FAISS (their size per item at scale:
        # tests/index/test_sharded.py; at the smoke size the recent-id dicts dominate)
        assert by[kind, "raw"]["id_bytes_per_vector"] == 0
        assert (
            by[kind, "shard"]["id_bytes_per_vector"] < by[kind, "sharded4"]["id_bytes_per_vector"]
        )
    assert by["ivfpq", "shard"]["params"]["rerank"] == 10
    kinds_swept = {s["kind"] for s in result["sweeps"]}
    assert kinds_swept == {"hnsw", "ivf", "ivfpq"}

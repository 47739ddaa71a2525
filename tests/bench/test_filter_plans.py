"""Smoke run of bench/filter_plans.py in-process (seconds): both plans per selectivity, and on
a flat shard (whose selector search is exact) the two plans agree."""

from __future__ import annotations

import json

import faiss  # noqa: F401  faiss before anything that may pull in torch

from tests.bench import load_bench


def test_filter_plans_smoke(tmp_path):
    bench = load_bench("filter_plans")
    out = tmp_path / "plans"
    argv = ["--n", "3000", "--dim", "16", "--kinds", "flat,ivf", "--queries", "4"]
    bench.main([*argv, "--fractions", "0.01,0.3", "--out", str(out)])
    result = json.loads((out / "filter_plans.json").read_text())
    assert (out / "filter_plans.md").read_text().startswith("# Filtered search plans")
    rows = [r for r in result["rows"] if r["fraction"] < 1]
    assert {(r["kind"], r["fraction"]) for r in rows} == {
        (k, f) for k in ("flat", "ivf") for f in (0.01, 0.3)
    }
    for r in rows:
        assert r["exact_p50_ms"] > 0 and r["selector_p50_ms"] > 0, r
        assert r["picked"] in ("exact", "selector"), r
        assert r["n_match"] == round(3000 * r["fraction"]), r
        if r["kind"] == "flat":  # an exhaustive search with a selector is exact too
            assert r["selector_recall"] == 1.0, r

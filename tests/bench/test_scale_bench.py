"""Smoke run of bench/scale_bench.py (tiny sizes, 2 shard actors): every step reports."""

from __future__ import annotations

import json

import pytest

from tests.bench import load_bench


@pytest.mark.slow  # ~2 min: shard actors started twice, a MiniLM bundle built, a Serve app
def test_scale_bench_smoke(tmp_path):
    bench = load_bench("scale_bench")
    argv = ["--sizes", "20000", "--owners", "2", "--nlist", "16", "--pq-m", "48",
            "--queries", "40", "--clients", "2", "--budget-s", "1", "--add-batch", "5000",
            "--app", "--out", str(tmp_path)]  # fmt: skip
    bench.main(argv)
    report = json.loads((tmp_path / "scale.json").read_text())
    (row,) = report["rows"]
    assert row["build"]["items_per_s"] > 0 and row["build"]["log_bytes"] > 0
    for mem in (row["memory"], row["restart"]["memory"]):
        assert mem["per_item"]["fp16"] >= 2 * 384 and 0 < mem["per_item"]["id_maps"] < 100
    assert row["restart"]["memory"]["per_item"]["id_maps"] <= 64  # restored: exact arrays
    assert row["restart"]["count"] == 20000
    assert row["restart"]["test_recall"] == row["recall"]["test_recall"] > 0.5
    assert [lat["clients"] for lat in row["latency"]] == [1, 2]
    app = row["app"]  # through the Serve app over HTTP, over the restarted actors
    assert app["first_error"] is None and [lv["clients"] for lv in app["levels"]] == [1, 2]
    assert all(lv["n"] > 0 and lv["errors"] == 0 for lv in app["levels"])
    assert "| recall@10 (test) |" in (tmp_path / "scale.md").read_text()

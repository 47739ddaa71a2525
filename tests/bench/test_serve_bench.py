"""Smoke run of bench/serve_bench.py --smoke (a subprocess: it starts Ray, a uvicorn service
and Ray Serve): every system reports sane numbers at every concurrency level.

Marked slow: ~60-80 s on 2 shared cores (Ray + Serve start-up ~20 s, the tiny bundle, three
systems' warm-ups and 1 s phases); run with ``make test-slow`` or ``pytest -m slow``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench import load_bench

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "serve_bench.py"


@pytest.mark.slow
def test_serve_bench_smoke(tmp_path):
    out = tmp_path / "serve"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)  # its own local Ray instance
    r = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--out", str(out)],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    conc = json.loads((out / "serve_concurrency.json").read_text())
    assert (out / "serve_concurrency.md").read_text().startswith("# Serving throughput")
    assert (out / "serve_concurrency.png").stat().st_size > 0
    assert list(out.glob("serve_bench-*.json"))  # the full report is still written

    levels = conc["levels"]
    assert levels == [1, 4]
    systems = conc["systems"]
    serve = [s for s in systems if s.startswith("serve:")]
    assert {"inprocess", "plain"} <= set(systems) and len(serve) == 1, systems
    for name, row in systems.items():  # each level, and 1 client again after the highest
        assert set(row) == {str(c) for c in levels} | {"1 after 4"}, (name, row)
        for c, m in row.items():
            assert m["qps"] > 0 and m["errors"] == 0, (name, c, m)
            assert 0 < m["p50_ms"] <= m["p99_ms"], (name, c, m)
    for c in [*levels, "1 after"]:
        ratios = conc["ratios"][serve[0]][str(c) if c != "1 after" else "1 after 4"]
        assert ratios["qps_vs_plain"] > 0 and ratios["qps_vs_inprocess"] > 0, ratios
        assert ratios["p50_vs_inprocess"] > 0, ratios


def test_query_phases_measure_a_lone_client_before_the_load_and_after_it():
    sb = load_bench("serve_bench")
    args = argparse.Namespace(
        concurrency=[1, 16, 32], duration_level_s=8.0, warmup_s=20.0, level_warmup_s=2.0
    )
    assert sb.query_phases(args) == [
        (None, 1, 20.0),
        ("c1", 1, 8.0),
        (None, 32, 20.0),
        (None, 1, 2.0),
        (sb.AFTER, 1, 8.0),
        (None, 16, 2.0),
        ("c16", 16, 8.0),
        (None, 32, 2.0),
        ("c32", 32, 8.0),
    ]
    args.concurrency = [16]  # no lone-client level: no second one either
    assert sb.query_phases(args) == [(None, 16, 20.0), (None, 16, 2.0), ("c16", 16, 8.0)]

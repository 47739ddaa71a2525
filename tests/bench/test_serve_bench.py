"""Smoke run of bench/serve_bench.py --smoke (a subprocess: it starts Ray, a uvicorn service
and Ray Serve): every system reports sane numbers at every concurrency level.

Marked slow: ~60-80 s on 2 shared cores (Ray + Serve start-up ~20 s, the tiny bundle, three
systems' warm-ups and 1 s phases); run with ``make test-slow`` or ``pytest -m slow``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    for name, row in systems.items():
        assert set(row) == {str(c) for c in levels}, (name, row)
        for c, m in row.items():
            assert m["qps"] > 0 and m["errors"] == 0, (name, c, m)
            assert 0 < m["p50_ms"] <= m["p99_ms"], (name, c, m)
    for c in levels:
        ratios = conc["ratios"][serve[0]][str(c)]
        assert ratios["qps_vs_plain"] > 0 and ratios["qps_vs_inprocess"] > 0, ratios

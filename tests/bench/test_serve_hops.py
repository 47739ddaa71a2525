"""bench/serve_hops.py's arithmetic on made-up rounds: the hops add up to the latency through
HAProxy, stage means come from differences of Prometheus sums, the report names every hop.
(Its Serve run itself is what `python bench/serve_hops.py` measures; it needs Ray Serve.)"""

from __future__ import annotations

import pytest

from tests.bench import load_bench


def _wrk(mean: float, p50: float) -> dict:
    return {"mean_ms": mean, "p50_ms": p50}


def test_hops_add_up_to_the_proxied_query():
    hops = load_bench("serve_hops")
    before = {s: (1.0, 10.0) for s in hops.STAGES}
    after = {
        "encode_search": (1.0 + 0.0060 * 100, 110.0),  # 6.0 ms each over 100 queries
        "batch_encode": (1.0 + 0.0045 * 100, 110.0),
        "copies_search": (1.0 + 0.0005 * 100, 110.0),
        "batch_lookup": (1.0, 10.0),  # not observed in between
    }
    stages = hops.stage_means_ms(before, after)
    assert stages["encode_search"] == pytest.approx(6.0)
    assert stages["batch_encode"] == pytest.approx(4.5)
    assert stages["batch_lookup"] is None
    row = {
        "round": 0,
        "stages_ms": stages,
        "replica_query": _wrk(6.8, 6.5),
        "proxy_query": _wrk(7.1, 6.9),
        "replica_healthz": _wrk(0.4, 0.35),
        "proxy_healthz": _wrk(0.5, 0.45),
    }
    parts = hops.breakdown([row])
    assert parts["compute (encode, search, lookup)"] == [pytest.approx(5.0)]
    assert parts["batcher (+ thread hop when batched)"] == [pytest.approx(1.0)]
    assert parts["replica HTTP stack"] == [pytest.approx(0.8)]
    assert parts["HAProxy"] == [pytest.approx(0.3)]
    total = sum(v[0] for k, v in parts.items() if k != "total (HAProxy query)")
    assert total == pytest.approx(parts["total (HAProxy query)"][0]) == pytest.approx(7.1)

    result = {
        "command": "python bench/serve_hops.py",
        "config": {"seconds": 6.0},
        "wall_s": 1.0,
        "inprocess": {"encode": _wrk(4.0, 3.9), "pipeline": _wrk(4.6, 4.6)},
        "rounds": [row],
        "breakdown": parts,
    }
    md = hops.markdown(result)
    assert md.startswith("# Serve: latency per hop")
    for hop in parts:
        assert f"| {hop} |" in md
    assert "1.50 (1.50-1.50)" in md  # p50 through HAProxy 6.9 / in-process 4.6

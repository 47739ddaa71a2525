"""Prometheus metrics of one Ingress replica (own registry, text exposition format).

Each replica is a separate process with its own ``CollectorRegistry``; a scrape of
``/metrics`` reaches one replica, so scrape every replica (or use Ray's own metrics export)
to see the whole app. Route labels are route *templates* (``/v1/items/{item_id:path}``), so
the label set stays small whatever ids are used.
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RATE_WINDOW_S = 60.0


class ReplicaMetrics:
    """Request counts/latencies per route and status, stage latencies, index size, ingest rate."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "irene_http_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "irene_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "irene_stage_duration_seconds",
            "Latency of one pipeline stage (per request: encode, generate, index_add, encode_search; "
            "per micro-batch: batch_encode, batch_replica_search (answered by this replica's "
            "copy of the index), batch_index_search (answered by the index actor))",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ingested = Counter(
            "irene_items_ingested", "Items acknowledged by POST /v1/items", registry=r
        )
        self.queries = Counter("irene_query_texts", "Query texts answered", registry=r)
        self.index_size = Gauge("irene_index_items", "Items in the index", registry=r)
        self.ingest_rate = Gauge(
            "irene_ingest_rate_items_per_second",
            f"Items acknowledged per second over the last {RATE_WINDOW_S:.0f}s (this replica)",
            registry=r,
        )
        self.in_flight_gauge = Gauge(
            "irene_http_requests_in_flight", "HTTP requests being answered", registry=r
        )
        self.in_flight = 0  # kept by MetricsMiddleware; the gauge is set when scraped
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic time, items)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def observe_ingest(self, n: int) -> None:
        self.ingested.inc(n)
        self._recent.append((time.monotonic(), n))

    def _rate(self) -> float:
        now = time.monotonic()
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def render(self, index_count: int | None) -> bytes:
        if index_count is not None:
            self.index_size.set(index_count)
        self.ingest_rate.set(self._rate())
        self.in_flight_gauge.set(self.in_flight)
        return generate_latest(self.registry)

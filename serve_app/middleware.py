"""Pure-ASGI middleware of the Ingress: request metrics and a request-body size limit.

Both take a zero-argument callable that returns the replica's current object (metrics or
limits), because the FastAPI app is built before the replica that owns them exists.
"""

from __future__ import annotations

import json
import time


class MetricsMiddleware:
    """Times every HTTP request into ``get_metrics()`` (a ``ReplicaMetrics`` or None) and
    keeps its count of requests in flight."""

    def __init__(self, app, get_metrics) -> None:
        self.app = app
        self.get_metrics = get_metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()
        metrics = self.get_metrics()
        if metrics is not None:
            metrics.in_flight += 1

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if metrics is not None:
                metrics.in_flight -= 1
                route = scope.get("route")
                label = getattr(route, "path", None) or "unmatched"
                metrics.observe_request(
                    label, scope.get("method", ""), status, time.perf_counter() - t0
                )


class _BodyTooLarge(BaseException):
    """Not an ``Exception``: FastAPI's body parsing would turn one into a 400."""


class BodyLimitMiddleware:
    """Answers 413 to a body over ``get_limit()`` bytes (by Content-Length or as streamed)."""

    def __init__(self, app, get_limit) -> None:
        self.app = app
        self.get_limit = get_limit

    async def __call__(self, scope, receive, send) -> None:
        limit = self.get_limit() if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_413(send, limit)
                return
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await _send_413(send, limit)


async def _send_413(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than max_body_bytes={limit}"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

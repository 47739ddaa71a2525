"""serve_app.encoding.BatchedEncoder: the first (slow) inference happens while the replica
starts, in its compute thread, not in the first request."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

import irene.bundle
from serve_app import encoding


class _StubEncoder:
    dim = 4

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append((threading.current_thread().name, list(texts)))
        return np.ones((len(texts), self.dim), np.float32) / 2


def test_batched_encoder_warms_up_in_its_compute_thread(monkeypatch):
    stub = _StubEncoder()
    monkeypatch.setattr(irene.bundle, "load_encoder", lambda bundle, device: stub)
    enc = encoding.BatchedEncoder("any-bundle", max_batch=8, threads=1)
    try:
        assert len(stub.calls) == 1
        thread, texts = stub.calls[0]
        assert thread.startswith("irene-compute") and texts == [encoding.WARM_UP_TEXT]

        out = asyncio.run(enc.encode(["a", "b"]))  # requests reach the same encoder after it
        assert out.shape == (2, 4) and stub.calls[1][1] == ["a", "b"]
    finally:
        enc.pool.shutdown()

"""Local networking helpers (benchmarks, tests and local demos bind servers on 127.0.0.1)."""

from __future__ import annotations

import random
import socket

# Above Ray's default worker ports (10002-19999), below Linux's default ephemeral range
# (32768-60999): a port from the ephemeral range can be taken by an outgoing connection between
# the check and the server's bind (seen once: HAProxy failed to start with EADDRINUSE).
PORT_RANGE = (20000, 29900)


def free_local_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` now, outside the kernel's ephemeral range."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE} on {host}")

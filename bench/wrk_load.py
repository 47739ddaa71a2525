"""Closed-loop HTTP load from ``wrk`` (C, Debian package ``wrk``): ``connections`` keep-alive
connections, each with one request in flight, sending JSON bodies in turn (POST by default).

The serving benchmark's load generator. A Python client (``httpx.AsyncClient``) costs ~3 ms of
CPU per request and so takes a whole core of this 2-core machine at 300 QPS, away from the
service it measures (README: Serving speed); wrk costs a few tens of microseconds.

    from wrk_load import run_wrk
    run_wrk("http://127.0.0.1:8000", "/v1/query", bodies, connections=16, duration_s=8)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile

_MARK = "WRKJSON "

# wrk's Lua hooks: rotate the bodies (each connection's thread keeps its own counter) and
# print one JSON line of totals at the end (latencies in microseconds)
_LUA = """
local bodies = {%(bodies)s}
local headers = {["Content-Type"] = "application/json"}
local i = 0
request = function()
  i = i + 1
  return wrk.format(%(method)s, %(path)s, headers, bodies[(i %% #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests": %%d, "duration_us": %%d, "status_errors": %%d, "connect_errors": %%d, '
    .. '"read_errors": %%d, "write_errors": %%d, "timeouts": %%d, "p50_us": %%d, '
    .. '"p99_us": %%d, "mean_us": %%.1f}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(s: str) -> str:
    level = 0
    while f"]{'=' * level}]" in s:
        level += 1
    eq = "=" * level
    return f"[{eq}[{s}]{eq}]"


def lua_script(path: str, bodies: list[str], method: str = "POST") -> str:
    """The Lua of a run sending ``bodies`` (JSON strings) to ``path`` in turn."""
    if not bodies:
        raise ValueError("bodies must not be empty")
    return _LUA % {
        "bodies": ", ".join(_lua_string(b) for b in bodies),
        "path": _lua_string(path),
        "method": _lua_string(method),
        "mark": _MARK,
    }


def run_wrk(
    base_url: str,
    path: str,
    bodies: list[str],
    connections: int,
    duration_s: float,
    timeout_s: float = 60.0,
    method: str = "POST",
) -> dict:
    """One wrk run (``method`` requests, each with the next of ``bodies``): ``{"n", "errors", "wall_s", "qps", "p50_ms", "p99_ms", "mean_ms",
    "client_cpu_s"}`` (``n``: 2xx answers; ``errors``: other answers, socket errors and
    timeouts; ``qps`` = n / wall_s; latencies over every completed request, from wrk's
    histogram; ``client_cpu_s``: wrk's own user + system CPU)."""
    if not available():
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk; `make sysdeps`)")
    seconds = max(1, round(duration_s))  # wrk takes whole seconds
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = os.path.join(tmp, "load.lua")
        with open(script, "w") as f:
            f.write(lua_script(path, bodies, method))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cmd = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            script,
            base_url.rstrip("/") + path,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(_MARK)]
    if r.returncode != 0 or not lines:
        raise RuntimeError(
            f"wrk failed (exit {r.returncode}): {r.stdout[-2000:]}{r.stderr[-2000:]}"
        )
    w = json.loads(lines[-1][len(_MARK) :])
    errors = (
        w["status_errors"]
        + w["connect_errors"]
        + w["read_errors"]
        + w["write_errors"]
        + w["timeouts"]
    )
    ok = w["requests"] - w["status_errors"]
    wall = w["duration_us"] / 1e6
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"n": ok, "errors": errors, "wall_s": round(wall, 3), "client_cpu_s": round(cpu, 3)}
    if ok:
        out.update(
            qps=round(ok / wall, 1),
            p50_ms=round(w["p50_us"] / 1000, 2),
            p99_ms=round(w["p99_us"] / 1000, 2),
            mean_ms=round(w["mean_us"] / 1000, 2),
        )
    return out

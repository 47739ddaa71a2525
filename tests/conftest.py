"""Session-scoped fixtures: a real moto S3 server and a local Ray instance."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

MOTO_BUCKET = "irene-test"  # created by the moto_s3 fixture


def free_port() -> int:
    from irene.net import free_local_port

    return free_local_port()


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"moto_server did not listen on port {port} within {timeout_s}s")


def _set_env(values: dict[str, str]) -> dict[str, str | None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return old


def _restore_env(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def moto_s3():
    """A real moto S3 server subprocess; yields its endpoint URL.

    Sets AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY=testing, AWS_DEFAULT_REGION=us-east-1 and
    IRENE_S3_ENDPOINT for the session and creates the bucket ``MOTO_BUCKET`` ("irene-test").
    """
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        pytest.fail(f"moto_server not found next to {sys.executable}; install moto[server]")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(exe), "-p", str(port), "-H", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    old = _set_env(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "IRENE_S3_ENDPOINT": endpoint,
        }
    )
    try:
        _wait_for_port(port, proc)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=MOTO_BUCKET
        )
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        _restore_env(old)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance (2 CPUs, no dashboard, auth disabled, own short temp dir)."""
    import ray

    tmp = f"/tmp/ray_t_{os.getpid()}"
    old = _set_env({"RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": tmp})
    os.makedirs(tmp, exist_ok=True)
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            namespace="irene-tests",
            _temp_dir=tmp,
            log_to_driver=False,
        )
        yield ray
    finally:
        ray.shutdown()
        _restore_env(old)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def moto_endpoint():
    """A module-scoped moto S3 server (a real HTTP server on 127.0.0.1, in a thread); the test
    sets its own credentials/endpoint env and creates its buckets."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def worker_crash(monkeypatch):
    """Fault injection for Ray Train runs started by this test (``tests/faults.py``):
    ``worker_crash.arm(rank, epoch, marker)`` makes that rank exit hard right after it reported
    that epoch, once; ``worker_crash.disarm()`` (or the test's end) restores the real worker."""
    from tests.faults import WorkerCrash

    return WorkerCrash(monkeypatch)

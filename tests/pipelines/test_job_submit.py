"""`ray job submit` of a pipeline stage to a head started in the test (127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.pipelines.common import tiny_config, write_config, write_inputs

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def ray_head():
    """`ray start --head --block` in its own process group; yields the dashboard address.

    Own ports and temp dir, so it coexists with an in-process Ray of the session. Teardown
    signals only this process group (not `ray stop`, which would stop every Ray on the host).
    """
    gcs, dash, client, agent, agent_grpc, rt_env, metrics = _free_ports(7)
    temp_dir = f"/tmp/rh_{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_TMPDIR=temp_dir,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    cmd = [
        str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(rt_env),
        "--metrics-export-port", str(metrics), "--num-cpus", "2", "--temp-dir", temp_dir,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    try:
        yield address, env, _wait_for_dashboard(address, proc)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)  # a graceful stop takes ~30 s; nothing of it is needed here
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(address: str, proc: subprocess.Popen, timeout_s: float = 120.0):
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with code {proc.returncode}")
        try:
            return JobSubmissionClient(address)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def test_ray_job_submit_prepare(ray_head, tmp_path):
    from ray.job_submission import JobStatus

    address, env, client = ray_head
    data, enc = write_inputs(tmp_path)
    work = tmp_path / "work"
    cfg_path = write_config(tmp_path / "cfg.yaml", tiny_config(enc, data, str(work), ""))
    job_id = f"irene-prepare-{uuid.uuid4().hex[:8]}"
    cmd = [
        str(RAY), "job", "submit", "--address", address, "--submission-id", job_id,
        "--working-dir", ".", "--", "python", "-m", "pipelines.prepare", "--config", cfg_path,
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    logs = client.get_job_logs(job_id)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + logs[-3000:]
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED
    assert "stage prepare finished" in logs
    assert (work / "prepare.json").exists() and any((work / "pairs").iterdir())
    assert any((work / "item_queries").iterdir())

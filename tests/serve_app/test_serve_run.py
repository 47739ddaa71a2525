"""The README's `serve run serve_app/configs/local.yaml` command, as a user runs it.

`serve run` in a subprocess (its own local Ray) on a copy of local.yaml that only changes the
port, the bundle (a tiny one), the index location/name and the token source; once with
Serve's defaults and once in the throughput-optimized mode with HAProxy in front of the Ingress
replicas (the fastest setting of bench/serve_bench.py). Each: ready, ingest, query, SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.helpers import make_tiny_bundle, tiny_item_text

ROOT = Path(__file__).resolve().parents[2]
LOCAL_YAML = ROOT / "serve_app" / "configs" / "local.yaml"
TOKEN = "serve-run-token-0123456789"
MODES = {
    "defaults": {},
    "haproxy": {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    },
}


# the HAProxy mode is new in Ray Serve: kept out of the default suite (`make test-slow` runs it)
@pytest.mark.parametrize("mode", ["defaults", pytest.param("haproxy", marks=pytest.mark.slow)])
def test_serve_run_local_yaml(tmp_path, mode):
    cfg = yaml.safe_load(LOCAL_YAML.read_text())
    port = free_port()
    cfg["http_options"]["port"] = port
    (app,) = cfg["applications"]
    app["args"]["bundle"] = make_tiny_bundle(str(tmp_path / "bundle"), n_seen=20)
    app["args"]["index"]["uri"] = str(tmp_path / "index")
    app["args"]["index"]["name"] = f"serve-run-{uuid.uuid4().hex[:8]}"
    app["args"]["auth"]["token_env"] = "IRENE_SERVE_RUN_TOKEN"
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))
    ray_tmp = f"/tmp/ray_sr_{os.getpid()}"
    hap = tempfile.mkdtemp(prefix="hap-", dir="/tmp")  # HAProxy's socket paths: <= 97 chars
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": ray_tmp,
        "IRENE_SERVE_RUN_TOKEN": TOKEN,
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{hap}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{hap}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": hap,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{hap}/server-state",
        **MODES[mode],
    }
    env.pop("IRENE_BUNDLE", None)
    serve_cli = Path(sys.executable).with_name("serve")
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [str(serve_cli), "run", str(config)], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            deadline = time.monotonic() + 240
            while True:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "not ready in 240 s"
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(1)
            assert c.get("/readyz").json()["index_count"] == 20  # seeded with the seen items
            text = tiny_item_text(150)
            auth = {"Authorization": f"Bearer {TOKEN}"}
            r = c.post("/v1/items", json={"items": [{"id": "new-1", "text": text}]}, headers=auth)
            assert r.status_code == 200, r.text
            assert c.post("/v1/items", json={"items": []}).status_code == 401
            assert c.get("/v1/items/new-1").status_code == 200
            assert c.get("/readyz").json()["index_count"] == 21
            r = c.post("/v1/query", json={"texts": [tiny_item_text(3), tiny_item_text(7)], "k": 3})
            assert r.status_code == 200, r.text
            # a seen item's own text finds it first
            assert [hits[0]["id"] for hits in r.json()["results"]] == ["seen-3", "seen-7"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(hap, ignore_errors=True)

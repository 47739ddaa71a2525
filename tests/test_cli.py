"""`irene query` against a stub HTTP server, `irene serve`'s refusals, and `irene train`
refusing a work dir that the nodes of a multi-node cluster would not all see.

`irene serve` deploying serve_app/configs/cluster.yaml onto a 4-node cluster (and `irene
query` against it) runs in tests/ray/test_cluster.py (`make test-slow`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from irene.cli import app
from tests.conftest import free_port
from tests.helpers import json_http_server, make_tiny_bundle, tiny_item_text, write_catalogue_dir

HITS = [
    {
        "id": "sku-1",
        "score": 0.8312,
        "source": "trained",
        "text": "red trail running shoe",
        "metadata": {"brand": "acme"},
    },
    {"id": "sku-22", "score": 0.5, "source": "generated", "text": "x" * 80, "metadata": None},
]


@pytest.fixture
def stub():
    """An HTTP server answering POST /v1/query with HITS (text/metadata only when asked);
    records each request's body and Authorization header."""
    seen: list[tuple[dict, str | None]] = []

    def answer(method, path, headers, body):
        seen.append((body, headers.get("Authorization")))
        if path != "/v1/query":
            return 404, {"detail": "Not Found"}
        if body.get("k", 0) > 50:
            return 422, {"detail": "k must be between 1 and max_k=50"}
        fields = {"id", "score", "source"} | (
            {"text", "metadata"} if body.get("with_payload") else set()
        )
        hits = [{k: v for k, v in h.items() if k in fields} for h in HITS[: body["k"]]]
        return 200, {"results": [hits for _ in body["texts"]]}

    with json_http_server(answer) as url:
        yield url, seen


def test_query_prints_a_table(stub, monkeypatch):
    url, seen = stub
    monkeypatch.delenv("IRENE_API_TOKEN", raising=False)
    res = CliRunner().invoke(app, ["query", url, "trail shoes", "--k", "2"])
    assert res.exit_code == 0, res.output
    assert seen == [({"k": 2, "texts": ["trail shoes"]}, None)]
    lines = res.output.splitlines()
    assert lines[0] == "query: trail shoes"
    assert lines[1].split() == ["#", "score", "id", "source"]
    assert lines[2].split() == ["1", "0.8312", "sku-1", "trained"]
    assert lines[3].split() == ["2", "0.5000", "sku-22", "generated"]


def test_query_with_payload_token_and_several_texts(stub, monkeypatch):
    url, seen = stub
    monkeypatch.setenv("IRENE_API_TOKEN", "from-env")
    res = CliRunner().invoke(app, ["query", url, "a", "b", "--k", "2", "--with-payload"])
    assert res.exit_code == 0, res.output
    assert seen[-1] == ({"k": 2, "with_payload": True, "texts": ["a", "b"]}, "Bearer from-env")
    out = res.output
    assert out.count("query: ") == 2 and "red trail running shoe" in out
    assert '{"brand": "acme"}' in out and ("x" * 37 + "...") in out and "x" * 41 not in out
    res = CliRunner().invoke(app, ["query", url, "a", "--k", "1", "--token", "given"])
    assert res.exit_code == 0 and seen[-1][1] == "Bearer given"


def test_query_json(stub):
    url, _ = stub
    res = CliRunner().invoke(app, ["query", url, "a", "--k", "1", "--json", "--with-payload"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"results": [[HITS[0]]]}


def test_query_errors_exit_1(stub):
    url, _ = stub
    res = CliRunner().invoke(app, ["query", url, "a", "--k", "80"])
    assert res.exit_code == 1 and "HTTP 422" in res.output and "max_k=50" in res.output
    down = f"http://127.0.0.1:{free_port()}"
    res = CliRunner().invoke(app, ["query", down, "a", "--timeout", "2"])
    assert res.exit_code == 1 and down in res.output


def test_serve_refuses_bad_files_and_detach_without_a_cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    res = CliRunner().invoke(app, ["serve", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "cannot read" in res.output
    not_serve = tmp_path / "x.yaml"
    not_serve.write_text("a: 1\n")
    res = CliRunner().invoke(app, ["serve", str(not_serve)])
    assert res.exit_code == 2 and "not a Serve config" in res.output
    res = CliRunner().invoke(app, ["serve", "serve_app/configs/cluster.yaml", "--detach"])
    assert res.exit_code == 2 and "--detach needs a running cluster" in res.output


def test_train_refuses_a_work_dir_a_node_cannot_see(ray_local, tmp_path, monkeypatch):
    """On a cluster of more than one node (here: the check's view of the cluster), the default
    temp work dir is refused before any stage runs, naming the node and --work-dir; the temp
    dir is removed. The real probes run in tests/ray/test_cluster.py."""
    from irene.ray import cluster

    nodes = [cluster.Node("a" * 56, "10.0.0.1", True), cluster.Node("b" * 56, "10.0.0.2", False)]
    probed = []

    def probe(path, token, nodes_, timeout_s):
        probed.append(path)
        return {nodes[0].node_id: None, nodes[1].node_id: "the path does not exist there"}

    monkeypatch.setattr(cluster, "alive_nodes", lambda: nodes)
    monkeypatch.setattr(cluster, "probe_nodes", probe)
    temp = tmp_path / "irene-train-tmp"
    monkeypatch.setattr("irene.cli.tempfile.mkdtemp", lambda prefix: (temp.mkdir(), str(temp))[1])
    (tmp_path / "data").mkdir()
    write_catalogue_dir(tmp_path / "data")
    bundle = tmp_path / "bundle"
    res = CliRunner().invoke(app, ["train", str(tmp_path / "data"), "--bundle", str(bundle)])
    assert res.exit_code == 2, res.output
    msg = res.output
    assert f"work_dir {temp} is not on shared storage" in msg
    assert "1 of the cluster's 2 nodes cannot see it" in msg and "10.0.0.2" in msg
    assert "b" * 12 in msg and "--work-dir" in msg and "temp dir on this machine" in msg
    assert probed and probed[0].startswith(str(temp))
    assert not temp.exists()  # the default temp dir is removed
    assert not (bundle / "manifest.json").exists()  # nothing trained

    # a work dir every node sees passes the check (and s3:// is not probed at all)
    monkeypatch.setattr(
        cluster, "probe_nodes", lambda path, token, nodes_, t: {n.node_id: None for n in nodes_}
    )
    assert cluster.check_shared_storage(str(tmp_path / "shared")) == 2
    assert cluster.check_shared_storage("s3://bucket/work") == 0


@pytest.mark.slow
def test_serve_in_the_foreground_then_sigterm(tmp_path):
    """`irene serve local.yaml` as a user runs it (its own local Ray): ready, URL printed,
    `irene query` answers, SIGTERM deletes the app and exits 0 with its Ray gone."""
    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "serve_app" / "configs" / "local.yaml").read_text())
    port = free_port()
    cfg["http_options"]["port"] = port
    (app_cfg,) = cfg["applications"]
    app_cfg["args"]["index"]["uri"] = str(tmp_path / "index")
    app_cfg["args"]["index"]["name"] = f"cli-serve-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))
    bundle = make_tiny_bundle(str(tmp_path / "bundle"), n_seen=12)
    ray_tmp = f"/tmp/ray_cs_{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp, IRENE_BUNDLE=bundle)
    irene = Path(sys.executable).with_name("irene")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(irene), "serve", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while "serving; Ctrl-C to stop" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready in 300 s"
            time.sleep(1)
        assert f"irene: {url}" in log.read_text().splitlines()
        r = subprocess.run(
            [str(irene), "query", url, tiny_item_text(4), "--k", "1", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["results"][0][0]["id"] == "seen-4"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        assert "deleting irene" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:  # whatever is left of its Ray (nothing, normally)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_upgrade_reads_the_apps_config_and_refuses_a_file_without_the_app(tmp_path):
    """`irene upgrade/rollback/export CONFIG` take the index and bundle from the irene
    application of a Serve config (the whole procedure runs in
    tests/serve_app/test_upgrade_serve.py)."""
    from irene.config import ConfigError
    from irene.ray.upgrade import app_index

    cfg = tmp_path / "serve.yaml"
    args = {"bundle": "runs/b1", "index": {"uri": "runs/idx", "n_owners": 2}}
    app_cfg = {"name": "irene", "import_path": "serve_app.app:build_app", "args": args}
    cfg.write_text(yaml.safe_dump({"applications": [app_cfg]}))
    index, bundle = app_index(str(cfg))
    assert (index.uri, index.n_owners, bundle) == ("runs/idx", 2, "runs/b1")
    other = {"name": "x", "import_path": "other:app"}
    cfg.write_text(yaml.safe_dump({"applications": [other]}))
    with pytest.raises(ConfigError, match="expected one irene application, found 0"):
        app_index(str(cfg))
    for cmd in ("upgrade", "rollback", "export"):
        r = CliRunner().invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Serve config" in r.output, r.output

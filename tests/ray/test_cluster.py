"""irene.ray.cluster on real multi-node Ray clusters (``ray.cluster_utils.Cluster``: every node
a set of Ray processes on this machine, with its own resources).

* the shared-storage check: one node checks nothing; on two nodes a path both see passes, and
  a path one node cannot see names that node (the second node's processes run in another
  working directory, so a relative path is a different directory there -- what a local path
  is on another machine);
* serve_app/configs/cluster.yaml deployed with ``irene serve --address`` on a head + an
  ``encoder`` node + two ``index`` nodes: placement by custom resources, writes with the
  token from every node's environment, then an index node holding a shard actor is removed
  while a client keeps writing: the shard actor restarts on the other index node and every
  acknowledged write stays readable and queryable.

Each multi-node scenario runs in its own Python process (its own Ray, own RAY_TMPDIR), so it
coexists with the session's in-process Ray (tests/conftest.py ``ray_local``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "serve_app" / "configs" / "cluster.yaml"
IRENE = Path(sys.executable).with_name("irene")
TOKEN = "cluster-test-token-0123456789"
N_SEEN = 30
REPORT = "CLUSTER-TEST-REPORT"
# fast failure detection on the local cluster (defaults: a dead node is noticed after
# 5 x 3 s); the scenario's time is dominated by process start-ups on 2 cores anyway
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


# --------------------------------------------------------------------------- isolation
def run_isolated(scenario: str, tmp_path: Path, timeout_s: float) -> str:
    """Run ``scenario(tmp_path)`` of this module in a fresh Python process with its own Ray
    temp dir; fail with its output unless it exits 0; returns its stdout."""
    ray_tmp = f"/tmp/ray_cl_{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    env.pop("IRENE_BUNDLE", None)
    code = f"import sys; from tests.ray.test_cluster import {scenario} as f; f(sys.argv[1])"
    log_path = tmp_path / f"{scenario}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its Ray processes in its own group: killable on timeout
        )
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    out = log_path.read_text()
    assert rc == 0, f"{scenario} exited {rc}:\n{out[-6000:]}"
    return out


def _start_cluster(head_cpus: float = 1, **head_args):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": head_cpus,
            "include_dashboard": False,
            "_system_config": FAST_HEALTH_CHECKS,
            **head_args,
        },
    )
    return ray, cluster


# --------------------------------------------------------------------------- storage check
def test_single_node_and_s3_check_nothing(ray_local, tmp_path):
    from irene.ray.cluster import alive_nodes, check_shared_storage

    assert len(alive_nodes()) == 1
    assert check_shared_storage(str(tmp_path / "work")) == 0
    assert check_shared_storage("s3://bucket/work") == 0
    assert not (tmp_path / "work").exists()  # nothing written when there is nothing to check


def _storage_scenario(tmp: str) -> None:
    from irene.ray.cluster import SharedStorageError, alive_nodes, check_shared_storage

    tmp = Path(tmp)
    head_cwd, other_cwd = tmp / "head-cwd", tmp / "other-cwd"
    head_cwd.mkdir()
    other_cwd.mkdir()
    os.chdir(head_cwd)  # the head's processes (and this driver) work here
    ray, cluster = _start_cluster()
    os.chdir(other_cwd)  # the second node's processes work there
    other = cluster.add_node(num_cpus=1)
    os.chdir(head_cwd)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        nodes = alive_nodes()
        assert len(nodes) == 2 and nodes[0].is_head
        other_id = other.node_id

        shared = tmp / "shared-work"
        assert check_shared_storage(str(shared)) == 2  # every node read the marker
        assert list(shared.iterdir()) == []  # and the marker is gone

        (head_cwd / "work").mkdir()
        t0 = time.perf_counter()
        try:
            check_shared_storage("work", "work_dir", "pass --work-dir on shared storage")
        except SharedStorageError as e:
            msg = str(e)
        else:
            raise AssertionError("a path the second node cannot see passed")
        print(f"unseen path refused in {time.perf_counter() - t0:.1f} s: {msg}")
        assert "1 of the cluster's 2 nodes cannot see it" in msg, msg
        assert other_id[:12] in msg and nodes[0].node_id[:12] not in msg, msg
        assert "the path does not exist there" in msg and "--work-dir" in msg, msg
        assert list((head_cwd / "work").iterdir()) == []  # marker removed after a failure too
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_shared_storage_check_on_two_nodes(tmp_path):
    out = run_isolated("_storage_scenario", tmp_path, timeout_s=240)
    print(out[-1500:])


# --------------------------------------------------------------------------- serving
def local_cluster_config(bundle: str, index_uri: str, port: int, index_name: str) -> dict:
    """serve_app/configs/cluster.yaml with only what must change to run on this machine:
    HTTP on 127.0.0.1 and a free port, a tiny bundle and a local index dir (no S3 here), a
    fresh index name, no GPUs, 2 shard actors instead of 8 and one replica per deployment
    (2 real cores). Placement, proxies, token source and every other setting are the file's."""
    cfg = yaml.safe_load(CLUSTER_YAML.read_text())
    cfg["http_options"] = {**cfg["http_options"], "host": "127.0.0.1", "port": port}
    (app,) = cfg["applications"]
    args = app["args"]
    args["bundle"] = bundle
    args["index"]["uri"] = index_uri
    args["index"]["name"] = index_name
    args["index"]["n_owners"] = 2
    for dep in app["deployments"]:
        dep["ray_actor_options"].pop("num_gpus", None)
        if "num_replicas" in dep:
            dep["num_replicas"] = 1
        if "autoscaling_config" in dep:
            dep["autoscaling_config"]["min_replicas"] = 1
    return cfg


def _actors(ray) -> list[dict]:
    from ray._private import state

    return [a for a in state.actors().values() if a["State"] == "ALIVE"]


def _where(ray, class_prefix: str) -> list[str]:
    """Node ids of the ALIVE actors whose class name starts with ``class_prefix``."""
    return [
        a["Address"]["NodeID"] for a in _actors(ray) if a["ActorClassName"].startswith(class_prefix)
    ]


def _shard_nodes(ray, names: list[str]) -> dict[str, str]:
    """Shard actor name -> node id, for those ALIVE now."""
    return {a["Name"]: a["Address"]["NodeID"] for a in _actors(ray) if a.get("Name") in names}


def _serve_scenario(tmp: str) -> None:
    import httpx
    import numpy as np
    from ray import serve

    from irene.client import IreneClient, IreneHTTPError
    from irene.index.router import owner_name
    from tests.conftest import free_port
    from tests.helpers import WORDS, make_tiny_bundle

    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    tmp = Path(tmp)
    os.environ["IRENE_API_TOKEN"] = TOKEN  # on every node, as the Secret puts it on every pod
    ray, cluster = _start_cluster(head_cpus=1)
    try:
        encoder_node = cluster.add_node(num_cpus=3, resources={"encoder": 16})
        index_nodes = [
            cluster.add_node(num_cpus=8, resources={"index": 2, "index_reader": 2})
            for _ in range(2)
        ]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        head_id = cluster.head_node.node_id
        index_ids = {n.node_id for n in index_nodes}
        timings["cluster_start_s"] = time.perf_counter() - t_start

        port = free_port()
        index_name = f"irene-cl-{uuid.uuid4().hex[:6]}"
        bundle = make_tiny_bundle(str(tmp / "bundle"), n_seen=N_SEEN)
        cfg = local_cluster_config(bundle, str(tmp / "index"), port, index_name)
        config_path = tmp / "cluster-local.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        t0 = time.perf_counter()
        r = subprocess.run(
            [str(IRENE), "serve", str(config_path), "--address", cluster.address, "--detach"],
            capture_output=True,
            text=True,
            timeout=420,
        )
        assert r.returncode == 0, r.stdout + r.stderr[-4000:]
        url = f"http://127.0.0.1:{port}"
        assert r.stdout.strip().splitlines()[-1] == f"irene: {url}", r.stdout
        timings["irene_serve_ready_s"] = time.perf_counter() - t0

        # placement: the request path on the encoder node, shard actors on index nodes
        shard_names = [owner_name(index_name, i, 2) for i in range(2)]
        for dep in ("Ingress", "Encoder", "Generator"):
            nodes = _where(ray, f"ServeReplica:irene:{dep}")
            assert nodes and set(nodes) == {encoder_node.node_id}, (dep, nodes)
        readers = _where(ray, "ServeReplica:irene:ShardReader-")
        assert len(readers) == 2 and set(readers) <= index_ids, readers
        before = _shard_nodes(ray, shard_names)
        assert set(before) == set(shard_names) and set(before.values()) <= index_ids, before
        assert head_id not in before.values()
        proxies = _where(ray, "ProxyActor")
        assert len(proxies) == 4, proxies  # EveryNode: one proxy per node

        # writes need the token that every node got from its environment
        with httpx.Client(base_url=url, timeout=30) as c:
            body = {"items": [{"id": "nope", "text": "w1 w2 w3"}]}
            assert c.post("/v1/items", json=body).status_code == 401
            bad = {"Authorization": "Bearer wrong"}
            assert c.post("/v1/items", json=body, headers=bad).status_code == 403

        rng = np.random.default_rng(0)

        def text() -> str:
            return " ".join(rng.choice(WORDS, size=4, replace=False))

        acked: dict[str, str] = {}  # id -> text of every acknowledged write
        client = IreneClient(url, TOKEN, retries=8, backoff_s=0.25, timeout_s=60, concurrency=1)
        first = [(f"a-{i}", text(), {"phase": "before"}) for i in range(16)]
        client.ingest(first, batch_size=8)
        acked.update({i: t for i, t, _ in first})
        hits = client.query([first[0][1]], k=100, with_payload=True)[0]
        assert any(h["id"] == "a-0" and h["text"] == first[0][1] for h in hits)

        # irene query, as a user runs it
        r = subprocess.run(
            [str(IRENE), "query", url, first[1][1], "--k", "100", "--with-payload", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        (row,) = json.loads(r.stdout)["results"]
        assert {"id": "a-1", "text": first[1][1]}.items() <= next(
            h for h in row if h["id"] == "a-1"
        ).items()

        # a client keeps writing while an index node holding a shard actor is removed
        stop = threading.Event()
        uncertain: list[str] = []
        spans: list[tuple[float, float]] = []  # (sent, acknowledged) of the writer's batches
        lock = threading.Lock()

        def writer() -> None:
            n = 0
            with IreneClient(url, TOKEN, retries=8, backoff_s=0.25, timeout_s=60) as w:
                while not stop.is_set() and n < 40:
                    batch = [(f"b-{n + j}", text()) for j in range(2)]
                    n += len(batch)
                    sent = time.monotonic()
                    try:
                        w.ingest(batch)
                    except (IreneHTTPError, httpx.HTTPError):
                        with lock:
                            uncertain.extend(i for i, _ in batch)
                    else:
                        with lock:
                            acked.update(dict(batch))
                            spans.append((sent, time.monotonic()))
                    time.sleep(0.5)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        time.sleep(2)
        victim_id = before[shard_names[0]]
        victim = next(n for n in index_nodes if n.node_id == victim_id)
        survivor_id = next(i for i in index_ids if i != victim_id)
        moved = sorted(s for s, node in before.items() if node == victim_id)
        readers_lost = _where(ray, "ServeReplica:irene:ShardReader-").count(victim_id)
        t0, removed_at = time.perf_counter(), time.monotonic()
        cluster.remove_node(victim, allow_graceful=False)
        deadline = time.monotonic() + 120
        while True:
            now = _shard_nodes(ray, shard_names)
            if all(now.get(s) == survivor_id for s in moved):
                break
            assert time.monotonic() < deadline, f"shard actors {moved} not restarted: {now}"
            time.sleep(0.2)
        timings["shard_actor_restart_s"] = time.perf_counter() - t0
        restarted_at = time.monotonic()
        assert set(now.values()) == {survivor_id}, now  # all shard actors on the survivor

        after = [(f"c-{i}", text()) for i in range(4)]  # writes after the restart succeed
        client.ingest(after, batch_size=2)
        acked.update(dict(after))
        stop.set()
        thread.join(120)
        assert not thread.is_alive()
        # the client kept writing through the outage: batches sent before the shard actor
        # was back and acknowledged after its node was gone
        through = sum(sent < restarted_at and done > removed_at for sent, done in spans)
        assert through >= 1, spans
        t0 = time.perf_counter()
        deadline = time.monotonic() + 180
        while True:  # Serve replaced the ShardReader replica of the removed node
            readers = _where(ray, "ServeReplica:irene:ShardReader-")
            app = serve.status().applications["irene"]
            if len(readers) == 2 and "RUNNING" in str(app.status):
                break
            assert time.monotonic() < deadline, (readers, app)
            time.sleep(0.5)
        assert set(readers) == {survivor_id}, readers
        timings["serve_recovered_s"] = time.perf_counter() - t0

        # every acknowledged write: readable with its text, and found by a query
        ids = sorted(acked)
        got = client.fetch(ids)
        lost = [i for i, it in zip(ids, got, strict=True) if it is None or it["text"] != acked[i]]
        assert not lost, f"acknowledged writes lost or wrong: {lost}"
        item = client.get("c-0")
        assert item is not None and item["text"] == acked["c-0"] and item["source"] == "generated"
        count = client.count()
        assert N_SEEN + len(ids) <= count <= N_SEEN + len(ids) + len(uncertain) <= 100, count
        texts = [acked[i] for i in ids]
        rows = client.query(texts, k=100, with_payload=["text"])
        missing = [
            i
            for i, row in zip(ids, rows, strict=True)
            if not any(h["id"] == i and h["text"] == acked[i] for h in row)
        ]
        assert not missing, f"acknowledged writes not found by a query: {missing}"
        client.close()
        timings["total_s"] = time.perf_counter() - t_start
        print(
            REPORT,
            json.dumps(
                {
                    "acknowledged_writes": len(ids),
                    "batches_acknowledged_through_the_outage": through,
                    "uncertain_writes": len(uncertain),
                    "moved_shard_actors": moved,
                    "shard_reader_replicas_lost": readers_lost,
                    "timings": {k: round(v, 1) for k, v in timings.items()},
                }
            ),
        )
    finally:
        try:
            serve.shutdown()
        except Exception:  # not started, or the cluster is already gone
            pass
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_cluster_yaml_on_four_nodes_survives_losing_an_index_node(tmp_path):
    t0 = time.perf_counter()
    out = run_isolated("_serve_scenario", tmp_path, timeout_s=600)
    (line,) = [ln for ln in out.splitlines() if ln.startswith(REPORT)]
    report = json.loads(line[len(REPORT) :])
    print(f"{time.perf_counter() - t0:.1f} s in all: {report}")
    assert report["acknowledged_writes"] >= 16 + 4

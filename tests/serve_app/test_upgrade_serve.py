"""A model upgrade and a rollback under load, over real HTTP: query and ingest clients run
while the index moves to a retrained bundle's generation and back; no query fails, no
acknowledged write is lost or left made by the old generator."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from irene.bundle import bundle_version, read_manifest
from irene.config import IndexConfig
from irene.index.generations import load_alias
from irene.ray.upgrade import export_app, rollback_app, upgrade_app
from tests.helpers import make_tiny_bundle, serve_app, tiny_item_text

TOKEN = "upgrade-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMESPACE = "irene-upgrade-tests"


@pytest.fixture(scope="module")
def app(ray_local, tmp_path_factory):

    tmp = tmp_path_factory.mktemp("upgrade")
    bundles = [make_tiny_bundle(str(tmp / f"bundle-{s}"), n_seen=16, seed=s) for s in (0, 1)]
    index = {
        "uri": str(tmp / "index"),
        "name": f"irene-upgrade-{uuid.uuid4().hex[:8]}",
        "namespace": NAMESPACE,
        "n_owners": 2,
        "n_shards": 2,
        "num_cpus": 0.05,
        "read_replica": True,
        "alias_poll_s": 0.2,
    }
    small = {"ray_actor_options": {"num_cpus": 0.1}}
    args = {
        "bundle": bundles[0],
        "index": index,
        "auth": {"token": TOKEN, "token_env": "IRENE_TEST_UNSET_TOKEN"},
        "threads": 1,
        "encoder_placement": "ingress",
        "deployment_options": {"Generator": small, "Ingress": {**small, "num_replicas": 2}},
    }
    config_path = tmp / "serve.yaml"  # what `irene upgrade CONFIG` reads
    app_cfg = {"import_path": "serve_app.app:build_app", "name": "irene", "args": args}
    config_path.write_text(yaml.safe_dump({"applications": [app_cfg]}))
    try:
        with serve_app(args, ready_s=90) as client:
            yield client, bundles, IndexConfig(**index), str(config_path)
    finally:
        from irene.index.generations import generation_config
        from irene.index.router import owner_name

        alias = load_alias(IndexConfig(**index))
        for gen in alias.generations if alias else [""]:
            cfg = generation_config(IndexConfig(**index), gen)
            for i in range(cfg.n_owners):
                try:
                    ray_local.kill(
                        ray_local.get_actor(owner_name(cfg.name, i, cfg.n_owners), NAMESPACE)
                    )
                except ValueError:
                    pass


class Load:
    """Query clients and ingest clients against the app until stopped."""

    def __init__(self, url: str, queries: int, writers: int, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.failed_queries: list[str] = []
        self.failed_writes: list[str] = []
        self.queries = 0
        self.acked: dict[str, str] = {}  # id -> text, for every acknowledged write
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._query) for _ in range(queries)]
        self._threads += [threading.Thread(target=self._write, args=(w,)) for w in range(writers)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _query(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            i = 0
            while not self._stop.is_set():
                r = c.post("/v1/query", json={"text": tiny_item_text(i % 50), "k": 5})
                if r.status_code != 200:
                    self.failed_queries.append(f"{r.status_code} {r.text[:200]}")
                self.queries += 1
                i += 1

    def _write(self, w: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60, headers=AUTH) as c:
            i = 0
            while not self._stop.is_set():
                id_, text = f"{self.prefix}-{w}-{i}", tiny_item_text(200 + i)
                r = c.post("/v1/items", json={"items": [{"id": id_, "text": text}]})
                if r.status_code == 200:
                    self.acked[id_] = text
                else:
                    self.failed_writes.append(f"{r.status_code} {r.text[:200]}")
                i += 1
                time.sleep(0.02)


def _generation(client: httpx.Client) -> set[str]:
    """The generations the replicas answering a few probes serve."""
    return {client.get("/readyz").json()["generation"] for _ in range(6)}


def _check(client: httpx.Client, acked: dict[str, str], version: str) -> None:
    for id_, text in acked.items():
        r = client.get(f"/v1/items/{id_}")
        assert r.status_code == 200, (id_, r.text)
        item = r.json()
        assert item["text"] == text and item["version"] == version, (id_, item)


def test_upgrade_and_rollback_under_load(app):
    client, (b0, b1), index, config = app
    v0, v1 = (bundle_version(read_manifest(b)) for b in (b0, b1))
    items = [{"id": f"api-{i}", "text": tiny_item_text(100 + i)} for i in range(20)]
    assert client.post("/v1/items", json={"items": items[:8]}, headers=AUTH).status_code == 200
    assert client.post("/v1/items", json={"items": items[8:]}, headers=AUTH).status_code == 200
    url = str(client.base_url)

    with Load(url, queries=3, writers=2, prefix="up") as load:
        time.sleep(1.0)
        report = upgrade_app(config, b1, settle=0)  # what `irene upgrade` runs
        new = report["upgrade"]["to"]
        deadline = time.monotonic() + 30
        while _generation(client) != {new}:
            assert time.monotonic() < deadline, "replicas did not switch"
            time.sleep(0.2)
        time.sleep(1.0)  # writes on the new generation too
    assert load.failed_queries == [] and load.failed_writes == []
    assert load.queries > 20 and len(load.acked) > 10
    acked = {i["id"]: i["text"] for i in items} | load.acked
    _check(client, acked, v1)  # every acknowledged write, made by the new bundle
    assert report["regenerated"] >= len(items)

    with Load(url, queries=3, writers=2, prefix="down") as load:
        time.sleep(1.0)
        back = rollback_app(config)
        deadline = time.monotonic() + 30
        while _generation(client) != {""}:
            assert time.monotonic() < deadline, "replicas did not switch back"
            time.sleep(0.2)
        time.sleep(1.0)
    assert load.failed_queries == [] and load.failed_writes == []
    _check(client, acked | load.acked, v0)
    assert back["rollback"] == {"from": new, "to": ""}
    alias = load_alias(index)
    assert alias.current == "" and alias.previous == new

    out = str(Path(config).parent / "export.jsonl")  # `irene export`
    n = export_app(config, out)
    rows = [json.loads(line) for line in open(out)]
    assert n == len(rows) == client.get("/readyz").json()["index_count"]
    exported = {r["id"]: r for r in rows if r["source"] == "generated"}
    assert {i: r["text"] for i, r in exported.items()} == acked | load.acked
    assert {r["version"] for r in rows} == {v0}

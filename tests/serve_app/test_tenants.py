"""Tenants over real HTTP: a token scoped to tenant A tries every route against tenant B's
items and learns nothing; token values appear in no log and no metric; tokens rotate
without a restart."""

from __future__ import annotations

import glob
import json
import os
import time
import uuid

import pytest

from irene.tokens import hash_token
from tests.helpers import make_tiny_bundle, serve_app, tiny_item_text

TOKENS = {name: f"tok-{name}-{uuid.uuid4().hex}" for name in ("a", "b", "ops", "a2")}
NAMESPACE = "irene-tenant-tests"


def _entry(name: str, scopes: list[str], tenant: str | None) -> dict:
    return {"name": name, "sha256": hash_token(TOKENS[name]), "scopes": scopes, "tenant": tenant}


def _write_tokens(path, entries: list[dict]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(entries, f)
    os.replace(tmp, path)  # atomically, like a Secret update


@pytest.fixture(scope="module")
def app(ray_local, tmp_path_factory):

    tmp = tmp_path_factory.mktemp("tenants")
    tokens_file = tmp / "tokens.json"
    _write_tokens(
        tokens_file,
        [
            _entry("a", ["read", "write"], "A"),
            _entry("b", ["read", "write"], "B"),
            _entry("ops", ["read", "write", "admin"], None),
        ],
    )
    index_name = f"irene-tenants-{uuid.uuid4().hex[:8]}"
    small = {"ray_actor_options": {"num_cpus": 0.1}}
    args = {
        "bundle": make_tiny_bundle(str(tmp / "bundle"), n_seen=20),
        "index": {
            "uri": str(tmp / "index"),
            "name": index_name,
            "namespace": NAMESPACE,
            "n_shards": 2,
            "num_cpus": 0.1,
            "read_replica": True,
        },
        "auth": {
            "tokens_file": str(tokens_file),
            "reload_s": 0,
            "tenant_field": "tenant",
            "protect_reads": True,
            "token_env": "IRENE_TEST_UNSET_TOKEN",
            "tokens_env": "IRENE_TEST_UNSET_TOKENS",
        },
        "threads": 1,
        "encoder_placement": "ingress",
        "deployment_options": {"Generator": small, "Ingress": small},
    }
    try:
        with serve_app(args) as client:
            yield client, tokens_file
    finally:
        try:
            ray_local.kill(ray_local.get_actor(index_name, namespace=NAMESPACE))
        except ValueError:
            pass


def as_(name: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def test_a_tenant_token_never_reaches_another_tenants_items(app):
    client, _ = app

    def post(path, body, who, status=200):
        r = client.post(path, json=body, headers=as_(who))
        assert r.status_code == status, (path, r.text)
        return r.json()

    b_items = [
        {"id": f"sku-{i}", "text": tiny_item_text(700 + i), "metadata": {"shop": "b"}}
        for i in range(4)
    ]
    post("/v1/items", {"items": b_items}, "b")
    # A writes the same ids (its own namespace) and tries to claim tenant B in metadata
    a_items = [
        {"id": "sku-0", "text": tiny_item_text(800), "metadata": {"tenant": "B", "shop": "a"}},
        {"id": "a-only", "text": tiny_item_text(801)},
    ]
    res = post("/v1/items", {"items": a_items}, "a")["results"]
    assert [r["status"] for r in res] == ["created", "created"]  # not B's sku-0 "updated"
    b0 = client.get("/v1/items/sku-0", headers=as_("b")).json()
    assert b0["text"] == tiny_item_text(700) and b0["metadata"] == {"shop": "b", "tenant": "B"}
    a0 = client.get("/v1/items/sku-0", headers=as_("a")).json()
    assert a0["text"] == tiny_item_text(800) and a0["metadata"]["tenant"] == "A"

    # every read route, from A, naming B's items
    assert client.get("/v1/items/sku-1", headers=as_("a")).status_code == 404
    r = client.get("/v1/items/sku-1", params={"include_vector": "true"}, headers=as_("a"))
    assert r.status_code == 404
    got = post("/v1/items/fetch", {"ids": ["sku-1", "sku-2"], "include_vectors": True}, "a")
    assert got["items"] == [None, None]
    names_b = {"must": [{"key": "tenant", "match": {"value": "B"}}]}
    escape = {"should": [{"id_prefix": "B\x1f"}, {"id_prefix": "sku-1"}]}
    for f in (None, names_b, escape, {"must": [{"key": "shop", "match": {"value": "b"}}]}):
        body = {"text": tiny_item_text(701), "k": 50, "with_payload": True}
        if f is not None:
            body["filter"] = f
        (hits,) = post("/v1/query", body, "a")["results"]
        assert {h["id"] for h in hits} <= {"sku-0", "a-only"}, f
        assert all(h["metadata"]["tenant"] == "A" for h in hits)
        count = post("/v1/count", {} if f is None else {"filter": f}, "a")["count"]
        assert count == len(hits)
        page = post("/v1/items/scroll", {"limit": 100, **({"filter": f} if f else {})}, "a")
        assert {it["id"] for it in page["items"]} == {h["id"] for h in hits}
    (hits,) = post("/v1/query", {"text": tiny_item_text(801), "k": 50}, "a")["results"]
    assert {h["id"] for h in hits} == {"sku-0", "a-only"}

    # every write route, from A, naming B's items
    assert post("/v1/items/delete_by_filter", {"filter": names_b}, "a") == {"deleted": 0}
    assert post("/v1/items/delete_by_filter", {"filter": escape}, "a") == {"deleted": 0}
    assert client.delete("/v1/items/sku-1", headers=as_("a")).status_code == 404
    got = post("/v1/items/delete", {"ids": ["sku-2", "sku-3"]}, "a")["results"]
    assert [d["deleted"] for d in got] == [False, False]
    assert post("/v1/count", {}, "b")["count"] == 4  # B lost nothing
    assert post("/v1/count", {}, "a")["count"] == 2
    # A may delete its own, B's same id survives
    assert (
        post("/v1/items/delete_by_filter", {"filter": {"must": [{"id_prefix": "sku-"}]}}, "a")[
            "deleted"
        ]
        == 1
    )
    assert client.get("/v1/items/sku-0", headers=as_("b")).status_code == 200

    # the operator's token (no tenant) sees both namespaces; scopes hold
    ops = post(
        "/v1/count", {"filter": {"must": [{"key": "tenant", "match": {"any": ["A", "B"]}}]}}, "ops"
    )
    assert ops["count"] == 5
    assert client.post("/v1/snapshot", headers=as_("a")).status_code == 403
    assert client.post("/v1/snapshot", headers=as_("ops")).status_code == 200
    r = client.post("/v1/query", json={"text": "x"})  # reads are protected with tenants
    assert r.status_code == 401


def test_tokens_rotate_without_restart_and_never_appear_in_logs_or_metrics(app, ray_local):
    client, tokens_file = app
    body = {"text": tiny_item_text(1), "k": 3}
    assert client.post("/v1/query", json=body, headers=as_("a2")).status_code == 403
    _write_tokens(
        tokens_file,
        [
            _entry("a2", ["read"], "A"),  # A's rotated token
            _entry("b", ["read", "write"], "B"),
            _entry("ops", ["read", "write", "admin"], None),
        ],
    )
    deadline = time.monotonic() + 10
    while client.post("/v1/query", json=body, headers=as_("a2")).status_code != 200:
        assert time.monotonic() < deadline, "the new token was not picked up"
        time.sleep(0.2)
    assert client.post("/v1/query", json=body, headers=as_("a")).status_code == 403  # revoked
    r = client.post("/v1/items", json={"items": []}, headers=as_("a2"))
    assert r.status_code == 403 and "lacks the 'write' scope" in r.text
    metrics = client.get("/metrics").text
    files = [
        p
        for ext in ("log", "out", "err")
        for p in glob.glob(f"/tmp/ray_t_{os.getpid()}/**/*.{ext}", recursive=True)
    ]
    assert any("serve" in p for p in files)  # the replicas' logs are there to search
    logs = "".join(open(p, errors="replace").read() for p in files)
    for tok in TOKENS.values():
        assert tok not in metrics and tok not in logs

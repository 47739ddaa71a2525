"""The Serve app over real HTTP: one local Ray + Serve on 127.0.0.1 for the whole module."""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from tests.conftest import free_port
from tests.helpers import make_tiny_bundle, serve_app, tiny_item_text

N_SEEN = 30
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = {
    "max_text_chars": 300,
    "max_items_per_request": 8,
    "max_texts_per_query": 4,
    "max_k": 50,
    "default_k": 5,
    "max_body_bytes": 16384,
    "max_metadata_bytes": 256,
}
NAMESPACE = "irene-serve-tests"
ATOL = 1e-4
FUZZ_EXAMPLES = 12  # generated requests per API operation in the fuzz test


@dataclass
class Served:
    client: httpx.Client
    bundle: object  # the same bundle loaded in-process, for expected vectors and scores
    index_dir: Path
    start_count: int
    placement: str  # AppArgs.encoder_placement of this app
    read_replica: bool  # do the encoding replicas answer from their own copies?
    index: dict | None = None  # AppArgs.index of this app

    @property
    def shard_readers(self) -> bool:
        return bool(self.index and self.index.get("shard_readers"))

    def reader_stats(self, owner: int) -> dict:
        """Stats of one replica of deployment ShardReader-<owner> (ids included)."""
        from ray import serve

        handle = serve.get_deployment_handle(f"ShardReader-{owner}", app_name="irene")
        return handle.stats.remote(True).result(timeout_s=30)

    def count(self) -> int:
        r = self.client.get("/readyz")
        assert r.status_code == 200, r.text
        return r.json()["index_count"]

    def ingest(self, items: list[tuple], headers=AUTH) -> httpx.Response:
        """POST (id, text) or (id, text, metadata) items."""
        body = {
            "items": [
                {"id": i, "text": t, **({"metadata": m[0]} if m else {})} for i, t, *m in items
            ]
        }
        return self.client.post("/v1/items", json=body, headers=headers)

    def query(self, text: str, k: int, **extra) -> list[dict]:
        r = self.client.post("/v1/query", json={"text": text, "k": k, **extra})
        assert r.status_code == 200, r.text
        (hits,) = r.json()["results"]
        return hits

    def vector(self, id_: str) -> np.ndarray:
        r = self.client.get(f"/v1/items/{quote(id_, safe='')}", params={"include_vector": "true"})
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["vector"], dtype=np.float32)

    def expected(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """In-process (embeddings (n, d), generated classifiers (n, d)) for ``texts``."""
        emb = self.bundle.encoder.encode(texts)
        return emb, self.bundle.synthesize(emb)


# every test runs against both placements of the encoder (its own deployment, and in the
# Ingress), the three query paths (index actor calls, read replicas of every shard in the
# encoding replica, ShardReader deployments of one shard each) and both index layouts (one
# index actor, and 2 shard actors behind the router). The ShardReader app runs in `make
# test-slow` (~80 s); the default suite covers ShardReaders in the reliability chaos tests.
@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("deployment", False, 1, False), id="deployment-actor-reads"),
        pytest.param(("ingress", True, 2, False), id="ingress-read-replica-2-shard-actors"),
        pytest.param(
            ("deployment", False, 2, True),
            id="deployment-2-shard-readers-x2",
            marks=pytest.mark.slow,
        ),
    ],
)
def served(ray_local, tmp_path_factory, request):
    from irene.bundle import load_bundle

    tmp = tmp_path_factory.mktemp("serve")
    bundle_dir = make_tiny_bundle(str(tmp / "bundle"), n_seen=N_SEEN)
    index_dir = tmp / "index"
    index_name = f"irene-test-{uuid.uuid4().hex[:8]}"
    old_bundle_env = os.environ.pop("IRENE_BUNDLE", None)
    small = {"ray_actor_options": {"num_cpus": 0.1}}
    placement, read_replica, n_owners, shard_readers = request.param
    args = {
        "bundle": bundle_dir,
        "index": {
            "uri": str(index_dir),
            "name": index_name,
            "namespace": NAMESPACE,
            "n_owners": n_owners,
            "n_shards": 3,
            "num_cpus": 0.1,
            "read_replica": read_replica,
            "shard_readers": shard_readers,
        },
        "limits": LIMITS,
        "auth": {"token": TOKEN, "token_env": "IRENE_TEST_UNSET_TOKEN"},
        "threads": 1,
        "encoder_placement": placement,
        "deployment_options": {
            "Encoder": small,
            "Generator": small,
            "Ingress": small,
            "ShardReader": {**small, "num_replicas": 2},
        },
    }
    try:
        with serve_app(args) as client:
            served = Served(
                client,
                load_bundle(bundle_dir),
                index_dir,
                0,
                placement,
                read_replica,
                args["index"],
            )
            served.start_count = served.count()
            yield served
    finally:
        from irene.index.router import owner_name

        for i in range(n_owners):
            try:
                ray_local.kill(
                    ray_local.get_actor(owner_name(index_name, i, n_owners), namespace=NAMESPACE)
                )
            except ValueError:
                pass
        if old_bundle_env is not None:
            os.environ["IRENE_BUNDLE"] = old_bundle_env


# --------------------------------------------------------------------------- start-up
def test_index_is_seeded_with_the_seen_items(served):
    assert served.start_count == N_SEEN
    r = served.client.get("/v1/items/seen-0")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == "seen-0" and body["dim"] == served.bundle.dim
    assert "vector" not in body  # only with ?include_vector=true
    np.testing.assert_allclose(
        served.vector("seen-7"), served.bundle.seen_classifiers()[7], atol=ATOL
    )


def test_encoder_runs_where_configured(served):
    from ray import serve

    deployments = set(serve.status().applications["irene"].deployments)
    readers = {f"ShardReader-{i}" for i in range(served.index["n_owners"])}
    if not served.shard_readers:
        readers = set()
    if served.placement == "deployment":
        assert deployments == {"Ingress", "Encoder", "Generator"} | readers
    else:  # the Ingress replicas encode themselves
        assert deployments == {"Ingress", "Generator"} | readers


def test_concurrent_queries_match_one_by_one(served):
    """Micro-batched answers (many queries in one encode + index call) are the same as
    answers to the same queries sent one at a time, and as the in-process scores."""
    texts = [tiny_item_text(i) for i in range(200, 216)]
    one_by_one = [served.query(t, k=3) for t in texts]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda t: served.query(t, k=3), texts))
    for a, b in zip(one_by_one, together, strict=True):
        assert [h["id"] for h in a] == [h["id"] for h in b]
        np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=ATOL)
    emb, _ = served.expected(texts[:1])
    top = one_by_one[0][0]
    np.testing.assert_allclose(top["score"], float(emb[0] @ served.vector(top["id"])), atol=ATOL)


def test_health_ready_docs(served):
    c = served.client
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz").json()
    assert ready["status"] == "ready" and ready["index_count"] >= N_SEEN
    assert ready["encoder_runtime"] == "torch"  # the tiny bundle's encoder (auto -> torch)
    assert ready["bundle_version"]
    docs = c.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = c.get("/openapi.json").json()["paths"]
    for p in ("/v1/items", "/v1/query", "/v1/items/{item_id}", "/v1/snapshot", "/metrics"):
        assert p in paths, p


# --------------------------------------------------------------------------- auth
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/items", {"items": [{"id": "auth-probe", "text": tiny_item_text(31)}]}),
        ("DELETE", "/v1/items/seen-1", None),
        ("POST", "/v1/items/delete", {"ids": ["seen-1"]}),
        ("POST", "/v1/snapshot", None),
    ],
)
def test_writes_need_the_token(served, method, path, body):
    c = served.client
    before = served.count()
    r = c.request(method, path, json=body)
    assert r.status_code == 401 and "bearer" in r.json()["detail"].lower()
    assert r.headers["www-authenticate"] == "Bearer"
    r = c.request(method, path, json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and "invalid token" in r.json()["detail"]
    r = c.request(method, path, json=body, headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401
    assert served.count() == before
    assert c.get("/v1/items/seen-1").status_code == 200
    assert c.get("/v1/items/auth-probe").status_code == 404


def test_writes_with_the_token_succeed(served):
    before = served.count()
    r = served.ingest([("auth-ok", tiny_item_text(32))])
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [{"id": "auth-ok", "status": "created"}]
    assert served.count() == before + 1
    r = served.client.delete("/v1/items/auth-ok", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"id": "auth-ok", "deleted": True}
    assert served.count() == before


def test_reads_are_open_by_default(served):
    assert served.client.post("/v1/query", json={"text": tiny_item_text(3)}).status_code == 200
    assert served.client.get("/v1/items/seen-3").status_code == 200


# --------------------------------------------------------------------------- bad input
OK_ITEM = {"id": "bad-probe", "text": tiny_item_text(33)}


def _items(*extra: dict) -> dict:
    return {"items": [OK_ITEM, *extra]}


BAD_WRITES = {
    "malformed json": (
        {"content": b'{"items": [', "headers": {"content-type": "application/json"}},
        400,
    ),
    "unknown top-level field": ({"json": {**_items(), "upsert": True}}, 422),
    "unknown item field": ({"json": _items({"id": "x1", "text": "w1", "lang": "en"})}, 422),
    "missing items": ({"json": {}}, 422),
    "empty items": ({"json": {"items": []}}, 422),
    "items not a list": ({"json": {"items": "w1 w2"}}, 422),
    "empty text": ({"json": _items({"id": "x1", "text": ""})}, 422),
    "blank text": ({"json": _items({"id": "x1", "text": "   "})}, 422),
    "oversized text": ({"json": _items({"id": "x1", "text": "w1 " * 101})}, 413),
    "too many items": (
        {
            "json": _items(
                *({"id": f"x{i}", "text": "w1"} for i in range(LIMITS["max_items_per_request"]))
            )
        },
        413,
    ),
    "duplicate ids": (
        {"json": _items({"id": "x1", "text": "w1"}, {"id": "x1", "text": "w2"})},
        422,
    ),
    "empty id": ({"json": _items({"id": "", "text": "w1"})}, 422),
    "id too long": ({"json": _items({"id": "x" * 257, "text": "w1"})}, 422),
    "id not a string": ({"json": _items({"id": 7, "text": "w1"})}, 422),
    "id with a newline": ({"json": _items({"id": "x1\nx2", "text": "w1"})}, 422),
    "id with a NUL": ({"json": _items({"id": "x1\u0000", "text": "w1"})}, 422),
    "body too large": ({"json": _items({"id": "x1", "text": "w1 " * 6000})}, 413),
    "metadata not an object": ({"json": _items({"id": "x1", "text": "w1", "metadata": [1]})}, 422),
    "nested metadata": (
        {"json": _items({"id": "x1", "text": "w1", "metadata": {"a": {"b": 1}}})},
        422,
    ),
    "metadata null value": (
        {"json": _items({"id": "x1", "text": "w1", "metadata": {"a": None}})},
        422,
    ),
    "metadata list of numbers": (
        {"json": _items({"id": "x1", "text": "w1", "metadata": {"a": [1, 2]}})},
        422,
    ),
    "metadata NaN": (
        {
            "content": b'{"items": [{"id": "x1", "text": "w1", "metadata": {"a": NaN}}]}',
            "headers": {"content-type": "application/json"},
        },
        422,
    ),
    "metadata too large": (
        {"json": _items({"id": "x1", "text": "w1", "metadata": {"a": "x" * 300}})},
        413,
    ),
}


@pytest.mark.parametrize("case", list(BAD_WRITES))
def test_bad_ingest_is_rejected_and_changes_nothing(served, case):
    kwargs, status = BAD_WRITES[case]
    kwargs = {**kwargs, "headers": {**AUTH, **kwargs.get("headers", {})}}
    before = served.count()
    r = served.client.post("/v1/items", **kwargs)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail  # a message (or the list of validation errors)
    assert served.count() == before
    for probe in ("bad-probe", "x1"):
        assert served.client.get(f"/v1/items/{probe}").status_code == 404


BAD_QUERIES = {
    "malformed json": (
        {"content": b"{text: 1}", "headers": {"content-type": "application/json"}},
        400,
    ),
    "neither text nor texts": ({"json": {"k": 3}}, 422),
    "both text and texts": ({"json": {"text": "w1", "texts": ["w2"]}}, 422),
    "empty text": ({"json": {"text": ""}}, 422),
    "empty texts": ({"json": {"texts": []}}, 422),
    "blank text in texts": ({"json": {"texts": ["w1", " "]}}, 422),
    "oversized text": ({"json": {"text": "w1 " * 101}}, 413),
    "too many texts": ({"json": {"texts": ["w1"] * (LIMITS["max_texts_per_query"] + 1)}}, 413),
    "k zero": ({"json": {"text": "w1", "k": 0}}, 422),
    "k negative": ({"json": {"text": "w1", "k": -3}}, 422),
    "k over max": ({"json": {"text": "w1", "k": LIMITS["max_k"] + 1}}, 422),
    "k not an int": ({"json": {"text": "w1", "k": "ten"}}, 422),
    "unknown field": ({"json": {"text": "w1", "filter": "x"}}, 422),
}


@pytest.mark.parametrize("case", list(BAD_QUERIES))
def test_bad_query_is_rejected(served, case):
    kwargs, status = BAD_QUERIES[case]
    before = served.count()
    r = served.client.post("/v1/query", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert served.count() == before


def test_error_messages_are_clear(served):
    r = served.client.post("/v1/query", json={"text": "w1", "k": 51})
    assert "max_k=50" in r.json()["detail"]
    r = served.ingest([("d1", "w1"), ("d1", "w2")])
    assert "duplicate ids" in r.json()["detail"] and "d1" in r.json()["detail"]
    r = served.client.post("/v1/items", json={"items": [], "x": 1}, headers=AUTH)
    assert any(e["type"] == "extra_forbidden" for e in r.json()["detail"])


# --------------------------------------------------------------------------- semantics
def test_novel_item_is_found_at_rank_1_with_its_own_text(served):
    texts = [tiny_item_text(i) for i in range(40, 70)]
    emb, gen = served.expected(texts)
    own = (emb * gen).sum(1)  # (n,) score of each item's classifier for its own text
    chosen = None
    for text, score in zip(texts, own, strict=True):
        best_now = served.query(text, k=1)[0]["score"]  # best item already in the index
        if score > best_now + 1e-3:
            chosen = (text, float(score))
            break
    assert chosen is not None, "no candidate text beats the existing items (tiny model)"
    text, score = chosen
    r = served.ingest([("novel-1", text)])
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "created"
    hits = served.query(text, k=5)
    assert hits[0]["id"] == "novel-1"
    assert hits[0]["score"] == pytest.approx(score, abs=ATOL)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    np.testing.assert_allclose(served.vector("novel-1"), gen[texts.index(text)], atol=ATOL)


@pytest.mark.slow  # ~45 s per app; `make test` covers it through the demo (test_pipeline.py)
def test_bulk_ingest_job_is_queryable_without_a_restart(served, tmp_path):
    """A Ray Data bulk ingest into the app's shard actors: its items are answered over HTTP
    right after it returns (the read replicas have them), with the HTTP ingest's vectors and
    the items' records (metadata from the input rows)."""
    import json

    from irene.bundle import bundle_version
    from irene.config import load_config
    from irene.ray.ingest import ingest_ray

    ids = [f"bulk-{i}" for i in range(12)]
    texts = [tiny_item_text(300 + i) for i in range(12)]
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(
            json.dumps({"id": i, "text": t, "metadata": {"n": n}, "shelf": f"s{n % 2}"}) + "\n"
            for n, (i, t) in enumerate(zip(ids, texts, strict=True))
        )
    )
    ix = served.index
    # the same index settings as the app (one index config): other ones are an error
    index = {k: ix[k] for k in ("name", "namespace", "n_owners", "n_shards", "num_cpus")}
    cfg = load_config(
        None,
        ["ingest.batch_size=5", "ingest.encode_actors=1"],
        bundle=str(served.index_dir.parent / "bundle"),
        executor="ray",
        ingest={"items": str(items), "index": {**index, "uri": str(served.index_dir)}},
    )
    before = served.count()
    rep = ingest_ray(cfg, show_progress=False)
    assert rep.written == 12 and rep.index_count == before + 12 == served.count()
    emb, gen = served.expected(texts)
    for i in (0, 7, 11):
        np.testing.assert_allclose(served.vector(ids[i]), gen[i], atol=ATOL)
        rec = served.client.get(f"/v1/items/{ids[i]}").json()
        assert rec["metadata"] == {"n": i, "shelf": f"s{i % 2}"} and rec["text"] == texts[i]
        assert (rec["source"], rec["version"]) == (
            "generated",
            bundle_version(served.bundle.manifest),
        )
    own = (emb * gen).sum(1)  # (12,) each bulk item's score for its own text
    k = LIMITS["max_k"]
    rows = [served.query(t, k) for t in texts]
    found = 0
    for row, id_, score in zip(rows, ids, own, strict=True):
        if score > row[-1]["score"] + 1e-3:  # belongs in this top-k: must be there
            assert {h["id"]: h["score"] for h in row}[id_] == pytest.approx(score, abs=ATOL)
            found += 1
    assert found > 0


def test_upsert_replaces_the_vector_and_keeps_the_count(served):
    text_a, text_b = tiny_item_text(100), tiny_item_text(140)
    (emb_a, emb_b), (gen_a, gen_b) = served.expected([text_a, text_b])
    before = served.count()
    r = served.ingest([("up-1", text_a)])
    assert r.json()["results"] == [{"id": "up-1", "status": "created"}]
    assert served.count() == before + 1
    np.testing.assert_allclose(served.vector("up-1"), gen_a, atol=ATOL)

    r = served.ingest([("up-1", text_b), ("up-2", text_a)])
    assert r.status_code == 200
    assert r.json()["results"] == [
        {"id": "up-1", "status": "updated"},
        {"id": "up-2", "status": "created"},
    ]
    assert r.json()["count"] == 2
    assert served.count() == before + 2
    got = served.vector("up-1")
    np.testing.assert_allclose(got, gen_b, atol=ATOL)
    assert not np.allclose(got, gen_a, atol=ATOL)
    hits = {h["id"]: h["score"] for h in served.query(text_b, k=LIMITS["max_k"])}
    assert hits["up-1"] == pytest.approx(float(gen_b @ emb_b), abs=ATOL)
    assert abs(float(gen_a @ emb_b) - float(gen_b @ emb_b)) > 10 * ATOL


def test_delete_removes_the_item(served):
    text = tiny_item_text(150)
    before = served.count()
    assert served.ingest([("del-1", text)]).status_code == 200
    assert "del-1" in {h["id"] for h in served.query(text, k=LIMITS["max_k"])}
    r = served.client.delete("/v1/items/del-1", headers=AUTH)
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert served.client.get("/v1/items/del-1").status_code == 404
    assert "del-1" not in {h["id"] for h in served.query(text, k=LIMITS["max_k"])}
    assert served.count() == before
    r = served.client.delete("/v1/items/del-1", headers=AUTH)
    assert r.status_code == 404 and "not found" in r.json()["detail"]


def test_ids_with_slashes_and_unicode(served):
    id_ = "cat/sub item?é"
    assert served.ingest([(id_, tiny_item_text(160))]).status_code == 200
    r = served.client.get(f"/v1/items/{quote(id_, safe='')}")
    assert r.status_code == 200 and r.json()["id"] == id_
    r = served.client.delete(f"/v1/items/{quote(id_, safe='')}", headers=AUTH)
    assert r.status_code == 200
    for bad in ("%0A", "a%00b", "x" * 300):  # no item can have these ids: 404, not a 500
        assert served.client.get(f"/v1/items/{bad}").status_code == 404
        assert served.client.delete(f"/v1/items/{bad}", headers=AUTH).status_code == 404


def test_every_accepted_id_is_readable_and_deletable(served):
    """Ids a URL path cannot carry intact ('..' segments, '%2F', leading or trailing '/')
    are ingested, fetched and deleted through the batch endpoints (ids in the JSON body)."""
    ids = ["../x", "a/../b", "%2F", "a%2Fb", "/lead", "trail/", ".", "..", " sp ", "é" * 256]
    items = [(i, tiny_item_text(170 + n)) for n, i in enumerate(ids)]
    before = served.count()
    for s in range(0, len(items), LIMITS["max_items_per_request"]):
        assert served.ingest(items[s : s + LIMITS["max_items_per_request"]]).status_code == 200
    assert served.count() == before + len(ids)
    half = len(ids) // 2
    for chunk in (ids[:half], ids[half:]):
        r = served.client.post("/v1/items/fetch", json={"ids": chunk, "include_vectors": True})
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        assert [it["id"] for it in got] == chunk
        _, expect = served.expected([dict(items)[i] for i in chunk])
        np.testing.assert_allclose(np.asarray([it["vector"] for it in got]), expect, atol=ATOL)
    r = served.client.post("/v1/items/fetch", json={"ids": ["../x", "never-ingested"]})
    assert r.json()["items"][0]["id"] == "../x" and r.json()["items"][1] is None
    for chunk in (ids[:half], ids[half:]):
        r = served.client.post("/v1/items/delete", json={"ids": chunk}, headers=AUTH)
        assert r.status_code == 200 and all(x["deleted"] for x in r.json()["results"])
    assert served.count() == before
    r = served.client.post("/v1/items/delete", json={"ids": ["../x"]}, headers=AUTH)
    assert r.json()["results"] == [{"id": "../x", "deleted": False}]


@pytest.mark.parametrize(
    "body,status",
    [
        ({"ids": []}, 422),
        ({"ids": ["a", "a"]}, 422),
        ({"ids": [f"i{n}" for n in range(LIMITS["max_items_per_request"] + 1)]}, 413),
        ({"ids": ["a\tb"]}, 422),
        ({"ids": "a"}, 422),
        ({"ids": ["a"], "extra": 1}, 422),
    ],
    ids=["empty", "duplicate", "too many", "control char", "not a list", "unknown field"],
)
def test_bad_batch_reads_and_deletes_are_rejected(served, body, status):
    before = served.count()
    assert served.client.post("/v1/items/fetch", json=body).status_code == status
    r = served.client.post("/v1/items/delete", json=body, headers=AUTH)
    assert r.status_code == status and r.json()["detail"]
    assert served.count() == before


def test_query_with_several_texts_and_default_k(served):
    texts = [tiny_item_text(i) for i in (1, 2, 3)]
    r = served.client.post("/v1/query", json={"texts": texts})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 3
    assert all(len(hits) == LIMITS["default_k"] for hits in results)
    for hits in results:
        assert all(set(h) == {"id", "score", "source"} for h in hits)


def test_explain_names_the_neighbours_a_generated_classifier_comes_from(served):
    """GET ?explain=true reruns the serving generator on the stored text: its seen
    neighbours (real seen ids, positive cosine, attention shares), and the stored vector is
    reproduced; a trained item has no neighbours and says why."""
    text = tiny_item_text(480)
    assert served.ingest([("explain-me", text)]).status_code == 200
    r = served.client.get("/v1/items/explain-me", params={"explain": "true"})
    assert r.status_code == 200, r.text
    ex = r.json()["explain"]
    seen = set(served.bundle.item_ids)
    assert ex["made_by_this_bundle"] and ex["neighbors"]
    assert all(n["id"] in seen and n["cosine"] > 0 and n["attention"] >= 0 for n in ex["neighbors"])
    assert ex["cosine_to_stored_vector"] == pytest.approx(1.0, abs=1e-3)
    total = ex["self_attention"] + sum(n["attention"] for n in ex["neighbors"])
    assert total == pytest.approx(1.0, abs=1e-4)
    # the neighbours are the selector's: the seen items nearest to the text's embedding
    emb = served.bundle.encoder.encode([text])
    idx, _ = served.bundle.selector.search(emb, len(ex["neighbors"]))
    assert [n["id"] for n in ex["neighbors"]] == [served.bundle.item_ids[i] for i in idx[0]]
    trained = served.client.get("/v1/items/seen-0", params={"explain": "true"}).json()["explain"]
    assert trained["neighbors"] == [] and "trained" in trained["reason"]
    assert "explain" not in served.client.get("/v1/items/explain-me").json()


def test_records_are_stored_and_returned(served):
    """Items ingested with metadata: GET / fetch return text, metadata, source and the
    bundle's version; query hits carry source always and the payload fields asked for; an
    upsert replaces the record, a delete removes it."""
    from irene.bundle import bundle_version

    version = bundle_version(served.bundle.manifest)
    meta = {"brand": "acme", "price": 19.5, "stock": 3, "sale": True, "tags": ["red", "shoe"]}
    texts = [tiny_item_text(460 + i) for i in range(3)]
    items = [("rec-0", texts[0], meta), ("rec-1", texts[1], {"brand": "zeta"}), ("rec-2", texts[2])]
    assert served.ingest(items).status_code == 200
    want = {
        "rec-0": {"text": texts[0], "metadata": meta},
        "rec-1": {"text": texts[1], "metadata": {"brand": "zeta"}},
        "rec-2": {"text": texts[2], "metadata": {}},
    }
    for id_, rec in want.items():
        r = served.client.get(f"/v1/items/{id_}")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "id": id_, "dim": served.bundle.dim, "norm": pytest.approx(r.json()["norm"]),
            **rec, "source": "generated", "version": version,
        }  # fmt: skip
    r = served.client.post("/v1/items/fetch", json={"ids": ["rec-2", "nope", "rec-0"]})
    got = r.json()["items"]
    assert got[1] is None and got[0]["metadata"] == {} and got[2]["metadata"] == meta
    assert got[2]["text"] == texts[0] and got[2]["source"] == "generated"
    seen = served.client.get("/v1/items/seen-0").json()  # seeded: a trained classifier
    assert seen["source"] == "trained" and seen["version"] == version

    def top(text, **extra):
        hits = served.query(text, LIMITS["max_k"], **extra)
        assert all(h["source"] in ("trained", "generated") for h in hits)
        return {h["id"]: h for h in hits}

    plain = top(texts[0])["rec-0"]
    assert set(plain) == {"id", "score", "source"} and plain["source"] == "generated"
    full = top(texts[0], with_payload=True)["rec-0"]
    assert full == {**plain, "text": texts[0], "metadata": meta}
    assert top(texts[0], with_payload=["version"])["rec-0"] == {**plain, "version": version}
    assert top(texts[0], with_payload=["metadata"])["rec-0"] == {**plain, "metadata": meta}
    r = served.client.post("/v1/query", json={"text": "w1", "with_payload": ["vector"]})
    assert r.status_code == 422

    assert served.ingest([("rec-0", texts[1], {"brand": "new"})]).status_code == 200
    assert served.client.get("/v1/items/rec-0").json()["metadata"] == {"brand": "new"}
    assert top(texts[1], with_payload=True)["rec-0"]["text"] == texts[1]
    r = served.client.post("/v1/items/delete", json={"ids": ["rec-0", "rec-1"]}, headers=AUTH)
    assert r.status_code == 200
    r = served.client.post("/v1/items/fetch", json={"ids": ["rec-0", "rec-1", "rec-2"]})
    assert [it is None for it in r.json()["items"]] == [True, True, False]


def test_filters_count_scroll_and_delete_by_filter(served):
    """A filtered query returns only matching items and k of them whenever k match (the
    filter runs before the top-k); count, scroll and delete-by-filter agree with the items
    written; a bad clause is a 422 naming it."""
    shops = ["a", "b", "b", "c", "c", "c", "a", "b"]
    items = [
        (f"flt-{i}", tiny_item_text(600 + i), {"shop": s, "price": 10 * i, "new": i % 2 == 0})
        for i, s in enumerate(shops)
    ]
    assert served.ingest(items).status_code == 200
    query = tiny_item_text(601)
    only_b = {"must": [{"key": "shop", "match": {"value": "b"}}]}
    hits = served.query(query, 3, filter=only_b, with_payload=["metadata"])
    assert [h["metadata"]["shop"] for h in hits] == ["b"] * 3  # all 3 of 8 items, not fewer
    assert hits[0]["id"] == "flt-1"
    cheap_new = {
        "must": [{"key": "price", "range": {"lt": 50}}, {"key": "new", "match": {"value": True}}],
        "must_not": [{"id_prefix": "flt-0"}],
    }
    hits = served.query(query, LIMITS["max_k"], filter=cheap_new)
    assert {h["id"] for h in hits} == {"flt-2", "flt-4"}
    assert served.query(
        query, 5, filter={"must": [{"key": "source", "match": {"value": "trained"}}]}
    )
    assert all(h["source"] == "trained" for h in served.query(
        query, 5, filter={"must": [{"key": "source", "match": {"value": "trained"}}]}
    ))  # fmt: skip
    top = served.query(query, 5)
    floor = top[2]["score"]
    assert [h["id"] for h in served.query(query, 5, score_threshold=floor)] == [
        h["id"] for h in top if h["score"] >= floor
    ]

    def count(f):
        r = served.client.post("/v1/count", json={"filter": f})
        assert r.status_code == 200, r.text
        return r.json()["count"]

    prefix = {"must": [{"id_prefix": "flt-"}]}
    assert count(prefix) == 8 and count(only_b) == 3
    assert count({"must": [{"key": "shop", "match": {"any": ["a", "c"]}}]}) == 5
    seen, cursor = [], None
    while True:
        r = served.client.post(
            "/v1/items/scroll", json={"filter": prefix, "limit": 3, "cursor": cursor}
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 3
        seen += [(it["id"], it["metadata"]["shop"], it["text"]) for it in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted((i, m["shop"], t) for i, t, m in items)
    r = served.client.post("/v1/items/delete_by_filter", json={"filter": only_b})
    assert r.status_code == 401  # a write: needs the token
    r = served.client.post("/v1/items/delete_by_filter", json={"filter": only_b}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"deleted": 3}
    assert count(prefix) == 5 and count(only_b) == 0
    assert served.query(query, 3, filter=only_b) == []
    r = served.client.post("/v1/items/delete_by_filter", json={"filter": {}}, headers=AUTH)
    assert r.status_code == 422 and "every item" in r.text
    bad = {"must": [{"key": "price", "range": {}}]}
    r = served.client.post("/v1/query", json={"text": query, "filter": bad})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"][:5] == ["body", "filter", "must", 0, "field"] and "range" in err["msg"]
    r = served.client.post("/v1/items/delete_by_filter", json={"filter": prefix}, headers=AUTH)
    assert r.json() == {"deleted": 5}


def test_bad_metadata_gets_a_422_naming_the_field(served):
    ok = {"id": "bm-0", "text": tiny_item_text(470)}
    bad = {"id": "bm-1", "text": tiny_item_text(471), "metadata": {"brand": "a", "price": {}}}
    r = served.client.post("/v1/items", json={"items": [ok, bad]}, headers=AUTH)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert "items[1].metadata.price: expected a string, number, bool or list" in err["msg"]
    bad["metadata"] = {"tags": ["a", 3]}
    r = served.client.post("/v1/items", json={"items": [ok, bad]}, headers=AUTH)
    assert "items[1].metadata.tags[1]: a list may hold strings only" in r.json()["detail"][0]["msg"]
    bad["metadata"] = {"blob": "x" * 300}
    r = served.client.post("/v1/items", json={"items": [ok, bad]}, headers=AUTH)
    assert r.status_code == 413 and "items[1].metadata" in r.json()["detail"]
    assert "max_metadata_bytes=256" in r.json()["detail"]
    assert served.client.post("/v1/items/fetch", json={"ids": ["bm-0", "bm-1"]}).json() == {
        "items": [None, None]
    }


def test_concurrent_ingests_and_queries(served):
    before = served.count()
    ids = [f"conc-{i}" for i in range(12)]

    def ingest(i):
        return served.ingest([(ids[i], tiny_item_text(170 + i))]).status_code

    def query(i):
        return served.client.post("/v1/query", json={"text": tiny_item_text(i)}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(ingest, range(12))) + list(pool.map(query, range(12)))
    assert codes == [200] * 24
    assert served.count() == before + 12


def test_snapshot_is_written(served):
    r = served.client.post("/v1/snapshot", headers=AUTH)
    assert r.status_code == 200
    seq = r.json()["seq"]
    assert seq >= 1
    snaps = list(served.index_dir.glob("**/snapshots/*.snap"))  # one snapshots/ per shard actor
    assert any(int(p.stem) == seq for p in snaps), snaps


def test_metrics(served):
    from prometheus_client.parser import text_string_to_metric_families

    c = served.client
    assert served.ingest([("metrics-1", tiny_item_text(190))]).status_code == 200
    assert c.post("/v1/items", json={"items": []}).status_code == 401
    assert c.post("/v1/query", json={"text": "w1"}).status_code == 200
    count = served.count()
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)

    def value(name, **labels):
        return sum(s.value for s in samples.get(name, []) if labels.items() <= s.labels.items())

    assert value("irene_http_requests_total", route="/v1/items", status="200") >= 1
    assert value("irene_http_requests_total", route="/v1/items", status="401") >= 1
    assert value("irene_http_requests_total", route="/v1/query", status="200") >= 1
    assert value("irene_http_request_duration_seconds_count", route="/v1/query") >= 1
    assert value("irene_stage_duration_seconds_count", stage="encode") >= 1
    if served.placement == "ingress":  # this replica's micro-batches are timed too
        assert value("irene_stage_duration_seconds_count", stage="batch_encode") >= 1
    # one compute call encodes and searches the Ingress' own copies (copies_search), else the
    # batch searches the index view (batch_search); the hits are looked up either way
    local = served.placement == "ingress" and served.read_replica and not served.shard_readers
    if not local:
        assert value("irene_stage_duration_seconds_count", stage="batch_search") >= 1
    assert value("irene_stage_duration_seconds_count", stage="batch_lookup") >= 1
    if served.read_replica and not served.shard_readers:  # answered from the Ingress' copies
        assert value("irene_stage_duration_seconds_count", stage="copies_search") >= 1
    assert value("irene_stage_duration_seconds_count", stage="index_add") >= 1
    assert value("irene_stage_duration_seconds_count", stage="encode_search") >= 1
    assert value("irene_items_ingested_total") >= 1
    assert value("irene_index_items") == count
    assert value("irene_ingest_rate_items_per_second") > 0


def _stage_counts(served) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(served.client.get("/metrics").text):
        for s in fam.samples:
            if s.name == "irene_stage_duration_seconds_count":
                out[s.labels["stage"]] = s.value
    return out


def _reader_answers(served) -> list[int]:
    """Query batches answered from a ShardReader copy so far, per shard (the replica that
    Serve picks for the stats call; the sum grows when any answer came from a copy)."""
    return [served.reader_stats(i)["answered"]["copies"] for i in range(served.index["n_owners"])]


def test_read_replica_answers_right_after_an_ingest(served):
    """The query right after an acknowledged ingest is answered by the replica's own copy of
    the index (no index actor call) and finds the new item: the write waited for the copy.
    With shard readers: answered by the ShardReader copies, never by a shard actor."""
    if served.shard_readers:
        deadline = time.monotonic() + 60
        while not all(served.reader_stats(i)["fresh"] for i in range(served.index["n_owners"])):
            assert time.monotonic() < deadline, "the shard readers never loaded their copies"
            time.sleep(0.2)
        for i in range(6):
            text = tiny_item_text(420 + i)
            assert served.ingest([(f"fresh-reader-{i}", text)]).status_code == 200
            assert served.query(text, 1)[0]["id"] == f"fresh-reader-{i}"
        assert sum(_reader_answers(served)) > 0
        assert "copies_search" not in _stage_counts(served)  # no copy in the Ingress
        return
    if not served.read_replica:  # read_replica off: the copy never answers
        text = tiny_item_text(399)
        assert served.ingest([("fresh-actor", text)]).status_code == 200
        assert served.query(text, 1)[0]["id"] == "fresh-actor"
        assert "copies_search" not in _stage_counts(served)
        return
    deadline = time.monotonic() + 30
    while _stage_counts(served).get("copies_search", 0) == 0:  # copy loaded
        assert time.monotonic() < deadline, "the read replica never answered"
        served.query("warm up", 1)
        time.sleep(0.1)
    for i in range(3):
        text = tiny_item_text(400 + i)
        before = _stage_counts(served)
        assert served.ingest([(f"fresh-{i}", text)]).status_code == 200
        hits = served.query(text, 1)
        after = _stage_counts(served)
        assert hits[0]["id"] == f"fresh-{i}"
        assert after["copies_search"] == before["copies_search"] + 1
        assert after.get("fallback_search", 0) == before.get("fallback_search", 0)


def test_each_shard_holds_its_own_items(served):
    """Every shard actor holds exactly the ids the router assigns it (the sum is the index);
    with shard readers every reader replica's copy holds its shard's ids and no other."""
    import ray

    from irene.index.router import owner_name, owner_of
    from irene.index.sharded import int_id

    n = served.index["n_owners"]
    assert served.ingest([(f"part-{i}", tiny_item_text(440 + i)) for i in range(8)]).is_success
    counts = [
        ray.get(
            ray.get_actor(
                owner_name(served.index["name"], i, n), namespace=served.index["namespace"]
            ).count.remote()
        )
        for i in range(n)
    ]
    assert sum(counts) == served.count()
    if n > 1:
        assert all(c > 0 for c in counts), counts
    if not served.shard_readers:
        return
    for i in range(n):
        deadline = time.monotonic() + 30
        while (st := served.reader_stats(i))["count"] != counts[i]:  # caught up with the write
            assert time.monotonic() < deadline, (i, st["count"], counts[i])
            time.sleep(0.1)
        assert {owner_of(int_id(x), n) for x in st["ids"]} == {i}
        assert st["owner"] == i and st["n_owners"] == n


def test_fuzzed_requests_never_get_a_5xx(served):
    """Schemathesis generates requests from the app's own OpenAPI schema (valid and invalid
    bodies, paths, query strings; with the write token, so writes are exercised too): no
    reply is a 5xx and the app still answers afterwards. Bounded: FUZZ_EXAMPLES per operation."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    base = str(served.client.base_url).rstrip("/")
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path in ("/v1/snapshot",):  # a valid call writes a snapshot: no input to fuzz
            continue

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy())
        def run(case):
            nonlocal calls
            calls += 1
            r = case.call(base_url=base, headers=AUTH, timeout=30)
            if r.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {r.status_code}: {r.text[:200]}"
                )

        run()
    assert calls > 50
    assert not failures, failures[:5]
    assert served.client.get("/readyz").status_code == 200


def test_app_refuses_an_index_made_by_another_bundle(ray_local, tmp_path):
    """An index whose items name another bundle version: the app does not start (the error
    names both versions) unless allow_bundle_mismatch is set; then it serves."""
    from ray import serve

    from irene.bundle import bundle_version, read_manifest
    from irene.index.actor import IndexActor
    from irene.index.records import Records
    from irene.index.router import owner_name
    from serve_app.app import build_app

    bundle = make_tiny_bundle(str(tmp_path / "bundle"), n_seen=8)
    version = bundle_version(read_manifest(bundle))
    index_dir = str(tmp_path / "index")
    old = IndexActor.open(index_dir, read_manifest(bundle)["dim"], 3)
    x = np.eye(3, read_manifest(bundle)["dim"], dtype=np.float32)
    old.add(["a", "b", "c"], x, Records.of(["a", "b", "c"], source="generated", version="v-old"))
    old.close()
    name = f"irene-mismatch-{uuid.uuid4().hex[:6]}"
    args = {
        "bundle": bundle,
        "index": {"uri": index_dir, "name": name, "namespace": NAMESPACE, "n_shards": 3,
                  "num_cpus": 0.1},
        "auth": {"token": TOKEN, "token_env": "IRENE_TEST_UNSET_TOKEN"},
        "threads": 1,
        "encoder_placement": "ingress",
        # one failed constructor fails the deployment (Serve retries a few times by default)
        "deployment_options": {"Generator": {"ray_actor_options": {"num_cpus": 0.1}},
                               "Ingress": {"ray_actor_options": {"num_cpus": 0.1},
                                           "max_constructor_retry_count": 1}},
    }  # fmt: skip
    port = free_port()
    serve.shutdown()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        with pytest.raises(RuntimeError):
            serve.run(build_app(args), name="irene-mismatch", route_prefix="/")
        status = serve.status().applications["irene-mismatch"].deployments["Ingress"]
        assert "v-old (3 items)" in status.message and version in status.message, status
        serve.delete("irene-mismatch")
        serve.run(build_app({**args, "allow_bundle_mismatch": True}), name="irene-mismatch")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert c.get("/v1/items/a").json()["version"] == "v-old"
    finally:
        serve.shutdown()
        try:
            ray_local.kill(ray_local.get_actor(owner_name(name, 0, 1), namespace=NAMESPACE))
        except ValueError:
            pass

"""Bad input by hand and security: every malformed request a 4xx with a message that changes
nothing; tokens never in a log line or /metrics; loopback-only binding; protected reads; no
API parameter reaches outside the index's own storage."""

from __future__ import annotations

import json
import os
import socket
import uuid

import httpx

from tests.reliability.conftest import AUTH, LIMITS, TOKEN, deploy

BIG = LIMITS["max_body_bytes"]
WRONG_TOKEN = "wrong-token-a9d3e1"


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _cases() -> list[tuple[str, str, str, dict]]:
    """(name, method, path, httpx request kwargs); all of them must get a 4xx."""
    item = {"id": "bad-0", "text": "w1 w2"}
    raw = {"headers": {**AUTH, "content-type": "application/json"}}
    return [
        ("body over max_body_bytes", "POST", "/v1/items",
         {"json": {"items": [{"id": "bad-big", "text": "w1 " * BIG}]}, "headers": AUTH}),
        ("chunked body over the limit (no content-length)", "POST", "/v1/items",
         {"content": iter([b'{"items": [{"id": "bad-ch", "text": "', b"w" * 2 * BIG, b'"}]}']),
          **raw}),
        ("JSON nested 5,000 deep", "POST", "/v1/items",
         {"content": ('{"items": [{"id": "bad-n", "text": ' + _nested(5000) + "}]}").encode(),
          **raw}),
        ("JSON nested 5,000 deep in a query", "POST", "/v1/query",
         {"content": ('{"text": ' + _nested(5000) + "}").encode(), **raw}),
        ("non-UTF-8 bytes", "POST", "/v1/items",
         {"content": b'{"items": [{"id": "bad-u", "text": "\xff\xfe\xfd"}]}', **raw}),
        ("truncated JSON", "POST", "/v1/items", {"content": b'{"items": [{"id": ', **raw}),
        ("empty body", "POST", "/v1/items", {"content": b"", **raw}),
        ("not JSON (text/plain)", "POST", "/v1/query",
         {"content": b"hello", "headers": {"content-type": "text/plain"}}),
        ("k = 10**30", "POST", "/v1/query", {"json": {"text": "w1", "k": 10**30}}),
        ("k = -1", "POST", "/v1/query", {"json": {"text": "w1", "k": -1}}),
        ("k = 0", "POST", "/v1/query", {"json": {"text": "w1", "k": 0}}),
        ("k = 2.5", "POST", "/v1/query", {"json": {"text": "w1", "k": 2.5}}),
        ("k = max_k + 1", "POST", "/v1/query", {"json": {"text": "w1", "k": LIMITS["max_k"] + 1}}),
        ("k = NaN", "POST", "/v1/query", {"content": b'{"text": "w1", "k": NaN}', **raw}),
        ("k = Infinity", "POST", "/v1/query",
         {"content": b'{"text": "w1", "k": Infinity}', **raw}),
        ("text = NaN", "POST", "/v1/items",
         {"content": b'{"items": [{"id": "bad-nan", "text": NaN}]}', **raw}),
        ("id with a NUL", "POST", "/v1/items",
         {"json": {"items": [{"id": "bad\x00x", "text": "w1"}]}, "headers": AUTH}),
        ("id with a newline", "POST", "/v1/items",
         {"json": {"items": [{"id": "bad\nx", "text": "w1"}]}, "headers": AUTH}),
        ("id of 10 kB", "POST", "/v1/items",
         {"json": {"items": [{"id": "b" * 10_000, "text": "w1"}]}, "headers": AUTH}),
        ("empty id", "POST", "/v1/items",
         {"json": {"items": [{"id": "", "text": "w1"}]}, "headers": AUTH}),
        ("empty text", "POST", "/v1/items",
         {"json": {"items": [{"id": "bad-e", "text": ""}]}, "headers": AUTH}),
        ("whitespace text", "POST", "/v1/items",
         {"json": {"items": [{"id": "bad-w", "text": " \t\n "}]}, "headers": AUTH}),
        ("whitespace query", "POST", "/v1/query", {"json": {"text": "   "}}),
        ("unknown top-level field", "POST", "/v1/items",
         {"json": {"items": [item], "upsert": True}, "headers": AUTH}),
        ("unknown item field", "POST", "/v1/items",
         {"json": {"items": [{**item, "vector": [1.0]}]}, "headers": AUTH}),
        ("unknown query field", "POST", "/v1/query", {"json": {"text": "w1", "filter": "x"}}),
        ("no items", "POST", "/v1/items", {"json": {"items": []}, "headers": AUTH}),
        ("too many items", "POST", "/v1/items",
         {"json": {"items": [{"id": f"bad-m{i}", "text": "w1"} for i in range(
             LIMITS["max_items_per_request"] + 1)]}, "headers": AUTH}),
        ("too many query texts", "POST", "/v1/query",
         {"json": {"texts": ["w1"] * (LIMITS["max_texts_per_query"] + 1)}}),
        ("text and texts", "POST", "/v1/query", {"json": {"text": "w1", "texts": ["w2"]}}),
        ("items is an object", "POST", "/v1/items",
         {"json": {"items": {"id": "bad-o"}}, "headers": AUTH}),
        ("fetch with no ids", "POST", "/v1/items/fetch", {"json": {"ids": []}}),
        ("delete with a NUL id", "POST", "/v1/items/delete",
         {"json": {"ids": ["x\x00"]}, "headers": AUTH}),
        ("PUT /v1/items", "PUT", "/v1/items", {"json": {"items": [item]}, "headers": AUTH}),
        ("GET of a 10 kB id", "GET", "/v1/items/" + "b" * 10_000, {}),
        ("GET ../../etc/passwd", "GET", "/v1/items/..%2F..%2F..%2Fetc%2Fpasswd", {}),
        ("metadata nested 5,000 deep", "POST", "/v1/items",
         {"content": ('{"items": [{"id": "bad-md", "text": "w1", "metadata": {"a": '
                      + _nested(5000) + "}}]}").encode(), **raw}),
        ("metadata value Infinity", "POST", "/v1/items",
         {"content": b'{"items": [{"id": "bad-mi", "text": "w1", "metadata": {"a": Infinity}}]}',
          **raw}),
        ("metadata integer 2**70", "POST", "/v1/items",
         {"json": {"items": [{**item, "metadata": {"a": 2**70}}]}, "headers": AUTH}),
        ("metadata of 1,000 keys", "POST", "/v1/items",
         {"json": {"items": [{**item, "metadata": {f"k{i}": i for i in range(1000)}}]},
          "headers": AUTH}),
        ("metadata key with a NUL", "POST", "/v1/items",
         {"json": {"items": [{**item, "metadata": {"a\x00": 1}}]}, "headers": AUTH}),
        ("with_payload naming a vector", "POST", "/v1/query",
         {"json": {"text": "w1", "with_payload": ["vector"]}}),
    ]  # fmt: skip


def test_bad_input_gets_a_4xx_and_changes_nothing(shared_app, scale, report):
    app = shared_app
    rows, bad = [], []
    with app.http() as c:
        before = c.get("/readyz").json()["index_count"]
        probe = c.post("/v1/query", json={"text": "w1 w2 w3", "k": 5}).json()
        for name, method, path, kw in _cases():
            r = c.request(method, path, **kw)
            try:
                detail = r.json().get("detail")
            except (json.JSONDecodeError, UnicodeDecodeError):
                detail = None
            ok = 400 <= r.status_code < 500 and bool(detail)
            rows.append(f"| {name} | {r.status_code} | {str(detail)[:70]!r} |".replace("\n", " "))
            if not ok:
                bad.append((name, r.status_code, r.text[:200]))
        after = c.get("/readyz").json()["index_count"]
        again = c.post("/v1/query", json={"text": "w1 w2 w3", "k": 5}).json()
        ids = ["bad-0", "bad-big", "bad-ch", "bad-n", "bad-u", "bad-nan", "bad-e", "bad-w"]
        ids += ["bad-md", "bad-mi"]
        ids += [f"bad-m{i}" for i in range(LIMITS["max_items_per_request"] + 1)]
        created = [
            i for i, it in zip(ids, _fetch(c, ids), strict=True) if it is not None
        ]  # fmt: skip
    table = "\n".join(["| request | status | detail |", "|---|---:|---|", *rows])
    figures = {
        "hand-made bad requests": len(rows),
        "answered with a 4xx and a message": len(rows) - len(bad),
        "anything else": bad,
        "index count before / after": [before, after],
        "items created by bad requests": created,
    }
    report.add("Bad input by hand", scale, figures, table)
    assert not bad, bad
    assert before == after and not created and probe == again


def _fetch(c: httpx.Client, ids: list[str]) -> list:
    out = []
    for s in range(0, len(ids), LIMITS["max_items_per_request"]):
        r = c.post("/v1/items/fetch", json={"ids": ids[s : s + LIMITS["max_items_per_request"]]})
        assert r.status_code == 200, r.text
        out += r.json()["items"]
    return out


# --------------------------------------------------------------------------- security
def _non_loopback_ip() -> str | None:
    import ray

    ip = ray.util.get_node_ip_address()
    return None if ip.startswith("127.") else ip


def test_security(serve_port, bundle_dir, shared_app, scale, report, tmp_path):
    import ray

    figures: dict = {}
    # 1. writes need the right token
    with shared_app.http() as c:
        writes = [
            ("POST", "/v1/items", {"json": {"items": [{"id": "sec-1", "text": "w1"}]}}),
            ("POST", "/v1/items/delete", {"json": {"ids": ["sec-1"]}}),
            ("DELETE", "/v1/items/sec-1", {}),
            ("POST", "/v1/snapshot", {}),
        ]
        statuses = []
        for method, path, kw in writes:
            for headers in ({}, {"Authorization": f"Bearer {WRONG_TOKEN}"}):
                statuses.append(c.request(method, path, headers=headers, **kw).status_code)
        assert c.post("/v1/items/fetch", json={"ids": ["sec-1"]}).json()["items"] == [None]
        metrics = c.get("/metrics").text
    figures["writes without / with a wrong token"] = sorted(set(statuses))
    assert all(s in (401, 403) for s in statuses), statuses

    # 2. no API parameter reaches outside the index's storage: ids shaped like paths are
    # keys, never file names
    marker = f"irene-escape-{uuid.uuid4().hex[:8]}"
    evil = [f"../../../../../tmp/{marker}", f"/tmp/{marker}", f"..%2F..%2F{marker}", marker]
    with shared_app.http() as c:
        body = {"items": [{"id": i, "text": "w1 w2"} for i in evil]}
        assert c.post("/v1/items", json=body, headers=AUTH).status_code == 200
        assert c.post("/v1/snapshot", headers=AUTH).status_code == 200
        assert c.post("/v1/items/delete", json={"ids": evil}, headers=AUTH).status_code == 200
        passwd = c.get("/v1/items/..%2F..%2F..%2F..%2Fetc%2Fpasswd").status_code
    escaped = [
        os.path.join(root, n)
        for top in ("/tmp", str(tmp_path.parent.parent))
        for root, dirs, files in os.walk(top)
        for n in dirs + files
        if marker in n
    ]
    figures["files named after path-like ids anywhere under /tmp"] = len(escaped)
    figures["GET /v1/items/..%2F..%2F..%2F..%2Fetc%2Fpasswd"] = passwd
    assert not escaped and passwd == 404

    # 3. protected reads
    auth = {"token": TOKEN, "token_env": "IRENE_TEST_UNSET_TOKEN", "protect_reads": True}
    with deploy(serve_port, bundle_dir, str(tmp_path / "index"), auth=auth) as app:
        with app.http() as c:
            q = {"text": "w1 w2", "k": 3}
            reads = {
                "query without a token": c.post("/v1/query", json=q).status_code,
                "query with a wrong token": c.post(
                    "/v1/query", json=q, headers={"Authorization": f"Bearer {WRONG_TOKEN}"}
                ).status_code,
                "fetch without a token": c.post("/v1/items/fetch", json={"ids": ["x"]}).status_code,
                "query with the token": c.post("/v1/query", json=q, headers=AUTH).status_code,
                "healthz without a token": c.get("/healthz").status_code,
            }
            metrics += c.get("/metrics").text
    figures["protect_reads"] = reads
    assert reads["query without a token"] in (401, 403)
    assert reads["query with a wrong token"] in (401, 403)
    assert reads["fetch without a token"] in (401, 403)
    assert reads["query with the token"] == 200 and reads["healthz without a token"] == 200

    # 4. the proxy listens on 127.0.0.1 only
    ip = _non_loopback_ip()
    reachable = None
    if ip is not None:
        with socket.socket() as s:
            s.settimeout(2)
            reachable = s.connect_ex((ip, serve_port)) == 0
    figures[f"Serve port reachable on this host's address {ip}"] = reachable
    assert not reachable

    # 5. the tokens appear in no log line of the Ray session (Serve access logs, replica and
    # actor logs, driver logs) and nowhere in /metrics
    session = ray._private.worker._global_node.get_session_dir_path()
    hits, n_files = [], 0
    for root, _, files in os.walk(session):
        for n in files:
            path = os.path.join(root, n)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            n_files += 1
            for tok in (TOKEN, WRONG_TOKEN):
                if tok.encode() in data:
                    hits.append((path, tok))
    figures["Ray session files searched for the tokens"] = n_files
    figures["files containing a token"] = len(hits)
    figures["/metrics containing a token"] = TOKEN in metrics or WRONG_TOKEN in metrics
    report.add("Security", scale, figures)
    assert n_files > 10 and not hits, hits
    assert not figures["/metrics containing a token"]

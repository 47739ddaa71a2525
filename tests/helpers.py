"""Tiny in-test fixtures: a random 2-layer BERT encoder and a synthetic XC dataset."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import scipy.sparse as sp

WORDS = [f"w{i}" for i in range(200)]


def make_tiny_encoder(path: str, hidden: int = 32, seed: int = 0) -> str:
    """Write a randomly initialised BERT + word-level tokenizer to ``path``; returns it."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    os.makedirs(path, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(os.path.join(path, "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def synthetic_xc(n_labels: int = 40, n_train: int = 300, n_test: int = 100, seed: int = 0):
    """A small XC dataset whose query texts share words with their labels' texts."""
    from irene.data.xc import XCDataset

    rng = np.random.default_rng(seed)
    label_words = [rng.choice(WORDS, size=3, replace=False) for _ in range(n_labels)]
    Y = [" ".join(ws) for ws in label_words]

    def queries(n):
        texts, rows, cols = [], [], []
        for i in range(n):
            labs = rng.choice(n_labels, size=int(rng.integers(1, 4)), replace=False)
            words = [w for lab in labs for w in rng.choice(label_words[lab], size=2, replace=False)]
            words += list(rng.choice(WORDS, size=2))
            rng.shuffle(words)
            texts.append(" ".join(words))
            rows += [i] * len(labs)
            cols += list(labs)
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n_labels))
        m.sort_indices()
        return texts, m

    trn_X, trn_Y = queries(n_train)
    tst_X, tst_Y = queries(n_test)
    return XCDataset(trn_X=trn_X, tst_X=tst_X, Y=Y, trn_X_Y=trn_Y, tst_X_Y=tst_Y, name="synthetic")


def random_pairs(n: int, S: int, d: int, density: float, m: int, seed: int = 0):
    """(q (n', d) float32, Y (n', S) csr of 1s, neg (n', m) item ids): random queries, labels
    and mined negatives, rows without a label dropped."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, d)).astype(np.float32)
    Y = sp.random(n, S, density=density, format="csr", random_state=seed, dtype=np.float32)
    Y.data[:] = 1
    keep = np.diff(Y.indptr) > 0
    Y, q = Y[keep], q[keep]
    return q, Y, rng.integers(0, S, size=(Y.shape[0], m))


def make_tiny_bundle(path: str, n_seen: int = 30, seed: int = 0) -> str:
    """Write a small but complete bundle (tiny random encoder, untrained parts) to ``path``.

    Seen item ids are ``seen-0 .. seen-{n_seen-1}`` with texts ``tiny_item_text(i)``.
    """
    import tempfile

    import torch

    from irene.bundle import save_bundle
    from irene.config import EncoderConfig, GeneratorConfig, TrainConfig
    from irene.model.classifiers import OVAClassifiers
    from irene.model.encoder import TextEncoder
    from irene.model.generator import IreneGenerator
    from irene.model.selector import Selector

    enc_dir = make_tiny_encoder(tempfile.mkdtemp(prefix="tiny-enc-"), seed=seed)
    cfg = TrainConfig(
        encoder=EncoderConfig(model=enc_dir, max_length=16, batch_size=16),
        generator=GeneratorConfig(num_heads=2, dropout=0.0),
    )
    enc = TextEncoder.from_config(cfg.encoder)
    emb = enc.encode([tiny_item_text(i) for i in range(n_seen)])
    torch.manual_seed(seed)
    clf = OVAClassifiers(torch.from_numpy(emb))
    with torch.no_grad():
        clf.delta.normal_(std=0.05)
    gen = IreneGenerator(emb.shape[1], cfg.generator).eval()
    save_bundle(
        path,
        enc,
        clf,
        gen,
        Selector(emb),
        [f"seen-{i}" for i in range(n_seen)],
        cfg,
        {"note": "tiny test bundle"},
    )
    return path


def tiny_item_text(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3))


@contextmanager
def tmpfs_mount(path, size: str = "1m"):
    """A real tmpfs of ``size`` mounted at ``path`` (created) for the block. A failed mount
    fails the test (never a skip): the suite runs as root, as CI does."""
    import pytest

    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    if r.returncode != 0:
        who = "root" if os.geteuid() == 0 else "a non-root user (needs CAP_SYS_ADMIN)"
        pytest.fail(f"mount -t tmpfs failed as {who} (exit {r.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path, opts: str) -> bool:
    """``mount -o remount,OPTS path``; whether it succeeded."""
    cmd = ["mount", "-o", f"remount,{opts}", str(path)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


N_ITEMS, N_COLD = 40, 6  # the last N_COLD catalogue items have no interactions


def write_catalogue_dir(path, ext: str = "parquet", new_items: int = 0) -> dict:
    """A catalogue of N_ITEMS items with metadata, interactions for all but the last N_COLD,
    held-out queries and ``new_items`` items that arrive after training (new_items.jsonl);
    returns what was written."""
    import json

    import pyarrow as pa

    from irene.data.catalogue import write_table

    ds = synthetic_xc(n_labels=N_ITEMS, n_train=300, n_test=60, seed=3)
    ids = [f"sku-{i:03d}" for i in range(N_ITEMS)]
    meta = {
        "category": [f"cat{i % 4}" for i in range(N_ITEMS)],
        "price": [float(i) + 0.5 for i in range(N_ITEMS)],
        "in_stock": [i % 3 != 0 for i in range(N_ITEMS)],
        "tags": [[f"t{i % 5}", "all"] for i in range(N_ITEMS)],
    }
    write_table(str(path / f"catalogue.{ext}"), pa.table({"id": ids, "text": ds.Y, **meta}))

    def pairs(texts, Y, drop_cold: bool):
        coo = Y.tocoo()
        keep = coo.col < N_ITEMS - N_COLD if drop_cold else np.ones(len(coo.col), bool)
        return pa.table(
            {
                "query": [texts[r] for r in coo.row[keep]],
                "item_id": [ids[c] for c in coo.col[keep]],
                "weight": np.ones(int(keep.sum()), dtype=np.float64),
            }
        )

    train = pairs(ds.trn_X, ds.trn_X_Y, True)
    write_table(str(path / f"interactions.{ext}"), train)
    write_table(str(path / f"eval_interactions.{ext}"), pairs(ds.tst_X, ds.tst_X_Y, False))
    rng = np.random.default_rng(7)
    new = [
        {
            "id": f"new-{i:03d}",
            "text": " ".join(rng.choice(WORDS, size=3, replace=False)),
            "metadata": {"category": "new", "price": float(i)},
        }
        for i in range(new_items)
    ]
    if new:
        (path / "new_items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in new))
    return {
        "new": new,
        "ids": ids,
        "texts": ds.Y,
        "meta": meta,
        "trained": set(train["item_id"].to_pylist()),
    }


def named_search(index, queries, k: int) -> list[list[tuple[str, float]]]:
    """``[(string id, score), ...]`` per query of any index with ``search`` (arrays) and
    ``lookup`` (ShardedIndex, DurableIndex, IndexActor, RoutedIndex)."""
    from irene.index.topk import named

    scores, ids = index.search(np.asarray(queries, dtype=np.float32), k)
    return named(scores, ids, lambda i: index.lookup(i)[0])


@contextmanager
def serve_app(args: dict, ready_s: float = 60.0):
    """The irene Serve app of ``args`` behind Serve's HTTP on a free 127.0.0.1 port: yields an
    ``httpx.Client`` on it once ``/readyz`` answers 200; Serve is shut down on exit."""
    import time

    import httpx
    from ray import serve

    from serve_app.app import build_app
    from tests.conftest import free_port

    port = free_port()
    serve.shutdown()  # a Serve instance left over would ignore our http_options
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        serve.run(build_app(args), name="irene", route_prefix="/")
        deadline = time.monotonic() + ready_s
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "app did not become ready"
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        serve.shutdown()


def old_index_blob(index, version: int, records_of=None) -> bytes:
    """``index.to_bytes()`` as an older build wrote it: state version 1 (string ids, no
    records) or 2 (string ids beside the records of ``records_of``, an index holding some of
    those ids, each with a record)."""
    import io
    import json

    from irene.index.sharded import int_id

    st = index.state_dict()
    names = index.ids()
    meta = {"version": version, "dim": st["dim"], "n_shards": st["n_shards"], "spec": st["spec"]}
    arrays = {}
    for i, shard in enumerate(st["shards"]):  # then each shard its own .npz blob
        blob = io.BytesIO()
        np.savez(blob, **shard)
        arrays[f"shard_{i}"] = np.frombuffer(blob.getvalue(), dtype=np.uint8)
    if version == 2:
        rec = records_of.state_dict()["records"]
        meta["record_versions"] = rec["versions"]
        cols = ("ids", "text_off", "text", "meta_off", "meta", "source", "version")
        arrays.update({f"rec_{k}": rec[k] for k in cols})
    buf = io.BytesIO()
    np.savez(
        buf,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        int_ids=np.array([int_id(s) for s in names], dtype=np.int64),
        str_ids=np.frombuffer(json.dumps(names).encode(), dtype=np.uint8),
        **arrays,
    )
    return buf.getvalue()


@contextmanager
def json_http_server(answer):
    """A stub HTTP/1.1 server on 127.0.0.1 answering GETs and POSTs with ``answer(method,
    path, headers, body) -> (status, reply)`` (``body``: the JSON of a POST, else None;
    ``reply``: JSON); yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def _handle(self, body) -> None:
            status, reply = answer(self.command, self.path, self.headers, body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 -- http.server's hook names
            self._handle(None)

        def do_POST(self):  # noqa: N802
            self._handle(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def force_plan(mp, plan: str) -> None:
    """Make ``Shard.plan`` choose ``plan`` ("exact" or "selector") for every filtered search,
    through the monkeypatch ``mp``: gathering a vector then costs nothing or forever."""
    from irene.index import shard as shard_mod

    for key in shard_mod.GATHER_NS:
        mp.setitem(shard_mod.GATHER_NS, key, 0 if plan == "exact" else 10**12)


class AsyncOwners:
    """In-process owners (a ``RoutedIndex``) behind the async index-view interface the shard
    actors give (``irene.index.view.IndexView``); ``calls`` counts the calls."""

    def __init__(self, routed) -> None:
        self.routed, self.calls = routed, 0

    async def search(self, q, k, filter=None):
        self.calls += 1
        return self.routed.search(q, k)

    async def lookup(self, ids):
        self.calls += 1
        return self.routed.lookup(ids)

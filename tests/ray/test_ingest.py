"""Bulk ingest on Ray Data: the same items, vectors and records (metadata included) as
in-process, a rerun skips everything, and a shard actor SIGKILLed mid-ingest loses nothing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import faiss  # noqa: F401 -- faiss before anything that may pull in torch
import numpy as np
import pytest

from irene.config import load_config
from irene.ingest import ingest_local, iter_items, open_local_index
from irene.ray.ingest import ingest_ray, read_items, shard_actors
from tests.helpers import make_tiny_bundle, tiny_item_text

NAMESPACE = "irene-tests"


def _cfg(bundle, items, uri, name, executor, batch_size=8):
    index = {"uri": uri, "name": name, "namespace": NAMESPACE, "n_owners": 2, "n_shards": 2,
             "num_cpus": 0.0}  # fmt: skip
    return load_config(
        None, [f"ingest.batch_size={batch_size}"], bundle=bundle, executor=executor,
        ingest={"items": items, "index": index, "encode_actors": 1},
    )  # fmt: skip


def _meta(n: int) -> dict:
    return {"brand": f"b{n % 4}", "price": n + 0.25, "tags": [f"t{n % 3}"], "sale": n % 2 == 1}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "tsv"])
def test_read_items_carries_metadata_like_in_process(ray_local, tmp_path, fmt):
    """Ray Data's reader yields the rows, texts and metadata of ``iter_items``: a metadata
    object column and the extra columns of Parquet / JSONL, none for TSV."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"id": f"r{n}", "text": tiny_item_text(n), "metadata": _meta(n), "stock": n}
        for n in range(30)
    ]
    path = tmp_path / f"items.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
    else:
        path.write_text("".join(f"{r['id']}\t{r['text']}\n" for r in rows))
    batches = list(iter_items(str(path), 8))
    want = sorted(r for ids, ts, ms in batches for r in zip(ids, ts, ms, strict=True))
    got = sorted((r["id"], r["text"], r["meta"]) for r in read_items(str(path), 4).take_all())
    assert got == want and len(got) == 30
    metas = {i: json.loads(m) for i, _, m in got}
    if fmt == "tsv":
        assert list(metas.values()) == [{}] * 30
    else:
        assert metas["r5"] == {**_meta(5), "stock": 5}


@pytest.mark.slow  # ~45 s; `make test` runs the Ray job through the demo (test_pipeline.py)
def test_ray_ingest_equals_local_resumes_and_survives_a_shard_kill(ray_local, tmp_path):
    import ray

    bundle = make_tiny_bundle(str(tmp_path / "bundle"), n_seen=20)
    ids = [f"n{i}" for i in range(120)]
    texts = [tiny_item_text(200 + i) for i in range(120)]
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(
            json.dumps({"id": i, "text": t, "metadata": _meta(n)}) + "\n"
            for n, (i, t) in enumerate(zip(ids, texts, strict=True))
        )
    )
    name = f"ingest-{uuid.uuid4().hex[:8]}"

    # the reference: the same items ingested in-process into another index
    local = _cfg(bundle, str(items), str(tmp_path / "local"), "unused", "local")
    assert ingest_local(local, show_progress=False).written == 120
    ref = open_local_index(local.ingest.index, 32)
    want = np.stack(ref.get_many(ids))
    want_records = ref.get_records(ids)
    ref.close()
    assert [r["metadata"] for r in want_records] == [_meta(n) for n in range(120)]

    cfg = _cfg(bundle, str(items), str(tmp_path / "index"), name, "ray", batch_size=4)
    index = shard_actors(cfg.ingest.index, 32)
    handles = index.owners
    pid = ray.get(handles[1].stats.remote())["pid"]
    killed = []

    def kill_shard_1_mid_run():  # once the ingest has written something
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if ray.get(handles[1].count.remote(), timeout=10) >= 8:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(time.monotonic())
                    return
            except Exception:  # noqa: BLE001 -- still starting
                pass
            time.sleep(0.05)

    killer = threading.Thread(target=kill_shard_1_mid_run)
    killer.start()
    try:
        rep = ingest_ray(cfg, show_progress=False).to_dict()
        killer.join(timeout=130)
        assert killed, "shard 1 was never killed"
        assert ray.get(handles[1].stats.remote())["pid"] != pid  # restarted by Ray
        assert rep["index_count"] == 120 and rep["written"] + rep["skipped"] == 120
        assert rep["stage_seconds"]["encode"] > 0
        stats = index.stats()
        integ = stats["integrity"]
        assert integ["ids"] == integ["labels"] == integ["stored"] - integ["tombstones"] == 120
        np.testing.assert_allclose(np.stack(index.get_many(ids)), want, atol=1e-5)
        assert index.get_records(ids) == want_records  # text, metadata, source, version
        again = ingest_ray(cfg, show_progress=False).to_dict()
        assert (again["written"], again["skipped"], again["index_count"]) == (0, 120, 120)
    finally:
        for h in handles:
            ray.kill(h)

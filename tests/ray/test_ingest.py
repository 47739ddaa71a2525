"""Bulk ingest on Ray Data: the same items and vectors as in-process, a rerun skips
everything, and a shard actor SIGKILLed mid-ingest loses nothing."""

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
from irene.ingest import ingest_local, open_local_index
from irene.ray.ingest import ingest_ray, shard_actors
from tests.helpers import make_tiny_bundle, tiny_item_text

NAMESPACE = "irene-tests"


def _cfg(bundle, items, uri, name, executor, batch_size=8):
    index = {"uri": uri, "name": name, "namespace": NAMESPACE, "n_owners": 2, "n_shards": 2,
             "num_cpus": 0.0}  # fmt: skip
    return load_config(
        None, [f"ingest.batch_size={batch_size}"], bundle=bundle, executor=executor,
        ingest={"items": items, "index": index, "encode_actors": 1},
    )  # fmt: skip


@pytest.mark.slow  # ~45 s; `make test` runs the Ray job through the demo (test_pipeline.py)
def test_ray_ingest_equals_local_resumes_and_survives_a_shard_kill(ray_local, tmp_path):
    import ray

    bundle = make_tiny_bundle(str(tmp_path / "bundle"), n_seen=20)
    ids = [f"n{i}" for i in range(120)]
    texts = [tiny_item_text(200 + i) for i in range(120)]
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True))
    )
    name = f"ingest-{uuid.uuid4().hex[:8]}"

    # the reference: the same items ingested in-process into another index
    local = _cfg(bundle, str(items), str(tmp_path / "local"), "unused", "local")
    assert ingest_local(local, show_progress=False).written == 120
    ref = open_local_index(local.ingest.index, 32)
    want = np.stack(ref.get_many(ids))
    ref.close()

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
        again = ingest_ray(cfg, show_progress=False).to_dict()
        assert (again["written"], again["skipped"], again["index_count"]) == (0, 120, 120)
    finally:
        for h in handles:
            ray.kill(h)

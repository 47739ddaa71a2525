"""A plain single-process FastAPI service doing encode + index search with micro-batching.

The reference point of ``bench/serve_bench.py``: one uvicorn process, no Ray. Concurrent
``POST /v1/query`` requests are collected by an asyncio queue into one encode batch (up to
``--max-batch`` requests, waiting at most ``--wait-ms`` after the first), then encoded and
searched in one compute thread whose torch/faiss thread counts are set inside it.

    python bench/plain_service.py --bundle runs/serve_bench/bundle --port 8100 [--workers 2]

``--workers N``: N uvicorn worker processes on the one port (uvicorn's own multi-process mode,
as one would run FastAPI on N cores), each loading the bundle and holding its own index.

The index is an in-memory ``ShardedIndex`` holding the bundle's seen classifiers (the same
vectors and shard count the Serve app seeds its index with).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict


class QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    k: int = 10


class MicroBatcher:
    """Collects concurrent (text, k) requests into one ``fn(texts, k)`` call."""

    def __init__(self, fn, pool: ThreadPoolExecutor, max_batch: int, wait_s: float) -> None:
        self.fn = fn
        self.pool = pool
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, text: str, k: int):
        if self.task is None:  # started lazily, inside uvicorn's event loop
            self.start()
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((text, k, fut))
        return await fut

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            texts = [t for t, _, _ in batch]
            k = max(k for _, k, _ in batch)
            try:
                rows = await loop.run_in_executor(self.pool, self.fn, texts, k)
            except Exception as e:  # fail this batch's requests, keep serving
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, kk, fut), row in zip(batch, rows, strict=True):
                if not fut.done():
                    fut.set_result(row[:kk])


def make_app(bundle_uri: str, threads: int, max_batch: int, wait_s: float, n_shards: int):
    from irene.bundle import load_bundle
    from irene.device import set_threads
    from irene.index.sharded import ShardedIndex

    bundle = load_bundle(bundle_uri, device="cpu")
    index = ShardedIndex(bundle.dim, n_shards)
    index.add(bundle.item_ids, bundle.seen_classifiers())
    pool = ThreadPoolExecutor(1, initializer=set_threads, initargs=(threads,))

    def encode_search(texts: list[str], k: int):
        q = bundle.encoder.encode(texts)  # (m, d)
        return index.search_named(np.asarray(q, dtype=np.float32), k)  # [(id, score)] per text

    batcher = MicroBatcher(encode_search, pool, max_batch, wait_s)
    app = FastAPI(title="plain IRENE query service")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "count": index.count, "pid": os.getpid()}

    @app.post("/v1/query")
    async def query(req: QueryIn) -> JSONResponse:
        hits = await batcher.submit(req.text, req.k)
        return JSONResponse({"results": [[{"id": i, "score": s} for i, s in hits]]})

    return app


_ENV = "PLAIN_SERVICE_ARGS"  # the worker processes' make_app arguments (JSON)


def app_from_env():
    """The app of one worker process (``--workers`` > 1), from :data:`_ENV`."""
    return make_app(**json.loads(os.environ[_ENV]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--wait-ms", type=float, default=2.0)
    p.add_argument("--n-shards", type=int, default=4)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = p.parse_args()

    import uvicorn

    kw = {
        "bundle_uri": args.bundle,
        "threads": args.threads,
        "max_batch": args.max_batch,
        "wait_s": args.wait_ms / 1000,
        "n_shards": args.n_shards,
    }
    run = {"host": args.host, "port": args.port, "log_level": "warning", "access_log": False}
    if args.workers == 1:
        uvicorn.run(make_app(**kw), **run)
        return
    os.environ[_ENV] = json.dumps(kw)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # workers import this file
    uvicorn.run("plain_service:app_from_env", factory=True, workers=args.workers, **run)


if __name__ == "__main__":
    main()

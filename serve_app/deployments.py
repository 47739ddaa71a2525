"""Ray Serve deployments: ``Encoder``, ``Generator``, ``ShardReader`` and the FastAPI ``Ingress``.

Request flow::

    POST /v1/items  -> Ingress -> Encoder.encode (batched) -> Generator.generate (batched)
                            -> index actor .add (returns after the write-ahead log write
                               and once every read replica has the batch)
    POST /v1/query  -> Ingress -> Encoder.search (batched: one encode, then one search of
                                   this replica's copy of the index, or one index actor
                                   .search call, for all concurrent queries; the hits'
                                   records from where the search ran: see serve_app.readers)

An ingested item is stored with its record (text, metadata, source "generated", the serving
bundle's version): ``GET /v1/items/{id}`` and ``POST /v1/items/fetch`` return it, query hits
carry ``source`` and, with ``with_payload``, ``text`` / ``metadata`` / ``version``.

With ``encoder_placement: ingress`` the Ingress replica runs the encoder itself
(:mod:`serve_app.encoding`) and no ``Encoder`` deployment exists: a query then takes no Serve
hop at all -- the fastest placement on CPU-only machines. With ``index.read_replica`` (the
default) the encoding replica also searches its own copy of the index (``irene.index.feed``),
so a query makes no Ray call; without it, one index actor call per batch. With
``index.shard_readers`` each shard actor gets a ``ShardReader-<i>`` deployment whose replicas
hold a copy of that shard only (scaled on its own), and a query batch makes one call to one
replica of each.

The index is the named, detached actor of ``irene.ray.index`` (shared by every Ingress
replica and surviving redeploys of the app; :func:`index_actor` is the one way to reach it;
with ``index.n_owners > 1`` it is one actor per shard behind a router).
On start an Ingress replica asks an *empty* index to seed itself with the bundle's seen items'
trained classifiers (the actor reads them from the bundle). Handlers see one encoder interface
(``encode``/``search``): a :class:`BatchedEncoder` in this replica or :class:`RemoteEncoder`
over the Encoder deployment's handle.

NOTE: no ``from __future__ import annotations`` here -- FastAPI under Serve must see real
annotations to parse request bodies.
"""

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve

from irene import io
from irene.index.log import StorageUnavailable
from irene.index.records import Records
from serve_app.auth import AuthError, TokenAuth
from serve_app.batching import Coalescer
from serve_app.encoding import BatchedEncoder, compute_pool, replica_threads
from serve_app.metrics import ReplicaMetrics
from serve_app.middleware import BodyLimitMiddleware, MetricsMiddleware
from serve_app.readers import ShardCopy, ShardReaders, awith_records, with_records
from serve_app.schemas import (
    AppArgs,
    BatchSettings,
    DeleteManyResponse,
    DeleteResponse,
    FetchResponse,
    Health,
    IdsRequest,
    IngestRequest,
    IngestResponse,
    InputError,
    ItemOut,
    QueryRequest,
    QueryResponse,
    Ready,
    SnapshotResponse,
    check_ids,
    check_ingest,
    check_query,
    payload_fields,
)

log = logging.getLogger("irene.serve")

MAX_ONGOING_REQUESTS = 128  # Serve's default of 5 caps throughput far below what we can do
PROBE_TIMEOUT_S = 5.0
S3_ENV = io.S3_ENV_VARS


# --------------------------------------------------------------------------- helpers
def index_actor(args: AppArgs, dim: int):
    """The app's index: its named shard actors (created on first use with the app's settings)
    behind one router (:class:`irene.ray.index.ActorShards`)."""
    from irene.ray.index import actors_for

    s = args.index
    env = None
    if args.index_uri.startswith("s3://") or args.bundle.startswith("s3://"):
        env = {k: os.environ[k] for k in S3_ENV if os.environ.get(k)}
    return actors_for(
        s, args.index_uri, dim, env, max_concurrency=s.max_concurrency, lease_s=s.lease_s
    )


def _split(rows: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Split (sum(sizes), d) rows back into one array per request."""
    return np.split(rows, np.cumsum(sizes)[:-1])


def _configure_batch(method, settings: BatchSettings) -> None:
    method.set_max_batch_size(settings.max_batch_size)
    method.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)


# --------------------------------------------------------------------------- Encoder
# @serve.batch collects what is queued *now* (wait 0 by default) and may run many batches at once;
# the Coalescer behind it merges them into one compute call per free compute slot (see
# serve_app/batching.py for the measurement that motivated it).
SERVE_BATCH = {"max_batch_size": 32, "batch_wait_timeout_s": 0.0, "max_concurrent_batches": 64}


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 1})
class Encoder:
    """The bundle's text encoder as its own deployment (``encoder_placement: deployment``);
    concurrent calls are micro-batched (``@serve.batch`` + :class:`BatchedEncoder`).
    ``search`` also runs the index query for the whole batch."""

    def __init__(self, args: dict, readers: list | None = None) -> None:
        """``readers``: handles to the ``ShardReader`` deployments (``index.shard_readers``)."""
        self.args = AppArgs(**args)
        settings = self.args.encoder_batch
        _configure_batch(self._encode_batch, settings)
        _configure_batch(self._search_batch, settings)
        self._index = ShardReaders(readers) if readers else None
        self._model = BatchedEncoder(
            self.args.bundle,
            settings.max_batch_size,
            self.args.threads,
            self.args.device,
            index=self._index_actor,
            read_replica=self.args.index.copies_in_replica,
        )
        self.dim = self._model.dim

    def _index_actor(self):
        """What queries search: the shard readers, or the shard actors (with or without
        this replica's copies)."""
        if self._index is None:
            self._index = index_actor(self.args, self.dim)
        return self._index

    def batch_stats(self) -> dict:
        """Mean items per compute call so far, for encode (ingest) and search (queries)."""
        return self._model.stats()

    async def __del__(self) -> None:  # Serve awaits this when the replica shuts down
        if getattr(self, "_model", None) is not None:
            await self._model.aclose()

    async def encode(self, texts: list) -> np.ndarray:
        """(n, d) float32 L2-normalised embeddings of ``texts``."""
        return await self._encode_batch(list(texts))

    async def search(self, texts: list, k: int) -> list:
        """Top-``k`` ``[(id, score, record), ...]`` per text: encoded and searched in one
        batch with the other concurrent queries of this replica."""
        return await self._search_batch((list(texts), int(k)))

    @serve.batch(**SERVE_BATCH)
    async def _encode_batch(self, requests: list) -> list:
        emb = await self._model.encode([t for texts in requests for t in texts])  # (N, d)
        return _split(emb, [len(t) for t in requests])

    @serve.batch(**SERVE_BATCH)
    async def _search_batch(self, requests: list) -> list:
        hits = await self._model.search_pairs([(t, k) for texts, k in requests for t in texts])
        out, start = [], 0
        for texts, _ in requests:
            out.append(hits[start : start + len(texts)])
            start += len(texts)
        return out


# --------------------------------------------------------------------------- Generator
@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 1})
class Generator:
    """Selector kNN over the seen items + the IRENE generator."""

    def __init__(self, bundle: str, batch: dict | None = None, threads: int | None = None) -> None:
        from irene.bundle import load_bundle

        loaded = load_bundle(bundle, device="cpu")
        loaded.encoder = None  # not needed here; free its memory
        self._bundle = loaded
        self._uri = bundle
        self._pool = compute_pool(replica_threads(threads))
        settings = BatchSettings(**(batch or {}))
        _configure_batch(self._generate_batch, settings)
        self._rows = Coalescer(self._synthesize_rows, settings.max_batch_size)
        log.info("Generator ready: bundle %s, %d seen items", bundle, len(loaded.item_ids))

    def info(self) -> dict:
        from irene.bundle import bundle_version

        manifest = self._bundle.manifest
        return {
            "version": bundle_version(manifest),  # what ingested items' records name
            "bundle": self._uri,
            "dim": int(self._bundle.dim),
            "num_seen": len(self._bundle.item_ids),
            "config_hash": manifest.get("config_hash"),
            "created_at": manifest.get("created_at"),
            "encoder_runtime": manifest.get("encoder_runtime"),
        }

    async def _synthesize_rows(self, rows: list) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._bundle.synthesize, np.stack(rows))

    async def generate(self, item_emb: np.ndarray) -> np.ndarray:
        """(n, d) generated classifiers for items with text embeddings ``item_emb`` (n, d)."""
        return await self._generate_batch(np.asarray(item_emb, dtype=np.float32))

    @serve.batch(**SERVE_BATCH)
    async def _generate_batch(self, requests: list) -> list:
        out = await self._rows.submit([r for emb in requests for r in emb])  # (N, d)
        out = np.asarray(out, np.float32).reshape(-1, self._bundle.dim)
        return _split(out, [len(r) for r in requests])


# --------------------------------------------------------------------------- ShardReader
@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 1})
class ShardReader:
    """A copy of one shard of the index (``index.shard_readers``): deployment
    ``ShardReader-<owner>`` follows shard actor ``owner``'s change feed and answers that
    shard's part of each query batch; while its copy may be stale, the shard actor does."""

    async def __init__(self, args: dict, owner: int) -> None:
        from irene.bundle import read_manifest

        self.args = AppArgs(**args)
        self.owner = int(owner)
        self._pool = compute_pool(replica_threads(self.args.threads))
        self._index = index_actor(self.args, int(read_manifest(self.args.bundle)["dim"]))
        self._copy = ShardCopy(lambda: self._index.handles[self.owner], self._pool)
        self._copy.start()
        self._answered = {"copy": 0, "actor": 0}  # query batches, by who answered

    async def __del__(self) -> None:  # Serve awaits this when the replica shuts down
        if getattr(self, "_copy", None) is not None:
            await self._copy.aclose()

    async def search(self, queries: np.ndarray, k: int) -> list:
        """Top-``k`` ``[(id, score, record), ...]`` per row of ``queries`` (n, d) in this
        shard (records from the copy that answered, else one ``get_records`` actor call)."""
        self._copy.start()  # restarts the follower if it ever ended
        loop = asyncio.get_running_loop()
        hits = await loop.run_in_executor(self._pool, self._search_copy, queries, int(k))
        if hits is not None:
            self._answered["copy"] += 1
            return hits
        self._answered["actor"] += 1
        actor = self._index.handles[self.owner]
        hits = await actor.search.remote(queries, int(k))
        return await awith_records(hits, lambda ids: actor.get_records.remote(ids))

    def _search_copy(self, queries: np.ndarray, k: int) -> list | None:
        """In the compute thread: the copy's hits with its records, or None while stale."""
        hits = self._copy.search(queries, k)
        return None if hits is None else with_records(hits, self._copy.get_records)

    def stats(self, with_ids: bool = False) -> dict:
        """This replica's shard, the vectors in its copy (their ids too, if asked) and who
        answered its query batches."""
        rep = self._copy.replica
        out = {
            "owner": self.owner,
            "n_owners": self.args.index.n_owners,
            "fresh": rep.fresh(),
            "seq": rep.seq,
            "count": None if rep.index is None else int(rep.index.count),
            "answered": dict(self._answered),
        }
        if with_ids:
            out["ids"] = [] if rep.index is None else sorted(rep.index.ids())
        return out


class RemoteEncoder:
    """The Encoder deployment behind the interface of :class:`BatchedEncoder`."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def encode(self, texts: list):
        return self._handle.encode.remote(texts)

    def search(self, texts: list, k: int):
        return self._handle.search.remote(texts, k)

    def start_replica(self) -> None:  # the Encoder replicas keep their own copies
        pass

    async def aclose(self) -> None:
        pass


# --------------------------------------------------------------------------- Ingress
def _item_out(item_id: str, vec, include_vector: bool, record: dict | None) -> ItemOut:
    vec = np.asarray(vec, dtype=np.float32)  # (d,)
    return ItemOut(
        id=item_id,
        dim=int(vec.shape[0]),
        norm=float(np.linalg.norm(vec)),
        vector=vec.tolist() if include_vector else None,
        **(record or {}),
    )


def _hit(hit: tuple, fields: tuple[str, ...]) -> dict:
    """One query hit as JSON: id, score, source, and the record ``fields`` asked for."""
    id_, score, rec = hit
    out = {"id": id_, "score": score, "source": rec["source"] if rec else None}
    for f in fields:
        out[f] = rec[f] if rec else None
    return out


def _replica() -> Any:
    """The Ingress instance of this replica, or None outside a Serve replica."""
    try:
        return serve.get_replica_context().servable_object
    except Exception:
        return None


def _replica_attr(name: str):
    return lambda: getattr(_replica(), name, None)


_bearer = HTTPBearer(auto_error=False, description="API token (IRENE_API_TOKEN)")


def _token(creds: HTTPAuthorizationCredentials | None) -> str | None:
    return creds.credentials if creds is not None else None


# async, not def: FastAPI runs a sync dependency in a worker thread (a thread hop per request)
async def require_write(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    _replica().auth.check(_token(creds), write=True)


async def require_read(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    _replica().auth.check(_token(creds), write=False)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        msg = bad_json[0].get("ctx", {}).get("error") or bad_json[0].get("msg")
        return JSONResponse({"detail": f"malformed JSON body: {msg}"}, status_code=400)
    # type, location and message only: the offending input is not echoed back (it may be
    # large, or NaN / Infinity, which JSON cannot carry)
    detail = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in errors]
    return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=422)


async def _on_input_error(request: Request, exc: InputError) -> JSONResponse:
    return JSONResponse({"detail": exc.message}, status_code=exc.status)


async def _on_auth_error(request: Request, exc: AuthError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)


async def _on_storage_down(request: Request, exc: Exception) -> JSONResponse:
    log.error("index storage unavailable: %s", exc)
    # the reason without paths or keys (those stay in the server log)
    reason = getattr(exc, "reason", "") or "storage error"
    return JSONResponse(
        {"detail": f"index storage unavailable, nothing was written ({reason}); retry later"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _on_backend_down(request: Request, exc: Exception) -> JSONResponse:
    log.error("backend unavailable: %s", exc)
    return JSONResponse(
        {
            "detail": f"a backend (index actor or model replica) is unavailable: {type(exc).__name__}"
        },
        status_code=503,
    )


def make_fastapi_app() -> FastAPI:
    """The Ingress's FastAPI app (routes are added by the ``Ingress`` class below)."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    app = FastAPI(
        title="IRENE",
        version="1",
        description=(
            "Extreme classification with IRENE-generated classifiers. Items posted to "
            "/v1/items are searchable at once; writes need `Authorization: Bearer <token>`."
        ),
    )
    app.add_middleware(BodyLimitMiddleware, get_limit=_replica_attr("body_limit"))
    app.add_middleware(MetricsMiddleware, get_metrics=_replica_attr("metrics"))  # outermost
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(InputError, _on_input_error)
    app.add_exception_handler(AuthError, _on_auth_error)
    app.add_exception_handler(StorageUnavailable, _on_storage_down)
    app.add_exception_handler(RayActorError, _on_backend_down)
    app.add_exception_handler(ActorUnavailableError, _on_backend_down)
    return app


api = make_fastapi_app()


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class Ingress:
    """HTTP front: validation, auth, metrics; composes Encoder, Generator and the index."""

    async def __init__(self, encoder, generator, args: dict, readers: list | None = None) -> None:
        """``encoder``: a handle to the ``Encoder`` deployment, or None to encode in this
        replica (``encoder_placement: ingress``); ``readers``: handles to the ``ShardReader``
        deployments, which then answer this replica's queries (``index.shard_readers``)."""
        self.args = AppArgs(**args)
        self.limits = self.args.limits
        self.body_limit = self.limits.max_body_bytes
        self.auth = TokenAuth(self.args.auth)
        self.metrics = ReplicaMetrics()
        self._generator = generator
        info = await generator.info.remote()
        self.bundle_info = info
        self.dim = info["dim"]
        self.version = info["version"]  # the bundle version ingested items' records name
        self._index = index_actor(self.args, self.dim)
        if encoder is None:  # encoder_placement: ingress
            searched = ShardReaders(readers) if readers else self._index
            self._encoder = BatchedEncoder(
                self.args.bundle,
                self.args.encoder_batch.max_batch_size,
                self.args.threads,
                self.args.device,
                index=lambda: searched,
                observe=self.metrics.observe_stage,
                read_replica=self.args.index.copies_in_replica,
            )
        else:
            self._encoder = RemoteEncoder(encoder)
        await self._check_index()
        if not self.auth.configured and not self.args.auth.allow_unauthenticated_writes:
            log.warning("no API token configured: writes will be refused (403)")
        if self.args.seed_index:
            await self._index.seed_from_bundle(self.args.bundle, self.args.index.seed_chunk)
        self._encoder.start_replica()  # after seeding: one state transfer, not one per chunk

    async def __del__(self) -> None:  # Serve awaits this when the replica shuts down
        if getattr(self, "_encoder", None) is not None:
            await self._encoder.aclose()

    # ----------------------------------------------------------------- setup
    async def _check_index(self) -> None:
        """Fail fast if a same-named actor already serves another location or dimension."""
        stats = await self._index.stats()
        if stats["dim"] != self.dim:
            raise RuntimeError(
                f"index actor {self.args.index.name!r} holds dim {stats['dim']} vectors but the "
                f"bundle's dim is {self.dim}; use another index name/uri"
            )
        if str(stats["uri"]) != self.args.index_uri:
            log.warning(
                "index actor %r already runs on %s (asked for %s); using it",
                self.args.index.name,
                stats["uri"],
                self.args.index_uri,
            )

    # ----------------------------------------------------------------- helpers
    async def _timed(self, stage: str, awaitable):
        t0 = time.perf_counter()
        try:
            return await awaitable
        finally:
            self.metrics.observe_stage(stage, time.perf_counter() - t0)

    # ----------------------------------------------------------------- writes
    @api.post(
        "/v1/items",
        response_model=IngestResponse,
        dependencies=[Depends(require_write)],
        summary="Add or update items (acknowledged after the write-ahead log write)",
    )
    async def ingest(self, req: IngestRequest) -> JSONResponse:
        check_ingest(req, self.limits)
        ids = [it.id for it in req.items]
        texts = [it.text for it in req.items]
        # created/updated statuses: one existence check per batch; two requests racing on the
        # same new id may both report "created"
        existed = asyncio.ensure_future(self._index.contains(ids))
        emb = await self._timed("encode", self._encoder.encode(texts))
        clf = await self._timed("generate", self._generator.generate.remote(emb))
        before = await existed
        records = Records.of(texts, [it.metadata for it in req.items], "generated", self.version)
        seq = await self._timed("index_add", self._index.add(ids, clf, records))
        self.metrics.observe_ingest(len(ids))
        results = [
            {"id": i, "status": "updated" if e else "created"}
            for i, e in zip(ids, before, strict=True)
        ]
        return JSONResponse({"results": results, "count": len(ids), "seq": int(seq)})

    @api.delete(
        "/v1/items/{item_id:path}",
        response_model=DeleteResponse,
        dependencies=[Depends(require_write)],
        responses={404: {"description": "no such item"}},
    )
    async def delete_item(self, item_id: str) -> DeleteResponse:
        present = await self._index.delete([item_id])
        if not present[0]:
            raise HTTPException(404, f"item {item_id!r} not found")
        return DeleteResponse(id=item_id, deleted=True)

    @api.post(
        "/v1/items/delete",
        response_model=DeleteManyResponse,
        dependencies=[Depends(require_write)],
        summary="Delete items by id (any id, including ones with '/' or '..')",
    )
    async def delete_items(self, req: IdsRequest) -> DeleteManyResponse:
        ids = check_ids(req, self.limits)
        present = await self._index.delete(ids)
        return DeleteManyResponse(
            results=[
                DeleteResponse(id=i, deleted=bool(p)) for i, p in zip(ids, present, strict=True)
            ]
        )

    @api.post(
        "/v1/snapshot", response_model=SnapshotResponse, dependencies=[Depends(require_write)]
    )
    async def snapshot(self) -> SnapshotResponse:
        seq = await self._index.snapshot()
        return SnapshotResponse(seq=int(seq))

    # ----------------------------------------------------------------- reads
    @api.post(
        "/v1/query",
        response_model=QueryResponse,
        dependencies=[Depends(require_read)],
        summary="Top-k items per text: id, score, source; text / metadata with `with_payload`",
    )
    async def query(self, req: QueryRequest) -> JSONResponse:
        texts, k = check_query(req, self.limits)
        fields = payload_fields(req.with_payload)
        hits = await self._timed("encode_search", self._encoder.search(texts, k))
        self.metrics.queries.inc(len(texts))
        return JSONResponse({"results": [[_hit(h, fields) for h in row] for row in hits]})

    @api.get(
        "/v1/items/{item_id:path}",
        response_model=ItemOut,
        response_model_exclude_none=True,
        dependencies=[Depends(require_read)],
        responses={404: {"description": "no such item"}},
        summary="Read an item: its text, metadata, source, bundle version (vector if asked)",
    )
    async def get_item(self, item_id: str, include_vector: bool = False) -> ItemOut:
        vec, (record,) = await asyncio.gather(
            self._index.get(item_id), self._index.get_records([item_id])
        )
        if vec is None:
            raise HTTPException(404, f"item {item_id!r} not found")
        return _item_out(item_id, vec, include_vector, record)

    @api.post(
        "/v1/items/fetch",
        response_model=FetchResponse,
        response_model_exclude_none=True,
        dependencies=[Depends(require_read)],
        summary="Read items by id (any id, including ones with '/' or '..')",
    )
    async def fetch_items(self, req: IdsRequest) -> JSONResponse:
        ids = check_ids(req, self.limits)
        vecs, records = await asyncio.gather(
            self._index.get_many(ids), self._index.get_records(ids)
        )
        items = [
            None
            if v is None
            else _item_out(i, v, req.include_vectors, r).model_dump(exclude_none=True)
            for i, v, r in zip(ids, vecs, records, strict=True)
        ]
        return JSONResponse({"items": items})

    # ----------------------------------------------------------------- operations
    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        return Health(status="ok")

    @api.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
    async def readyz(self) -> JSONResponse:
        try:
            count = await asyncio.wait_for(self._count_ref(), PROBE_TIMEOUT_S)
        except Exception as e:  # unreachable or restarting index actor
            body = Ready(status="unavailable", bundle=self.bundle_info["bundle"], detail=repr(e))
            return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
        body = Ready(
            status="ready",
            index_count=count,
            bundle=self.bundle_info["bundle"],
            bundle_version=self.bundle_info["version"],
            encoder_runtime=self.bundle_info["encoder_runtime"],
        )
        return JSONResponse(body.model_dump(exclude_none=True))

    async def _count_ref(self) -> int:
        return await self._index.count()

    @api.get("/metrics", response_class=Response, summary="Prometheus metrics of this replica")
    async def metrics_endpoint(self) -> Response:
        try:
            count = await asyncio.wait_for(self._count_ref(), PROBE_TIMEOUT_S)
        except Exception:
            count = None
        return Response(self.metrics.render(count), media_type=self.metrics.content_type)

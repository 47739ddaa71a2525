"""Ray Serve deployments: ``Encoder``, ``Generator``, ``ShardReader`` and the FastAPI ``Ingress``.

Request flow::

    POST /v1/items  -> Ingress -> encode (batched) -> Generator.generate (batched)
                            -> shard actors .upsert (returns after the write-ahead log write,
                               once every index copy has the batch; says created/updated)
    POST /v1/query  -> Ingress -> QueryBatcher: one encode, one index view search, one lookup
                                   of the hits' string ids and records per batch of queries

The index view (``irene.index.view``) is this replica's copies of the shards
(``index.read_replica``, the default: no Ray call per query), the shard actors, or the
``ShardReader-<i>`` deployments (``index.shard_readers``: each replica a copy of one shard).
With ``encoder_placement: ingress`` the Ingress replica runs the encoder itself and no
``Encoder`` deployment exists -- the fastest placement on CPU-only machines.

An ingested item is stored with its record (text, metadata, source "generated", the serving
bundle's version): ``GET /v1/items/{id}`` and ``POST /v1/items/fetch`` return it, query hits
carry ``source`` and, with ``with_payload``, ``text`` / ``metadata`` / ``version``.

The index is the named, detached shard actors of ``irene.ray.index`` (shared by every
replica and surviving redeploys; :func:`index_actor` is the one way to reach them, with the
app's ``args.index``: an actor running with other settings is a startup error). On start an
Ingress replica asks an *empty* index to seed itself with the bundle's catalogue items.

Batching: one :class:`~serve_app.batching.Coalescer` per compute path (no ``@serve.batch``
in front of it: Serve handle calls arrive concurrently, up to ``max_ongoing_requests``).

NOTE: no ``from __future__ import annotations`` here -- FastAPI under Serve must see real
annotations to parse request bodies.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve

from irene import io
from irene.config import IndexConfig
from irene.index.actor import GenerationSealed
from irene.index.generations import current as current_generation
from irene.index.log import StorageUnavailable
from irene.index.records import Records
from irene.ray.index import ActorShards, actors_for
from serve_app.auth import AuthError, TokenAuth
from serve_app.batching import Coalescer
from serve_app.encoding import BatchedEncoder, ComputeThread, QueryBatcher, replica_threads
from serve_app.metrics import ReplicaMetrics
from serve_app.middleware import BodyLimitMiddleware, MetricsMiddleware
from serve_app.readers import copies_view
from serve_app.schemas import (
    MAX_ID_CHARS,
    AppArgs,
    BatchSettings,
    CountRequest,
    CountResponse,
    DeleteByFilterRequest,
    DeleteByFilterResponse,
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
    ScrollItem,
    ScrollRequest,
    ScrollResponse,
    SnapshotResponse,
    check_ids,
    check_ingest,
    check_query,
    payload_fields,
)
from serve_app.tenancy import Scope

log = logging.getLogger("irene.serve")

MAX_ONGOING_REQUESTS = 128  # Serve's default of 5 caps throughput far below what we can do
PROBE_TIMEOUT_S = 5.0
S3_ENV = io.S3_ENV_VARS


# --------------------------------------------------------------------------- helpers
def index_actor(config: IndexConfig, bundle: str, dim: int) -> ActorShards:
    """One generation's index (``config``: ``irene.index.generations.generation_config``):
    its named shard actors (created on first use) behind one router
    (:class:`irene.ray.index.ActorShards`)."""
    env = None
    if config.uri.startswith("s3://") or bundle.startswith("s3://"):
        env = io.s3_env()
    return actors_for(config, dim, env)


def serving_generation(args: AppArgs) -> tuple[str, IndexConfig, str]:
    """(generation, its index config, its bundle) that serves now: the alias's current
    generation (``irene upgrade``), else the index at ``args.index.uri`` with
    ``args.bundle``."""
    name, config, gen = current_generation(args.index)
    if gen is None:
        return name, config, args.bundle
    if gen.bundle != args.bundle:
        log.info(
            "index alias: generation %s serves bundle %s (args.bundle %s is the first one)",
            name,
            gen.bundle,
            args.bundle,
        )
    return name, config, gen.bundle


RETIRE_AFTER_S = 10.0  # a replaced generation's index copies outlive the switch this long


async def _close_later(follower, after_s: float) -> None:
    await asyncio.sleep(after_s)
    await follower.aclose()


class AliasWatch:
    """Calls ``switch(generation, config, bundle)`` when the index alias names another
    serving generation than ``serving()`` (checked every ``poll_s`` seconds, and at once by
    :meth:`check`)."""

    def __init__(self, args: AppArgs, serving: Callable[[], str], switch) -> None:
        self._args, self._serving, self._switch = args, serving, switch
        self._lock = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def check(self) -> bool:
        """Follow the alias now; True if the serving generation changed."""
        async with self._lock:
            name, config, bundle = await asyncio.to_thread(serving_generation, self._args)
            if name == self._serving():
                return False
            log.info("index alias: switching from generation %r to %r", self._serving(), name)
            await self._switch(name, config, bundle)
            return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._args.index.alias_poll_s)
            try:
                await self.check()
            except Exception as e:  # storage hiccup or a generation not ready: next poll
                log.warning("index alias: %s", e)

    def stop(self) -> None:
        self._task.cancel()


# --------------------------------------------------------------------------- Encoder
@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 1})
class Encoder:
    """The bundle's text encoder as its own deployment (``encoder_placement: deployment``);
    concurrent calls are micro-batched (:class:`BatchedEncoder`)."""

    def __init__(self, args: dict) -> None:
        self.args = AppArgs(**args)
        self._models = Loaded(self._load)
        self._default = serving_generation(self.args)[2]
        self._models.put(self._default, self._load(self._default))

    def _load(self, bundle: str) -> BatchedEncoder:
        a = self.args
        b = a.encoder_batch
        return BatchedEncoder(bundle, b.max_batch_size, a.threads, a.device, linger_s=b.linger_s)

    def batch_stats(self) -> dict:
        """Mean texts per compute call so far (of the latest bundle)."""
        return self._models.latest().stats()

    async def encode(self, texts: list, bundle: str | None = None) -> np.ndarray:
        """(n, d) float32 L2-normalised embeddings of ``texts`` by ``bundle``'s encoder (the
        serving generation's; loaded on first use, two bundles kept)."""
        model = await self._models.get(bundle or self._default)
        return await model.encode(list(texts))


# --------------------------------------------------------------------------- Generator
@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 1})
class Generator:
    """Selector kNN over the seen items + the IRENE generator, of the bundle each call names
    (the serving generation's: loaded on first use, the two latest kept, so a generation
    switch is served by both during the change)."""

    def __init__(self, bundle: str, batch: dict | None = None, threads: int | None = None) -> None:
        self._default = bundle
        self._pool = ComputeThread(replica_threads(threads))
        self._batch = BatchSettings(**(batch or {}))
        self._models = Loaded(self._load)
        self._models.put(bundle, self._load(bundle))

    def _load(self, bundle: str) -> "Synthesizer":
        b = self._batch
        return Synthesizer(bundle, self._pool, b.max_batch_size, b.linger_s)

    async def info(self, bundle: str | None = None) -> dict:
        return (await self._models.get(bundle or self._default)).info()

    async def explain(self, item_emb: np.ndarray, bundle: str | None = None) -> tuple:
        """How the classifiers of items with embeddings ``item_emb`` (n, d) are generated:
        ``(classifiers (n, d), neighbour ids (n lists of K, None: no neighbour), cosines
        (n, K), attention (n, K+1): column 0 the item itself)``."""
        return await (await self._models.get(bundle or self._default)).explain(item_emb)

    async def generate(self, item_emb: np.ndarray, bundle: str | None = None) -> np.ndarray:
        """(n, d) generated classifiers for items with text embeddings ``item_emb`` (n, d)."""
        return await (await self._models.get(bundle or self._default)).generate(item_emb)


class Synthesizer:
    """One bundle's selector + generator, its calls micro-batched in ``pool``."""

    def __init__(self, bundle: str, pool, max_batch: int, linger_s: float = 0.0) -> None:
        from irene.bundle import load_bundle

        loaded = load_bundle(bundle, device="cpu")
        loaded.encoder = None  # not needed here; free its memory
        self._bundle = loaded
        self._uri = bundle
        self._pool = pool
        self._rows = Coalescer(self._synthesize_rows, max_batch, linger_s)
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

    async def explain(self, item_emb: np.ndarray) -> tuple:
        loop = asyncio.get_running_loop()
        emb = np.asarray(item_emb, dtype=np.float32)
        clf, pos, cos, att = await loop.run_in_executor(self._pool, self._bundle.explain, emb)
        ids = self._bundle.item_ids
        names = [[ids[p] if p >= 0 else None for p in row] for row in pos.tolist()]
        return clf, names, cos, att

    async def generate(self, item_emb: np.ndarray) -> np.ndarray:
        out = await self._rows.submit(list(np.asarray(item_emb, dtype=np.float32)))
        return np.asarray(out, np.float32).reshape(-1, self._bundle.dim)


class Loaded:
    """Models by bundle, loaded on first use in a worker thread (one load per bundle at a
    time), the ``keep`` most recently used kept."""

    def __init__(self, load: Callable[[str], Any], keep: int = 2) -> None:
        self._load, self._keep = load, keep
        self._models: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, bundle: str) -> Any:
        model = self._models.get(bundle)
        if model is None:
            async with self._locks.setdefault(bundle, asyncio.Lock()):
                model = self._models.get(bundle)
                if model is None:
                    model = await asyncio.to_thread(self._load, bundle)
                    self._models[bundle] = model
        self._models[bundle] = self._models.pop(bundle)  # most recently used last
        while len(self._models) > self._keep:
            self._models.pop(next(iter(self._models)))
        return model

    def put(self, bundle: str, model: Any) -> Any:
        """Keep an already loaded model (a replica's startup bundle)."""
        self._models[bundle] = model
        return model

    def latest(self) -> Any:
        return next(reversed(self._models.values()))


# --------------------------------------------------------------------------- ShardReader
@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 1})
class ShardReader:
    """A copy of one shard of the index (``index.shard_readers``): deployment
    ``ShardReader-<owner>`` follows shard actor ``owner``'s change feed and answers that
    shard's ``search`` and ``lookup`` calls (a :class:`CopiesView` of one copy, its shard
    actor answering while the copy may be stale)."""

    async def __init__(self, args: dict, owner: int) -> None:
        self.args = AppArgs(**args)
        self.owner = int(owner)
        self._pool = ComputeThread(replica_threads(self.args.threads))
        await self._switch(*serving_generation(self.args))
        self._alias = AliasWatch(self.args, lambda: self._generation, self._switch)

    async def _switch(self, name: str, config: IndexConfig, bundle: str) -> None:
        """Follow this shard of generation ``name`` (the old copy is dropped a little later)."""
        from irene.bundle import read_manifest

        dim = int((await asyncio.to_thread(read_manifest, bundle))["dim"])
        index = index_actor(config, bundle, dim)
        mine = ActorShards([index.handles[self.owner]])
        view, (follower,) = copies_view([lambda: index.handles[self.owner]], self._pool, mine)
        follower.start()
        old = getattr(self, "_follower", None)
        self._generation, self._view, self._follower = name, view, follower
        if old is not None:
            asyncio.get_running_loop().create_task(_close_later(old, RETIRE_AFTER_S))

    async def __del__(self) -> None:  # Serve awaits this when the replica shuts down
        if getattr(self, "_alias", None) is not None:
            self._alias.stop()
        if getattr(self, "_follower", None) is not None:
            await self._follower.aclose()

    async def search(self, queries: np.ndarray, k: int, filter=None) -> tuple:
        """Top-``k`` ``(scores, int64 ids)`` of this shard for ``queries`` (n, d), of the
        items ``filter`` matches."""
        self._follower.start()  # restarts the follower if it ever ended
        return await self._view.search(queries, int(k), filter)

    async def lookup(self, iids: np.ndarray) -> tuple:
        """String ids and records of int64 ids of this shard."""
        return await self._view.lookup(iids)

    def stats(self, with_ids: bool = False) -> dict:
        """This replica's shard, the vectors in its copy (their ids too, if asked) and who
        answered its searches."""
        rep = self._follower.copy
        out = {
            "owner": self.owner,
            "n_owners": self.args.index.n_owners,
            "fresh": rep.fresh(),
            "seq": rep.seq,
            "count": None if rep.index is None else int(rep.index.count),
            "answered": dict(self._view.answered),
        }
        if with_ids:
            out["ids"] = [] if rep.index is None else sorted(rep.index.ids())
        return out


class RemoteEncoder:
    """The Encoder deployment (``bundle``'s encoder) behind the ``encode`` of
    :class:`BatchedEncoder`."""

    def __init__(self, handle, bundle: str) -> None:
        self._handle, self._bundle = handle, bundle

    async def encode(self, texts: list) -> np.ndarray:
        return await self._handle.encode.remote(texts, self._bundle)


# --------------------------------------------------------------------------- Ingress
SWITCH_WAIT_S = 30.0  # a write refused by a sealed generation waits this long for the switch


@dataclass
class Serving:
    """What one index generation is served with, in one Ingress replica."""

    generation: str
    bundle: str
    info: dict  # the Generator's info of the bundle (version, dim, ...)
    index: ActorShards
    encoder: Any  # BatchedEncoder (in this replica) or RemoteEncoder
    queries: QueryBatcher | None = None
    followers: list = field(default_factory=list)

    async def close(self, after_s: float = 0.0) -> None:
        await asyncio.gather(*(_close_later(f, after_s) for f in self.followers))


def _existing_id(item_id: str) -> str:
    """A path's item id, or 404 when no item can have it (empty, too long, control
    characters: ``ItemId``'s rules)."""
    if not 0 < len(item_id) <= MAX_ID_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in item_id):
        raise HTTPException(
            404, "no item has this id (ids are 1-256 characters, no control characters)"
        )
    return item_id


def _item_out(item_id: str, vec, include_vector: bool, record: dict | None) -> ItemOut:
    vec = np.asarray(vec, dtype=np.float32)  # (d,)
    return ItemOut(
        id=item_id,
        dim=int(vec.shape[0]),
        norm=float(np.linalg.norm(vec)),
        vector=vec.tolist() if include_vector else None,
        **(record or {}),
    )


def _hit(hit: tuple, fields: tuple[str, ...], scope: Scope) -> dict | None:
    """One query hit as JSON: id, score, source, and the record ``fields`` asked for (None:
    not an item of the request's tenant)."""
    id_, score, rec = hit
    id_ = scope.user_id(id_)
    if id_ is None:
        return None
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


def _scope(creds: HTTPAuthorizationCredentials | None, scope: str) -> Scope:
    """The request's view of the index (its tenant's, or all), once its token holds
    ``scope``; ``AuthError`` otherwise."""
    rep = _replica()
    principal = rep.auth.require(rep.auth.authenticate(_token(creds)), scope)
    return Scope(principal.tenant, rep.args.auth.tenant_field)


# async, not def: FastAPI runs a sync dependency in a worker thread (a thread hop per request)
async def require_write(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Scope:
    return _scope(creds, "write")


async def require_read(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Scope:
    return _scope(creds, "read")


async def require_admin(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Scope:
    return _scope(creds, "admin")


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
        self._encoder_handle = encoder
        self._readers = readers
        self._pool = None if encoder is None else ComputeThread(replica_threads(self.args.threads))
        name, config, bundle = serving_generation(self.args)
        self._s = await self._open(name, config, bundle, check=True)
        if not self.auth.configured and not self.args.auth.allow_unauthenticated_writes:
            log.warning("no API token configured: writes will be refused (403)")
        self._alias = AliasWatch(self.args, lambda: self._s.generation, self._switch)

    async def _open(self, name: str, config: IndexConfig, bundle: str, check: bool = False):
        """How generation ``name`` (index ``config``, made by ``bundle``) is served."""
        info = await self._generator.info.remote(bundle)
        index = index_actor(config, bundle, info["dim"])
        if self._encoder_handle is None:  # encoder_placement: ingress
            args = self.args
            encoder = await asyncio.to_thread(
                BatchedEncoder,
                bundle,
                args.encoder_batch.max_batch_size,
                args.threads,
                args.device,
                self.metrics.observe_stage,
                args.encoder_batch.linger_s,
            )
            pool = encoder.pool
        else:
            encoder, pool = RemoteEncoder(self._encoder_handle, bundle), self._pool
        s = Serving(name, bundle, info, index, encoder)
        if check:
            await self._check_index(s)
        if self.args.seed_index:
            await index.seed_from_bundle(bundle, self.args.index.seed_chunk)
        if self._readers:  # index.shard_readers: one replica of each ShardReader answers
            view = ActorShards(self._readers)
        elif self.args.index.copies_in_replica:  # after seeding: one state transfer
            handles = [(lambda i=i: index.handles[i]) for i in range(index.n_owners)]
            view, s.followers = copies_view(handles, pool, index, self.metrics.observe_stage)
            for f in s.followers:
                f.start()
        else:
            view = index
        s.queries = QueryBatcher(
            encoder.encode,
            view,
            self.args.encoder_batch.max_batch_size,
            self.metrics.observe_stage,
            local=encoder if isinstance(encoder, BatchedEncoder) else None,
            linger_s=self.args.encoder_batch.linger_s,
            alone=lambda: self.metrics.in_flight <= 1,  # this request only
        )
        return s

    async def _switch(self, name: str, config: IndexConfig, bundle: str) -> None:
        """Serve generation ``name`` from now on (requests under way finish on the old one,
        whose index copies are dropped a little later)."""
        new = await self._open(name, config, bundle)
        old, self._s = self._s, new
        asyncio.get_running_loop().create_task(old.close(after_s=RETIRE_AFTER_S))

    async def _written(self, write: Callable[[Serving], Awaitable[Any]]) -> Any:
        """``write(serving)``, retried once on the new generation if the serving one was
        sealed meanwhile (``irene upgrade`` / ``rollback`` switching generations)."""
        s = self._s
        try:
            return await write(s)
        except GenerationSealed:
            deadline = time.monotonic() + SWITCH_WAIT_S
            while self._s is s:
                if time.monotonic() > deadline:
                    raise HTTPException(
                        503, "the index is switching generations; retry", {"Retry-After": "1"}
                    ) from None
                if not await self._alias.check():
                    await asyncio.sleep(0.05)
            return await write(self._s)

    @property
    def _index(self) -> ActorShards:
        return self._s.index

    @property
    def _encoder(self):
        return self._s.encoder

    @property
    def _queries(self) -> QueryBatcher:
        return self._s.queries

    @property
    def version(self) -> str:
        return self._s.info["version"]

    @property
    def bundle_info(self) -> dict:
        return self._s.info

    async def __del__(self) -> None:  # Serve awaits this when the replica shuts down
        if getattr(self, "_alias", None) is not None:
            self._alias.stop()
        if getattr(self, "_s", None) is not None:
            await self._s.close()

    def batch_stats(self) -> dict:
        """Mean items per compute call so far: queries per query batch, texts per encode."""
        out = {"search": self._queries.stats()}
        if isinstance(self._encoder, BatchedEncoder):
            out["encode"] = self._encoder.stats()
        return out

    # ----------------------------------------------------------------- setup
    async def _check_index(self, s: Serving) -> None:
        """Fail fast if a same-named shard actor runs with other settings (location,
        dimension, shards, ...): the error names the difference; and refuse an index whose
        items were made by another bundle version (naming both), unless allowed."""
        await s.index.verify()
        versions = (await s.index.stats()).get("versions", {})
        version = s.info["version"]
        other = {v: n for v, n in versions.items() if v and v != version}
        if other and not self.args.allow_bundle_mismatch:
            found = ", ".join(f"{v} ({n} items)" for v, n in sorted(other.items()))
            raise RuntimeError(
                f"the index at {self.args.index.uri!r} holds items made by bundle version "
                f"{found}, but this app serves bundle version {version} "
                f"({s.bundle}); serving both would mix two models' classifiers. Give "
                "index.uri (and index.name) a new location, which seeds itself from this "
                "bundle, or set allow_bundle_mismatch: true to serve it as it is"
            )

    # ----------------------------------------------------------------- helpers
    async def _timed(self, stage: str, awaitable):
        t0 = time.perf_counter()
        try:
            return await awaitable
        finally:
            self.metrics.observe_stage(stage, time.perf_counter() - t0)

    # ----------------------------------------------------------------- the query route
    # (first: routes are matched in the order they are declared)
    @api.post(
        "/v1/query",
        response_model=QueryResponse,
        summary="Top-k items per text: id, score, source; text / metadata with `with_payload`",
    )
    async def query(self, req: QueryRequest, scope: Scope = Depends(require_read)) -> JSONResponse:
        texts, k = check_query(req, self.limits)
        fields = payload_fields(req.with_payload)
        search = self._queries.search(texts, k, scope.filter(req.filter))
        hits = await self._timed("encode_search", search)
        self.metrics.queries.inc(len(texts))
        floor = req.score_threshold
        rows = [
            [_hit(h, fields, scope) for h in row if floor is None or h[1] >= floor] for row in hits
        ]
        return JSONResponse({"results": [[h for h in row if h] for row in rows]})

    # ----------------------------------------------------------------- writes
    @api.post(
        "/v1/items",
        response_model=IngestResponse,
        summary="Add or update items (acknowledged after the write-ahead log write)",
    )
    async def ingest(
        self, req: IngestRequest, scope: Scope = Depends(require_write)
    ) -> JSONResponse:
        check_ingest(req, self.limits)
        ids = [it.id for it in req.items]
        texts = [it.text for it in req.items]
        meta = [scope.metadata(it.metadata) for it in req.items]

        async def write(s: Serving) -> tuple:
            emb = await self._timed("encode", s.encoder.encode(texts))
            clf = await self._timed("generate", self._generator.generate.remote(emb, s.bundle))
            records = Records.of(texts, meta, "generated", s.info["version"])
            return await self._timed("index_add", s.index.upsert(scope.ids(ids), clf, records))

        seq, created = await self._written(write)
        self.metrics.observe_ingest(len(ids))
        results = [
            {"id": i, "status": "created" if c else "updated"}
            for i, c in zip(ids, created.tolist(), strict=True)
        ]
        return JSONResponse({"results": results, "count": len(ids), "seq": int(seq)})

    @api.delete(
        "/v1/items/{item_id:path}",
        response_model=DeleteResponse,
        responses={404: {"description": "no such item"}},
    )
    async def delete_item(
        self, item_id: str, scope: Scope = Depends(require_write)
    ) -> DeleteResponse:
        _existing_id(item_id)
        present = await self._written(lambda s: s.index.delete([scope.id(item_id)]))
        if not present[0]:
            raise HTTPException(404, f"item {item_id!r} not found")
        return DeleteResponse(id=item_id, deleted=True)

    @api.post(
        "/v1/items/delete",
        response_model=DeleteManyResponse,
        summary="Delete items by id (any id, including ones with '/' or '..')",
    )
    async def delete_items(
        self, req: IdsRequest, scope: Scope = Depends(require_write)
    ) -> DeleteManyResponse:
        ids = check_ids(req, self.limits)
        present = await self._written(lambda s: s.index.delete(scope.ids(ids)))
        return DeleteManyResponse(
            results=[
                DeleteResponse(id=i, deleted=bool(p)) for i, p in zip(ids, present, strict=True)
            ]
        )

    @api.post(
        "/v1/items/delete_by_filter",
        response_model=DeleteByFilterResponse,
        summary="Delete every item a filter matches",
    )
    async def delete_by_filter(
        self, req: DeleteByFilterRequest, scope: Scope = Depends(require_write)
    ) -> DeleteByFilterResponse:
        deleted = await self._written(lambda s: s.index.delete_where(scope.filter(req.filter)))
        return DeleteByFilterResponse(deleted=int(deleted))

    @api.post(
        "/v1/snapshot", response_model=SnapshotResponse, dependencies=[Depends(require_admin)]
    )
    async def snapshot(self) -> SnapshotResponse:
        seq = await self._index.snapshot()
        return SnapshotResponse(seq=int(seq))

    # ----------------------------------------------------------------- other reads
    @api.post(
        "/v1/count",
        response_model=CountResponse,
        summary="How many items match a filter (all items without one)",
    )
    async def count(self, req: CountRequest, scope: Scope = Depends(require_read)) -> CountResponse:
        return CountResponse(count=int(await self._index.count_where(scope.filter(req.filter))))

    @api.post(
        "/v1/items/scroll",
        response_model=ScrollResponse,
        summary="Page through the items (matching a filter) in a stable order: id, text, "
        "metadata, source, version; follow `next_cursor`",
    )
    async def scroll(
        self, req: ScrollRequest, scope: Scope = Depends(require_read)
    ) -> ScrollResponse:
        after = -1 if req.cursor is None else int(req.cursor)
        iids = await self._index.scroll(after, req.limit + 1, scope.filter(req.filter))
        more = len(iids) > req.limit
        iids = iids[: req.limit]
        names, records = await self._index.lookup(iids) if len(iids) else ([], [])
        items = [
            ScrollItem(id=scope.user_id(n), **r)
            for n, r in zip(names, records, strict=True)
            if n is not None and scope.user_id(n) is not None
        ]
        return ScrollResponse(
            items=items, next_cursor=str(int(iids[-1])) if more and len(iids) else None
        )

    @api.get(
        "/v1/items/{item_id:path}",
        response_model=ItemOut,
        response_model_exclude_none=True,
        responses={404: {"description": "no such item"}},
        summary="Read an item: its text, metadata, source, bundle version (vector if asked; "
        "with `explain=true`, the seen neighbours its generated classifier comes from)",
    )
    async def get_item(
        self,
        item_id: str,
        include_vector: bool = False,
        explain: bool = False,
        scope: Scope = Depends(require_read),
    ) -> ItemOut:
        stored = scope.id(_existing_id(item_id))
        vec, (record,) = await asyncio.gather(
            self._index.get(stored), self._index.get_records([stored])
        )
        if vec is None:
            raise HTTPException(404, f"item {item_id!r} not found")
        out = _item_out(item_id, vec, include_vector, record)
        if explain:
            out.explain = await self._explain(vec, record or {})
        return out

    async def _explain(self, vec: np.ndarray, record: dict) -> dict:
        """Which seen items a generated classifier comes from: the serving bundle's
        generator rerun on the stored text (its selector's K neighbours, their cosine to the
        text and the attention they receive), and how close that is to the stored vector."""
        s = self._s
        out = {"bundle_version": s.info["version"], "neighbors": []}
        if record.get("source") != "generated" or not record.get("text"):
            out["reason"] = "a trained classifier (learned from interactions): no neighbours"
            return out
        emb = await s.encoder.encode([record["text"]])  # (1, d)
        clf, names, cos, att = await self._generator.explain.remote(emb, s.bundle)
        stored = np.asarray(vec, dtype=np.float32)
        out["made_by_this_bundle"] = record.get("version") == s.info["version"]
        out["cosine_to_stored_vector"] = float(
            clf[0] @ stored / max(float(np.linalg.norm(stored)), 1e-12)
        )
        out["self_attention"] = float(att[0, 0])
        out["neighbors"] = [
            {"id": n, "cosine": float(c), "attention": float(a)}
            for n, c, a in zip(names[0], cos[0].tolist(), att[0, 1:].tolist(), strict=True)
            if n is not None and c > 0
        ]
        return out

    @api.post(
        "/v1/items/fetch",
        response_model=FetchResponse,
        response_model_exclude_none=True,
        summary="Read items by id (any id, including ones with '/' or '..')",
    )
    async def fetch_items(
        self, req: IdsRequest, scope: Scope = Depends(require_read)
    ) -> JSONResponse:
        ids = check_ids(req, self.limits)
        vecs, records = await asyncio.gather(
            self._index.get_many(scope.ids(ids)), self._index.get_records(scope.ids(ids))
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
            generation=self._s.generation,
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

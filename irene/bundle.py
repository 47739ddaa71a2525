"""The artifact bundle: one versioned unit with everything serving needs.

Layout (a local directory or an ``s3://`` prefix)::

    manifest.json        format, versions, config hash, metrics, sha256 of every file
    config.yaml          the TrainConfig used
    encoder/             HF model + tokenizer (safetensors) + irene_encoder.json
    classifiers/         seen-item classifiers (base + delta, safetensors) + JSON
    generator/           IRENE generator (safetensors) + JSON
    selector/            seen-item embeddings for kNN (safetensors) + JSON
    items.json           the trained items' ids, in classifier order
    items.parquet        every catalogue item: id, text, metadata (JSON), source (trained |
                         generated), row (its row in classifiers/ or in generated.npy)
    generated.npy        (n_generated, d) float32 classifiers generated at bundle time for the
                         catalogue items without interactions

``manifest.json`` also names the bundle ``version`` (what index records name as the maker of
a vector) and what it was ``trained_on`` (inputs, fingerprints, counts).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import faiss  # noqa: I001
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from irene import __version__, io
from irene.config import TrainConfig, config_hash, from_dict, to_dict
from irene.index.records import Records
from irene.model.classifiers import OVAClassifiers
from irene.model.encoder import CONFIG_FILE as ENCODER_CONFIG
from irene.model.encoder import TextEncoder
from irene.model.generator import IreneGenerator
from irene.model.selector import Selector
from irene.model.synthesis import explain, synthesize

log = logging.getLogger(__name__)

FORMAT = "irene-bundle"
FORMAT_VERSION = 2  # 2: pre-norm mean-pooling generator, the one Config's TrainConfig


class BundleError(RuntimeError):
    pass


@dataclass
class BundleItems:
    """Every catalogue item of a bundle, in catalogue order."""

    ids: list[str]
    texts: list[str]
    metadata: list[dict[str, Any]]
    trained_row: np.ndarray  # (n,) int64: row in the classifiers, -1 = generated
    generated: np.ndarray  # (n_generated, d) float32, for the rows with trained_row == -1

    def __post_init__(self) -> None:
        n, n_gen = len(self.ids), int((self.trained_row < 0).sum())
        if not (len(self.texts) == len(self.metadata) == len(self.trained_row) == n):
            raise BundleError("bundle items: ids, texts, metadata and rows differ in length")
        if len(self.generated) != n_gen:
            raise BundleError(
                f"bundle items: {n_gen} generated items, {len(self.generated)} vectors"
            )

    def table(self) -> pa.Table:
        gen = self.trained_row < 0
        row = self.trained_row.copy()
        row[gen] = np.arange(int(gen.sum()))
        return pa.table(
            {
                "id": self.ids,
                "text": self.texts,
                "metadata": [Records.metadata_json(m) for m in self.metadata],
                "source": np.where(gen, "generated", "trained").tolist(),
                "row": row,
            }
        )


@dataclass
class Bundle:
    encoder: TextEncoder
    classifiers: OVAClassifiers
    generator: IreneGenerator
    selector: Selector
    item_ids: list[str]  # trained items, in classifier order
    config: TrainConfig
    manifest: dict[str, Any] = field(default_factory=dict)
    _weights_cache: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def dim(self) -> int:
        return self.selector.item_emb.shape[1]

    def seen_classifiers(self) -> np.ndarray:
        """(S, d) float32 normalised classifiers of the seen items."""
        return self.classifiers.weights().cpu().numpy()

    def synthesize(self, item_emb: np.ndarray, k: int | None = None) -> np.ndarray:
        """(n, d) generated classifiers for novel items from their text embeddings."""
        k = k or self.config.generator.num_neighbors
        return synthesize(self.generator, self.selector, self._weights(), item_emb, k)

    def explain(self, item_emb: np.ndarray, k: int | None = None) -> tuple:
        """``irene.model.synthesis.explain`` with this bundle's parts: (classifiers,
        neighbour positions in ``item_ids``, cosines, attention)."""
        k = k or self.config.generator.num_neighbors
        return explain(self.generator, self.selector, self._weights(), item_emb, k)

    def _weights(self) -> np.ndarray:
        if self._weights_cache is None:
            self._weights_cache = self.seen_classifiers()
        return self._weights_cache


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import transformers

    return {
        "irene": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "faiss": faiss.__version__,
    }


def save_bundle(
    uri: str,
    encoder: TextEncoder,
    classifiers: OVAClassifiers,
    generator: IreneGenerator,
    selector: Selector,
    item_ids: list[str],
    config: TrainConfig,
    metrics: dict[str, Any] | None = None,
    items: BundleItems | None = None,
    trained_on: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a bundle to a local directory or s3:// prefix; returns the manifest. ``items``:
    every catalogue item (trained ones and those generated at bundle time) with its record;
    without it the index is seeded with the trained items only, with empty records."""
    if len(item_ids) != classifiers.num_items or len(item_ids) != selector.num_items:
        raise BundleError("item_ids, classifiers and selector disagree on the number of seen items")
    if len(set(item_ids)) != len(item_ids):
        raise BundleError("seen item ids must be unique")
    created = dt.datetime.now(dt.UTC)
    version = f"{created:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        if items is not None:
            if len(set(items.ids)) != len(items.ids):
                raise BundleError("catalogue item ids must be unique")
            trained = items.trained_row[items.trained_row >= 0]
            if [
                items.ids[i] for i in np.flatnonzero(items.trained_row >= 0)[np.argsort(trained)]
            ] != list(item_ids):
                raise BundleError("bundle items: the trained rows do not match item_ids")
            pq.write_table(items.table(), os.path.join(tmp, "items.parquet"))
            np.save(os.path.join(tmp, "generated.npy"), items.generated.astype(np.float32))
        encoder.save(os.path.join(tmp, "encoder"))
        with open(os.path.join(tmp, "encoder", ENCODER_CONFIG)) as f:
            encoder_runtime = json.load(f).get("runtime")
        classifiers.save(os.path.join(tmp, "classifiers"))
        generator.save(os.path.join(tmp, "generator"))
        selector.save(os.path.join(tmp, "selector"))
        with open(os.path.join(tmp, "items.json"), "w") as f:
            json.dump(item_ids, f)
        with open(os.path.join(tmp, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(config), f, sort_keys=False)
        files = {}
        for root, _, names in os.walk(tmp):
            for n in sorted(names):
                full = os.path.join(root, n)
                files[os.path.relpath(full, tmp)] = _sha256(full)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": version,
            "created_at": created.isoformat(),
            "versions": _versions(),
            "config_hash": config_hash(config),
            "trained_on": trained_on or {},
            # the runtime prepare encoded with and ingest / serving load (encoder/ config)
            "encoder_runtime": encoder_runtime,
            "num_seen_items": len(item_ids),
            "num_items": len(items.ids) if items is not None else len(item_ids),
            "num_generated_items": len(items.generated) if items is not None else 0,
            "dim": selector.item_emb.shape[1],
            "metrics": metrics or {},
            "files": dict(sorted(files.items())),
        }
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        if io.exists(uri) and io.listdir(uri):
            log.warning("overwriting existing bundle at %s", uri)
        io.copy_tree(tmp, uri)
    log.info(
        "bundle %s written to %s (%d trained, %d generated items)",
        version,
        uri,
        len(item_ids),
        manifest["num_generated_items"],
    )
    return manifest


def read_manifest(uri: str) -> dict:
    """A bundle's ``manifest.json`` (config hash, files, metrics of its build) without loading it."""
    if not io.exists(io.join(uri, "manifest.json")):
        raise BundleError(f"no bundle at {uri}: manifest.json not found")
    return json.loads(io.read_text(io.join(uri, "manifest.json")))


def _local_copy(uri: str, verify: bool, parts: tuple[str, ...] | None = None) -> tuple[str, dict]:
    """(local directory, manifest) of a bundle; an s3:// bundle is copied to a temp dir first
    (only the files/directories ``parts`` when given). Checksums of the files used are verified."""
    manifest = read_manifest(uri)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"unsupported bundle format at {uri}: {manifest.get('format')} v{manifest.get('format_version')}"
        )
    local = str(uri)

    def wanted(rel: str) -> bool:
        return parts is None or any(rel == p or rel.startswith(p + "/") for p in parts)

    if io.is_s3(uri):
        local = tempfile.mkdtemp(prefix="irene-bundle-")
        if parts is None:
            io.copy_tree(uri, local)
        else:
            for rel in manifest["files"]:
                if wanted(rel):
                    dst = os.path.join(local, rel)
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    with open(dst, "wb") as f:
                        f.write(io.read_bytes(io.join(uri, rel)))
    if verify:
        for rel, digest in manifest["files"].items():
            if not wanted(rel):
                continue
            path = os.path.join(local, rel)
            if not os.path.exists(path) or _sha256(path) != digest:
                raise BundleError(f"bundle file {rel} is missing or corrupt (sha256 mismatch)")
    return local, manifest


def load_encoder(uri: str, device: str = "auto", verify: bool = True) -> TextEncoder:
    """Only the text encoder of a bundle (local or s3://; for processes that only encode)."""
    local, _ = _local_copy(uri, verify, parts=("encoder",))
    return TextEncoder.load(os.path.join(local, "encoder"), device=device).eval()


def load_seen_classifiers(uri: str, verify: bool = True) -> tuple[list[str], np.ndarray]:
    """(seen item ids, their classifiers (S, d) float32) of a bundle: what an index is seeded
    with. Reads only those two parts (local or s3://)."""
    local, _ = _local_copy(uri, verify, parts=("classifiers", "items.json"))
    with open(os.path.join(local, "items.json")) as f:
        ids = json.load(f)
    clf = OVAClassifiers.load(os.path.join(local, "classifiers"))
    return ids, clf.weights().numpy()


def bundle_version(manifest: dict) -> str:
    """The version string of a bundle (what index records name as the maker of a vector)."""
    return str(manifest.get("version") or manifest.get("config_hash") or "")


def iter_index_items(
    uri: str, chunk: int = 4096, verify: bool = True
) -> Iterator[tuple[list[str], np.ndarray, Records]]:
    """What a fresh index is seeded with, ``chunk`` items at a time: (ids, vectors (n, d)
    float32, records). Every catalogue item of the bundle: trained items with their trained
    classifiers, items without interactions with the classifiers generated at bundle time."""
    parts = ("classifiers", "items.json", "items.parquet", "generated.npy")
    local, manifest = _local_copy(uri, verify, parts=parts)
    version = bundle_version(manifest)
    trained = OVAClassifiers.load(os.path.join(local, "classifiers")).weights().numpy()
    if "items.parquet" not in manifest["files"]:  # a bundle of the zero-shot protocol
        with open(os.path.join(local, "items.json")) as f:
            ids = json.load(f)
        for s in range(0, len(ids), chunk):
            part = ids[s : s + chunk]
            yield (
                part,
                trained[s : s + chunk],
                Records.of([""] * len(part), None, "trained", version),
            )
        return
    generated = np.load(os.path.join(local, "generated.npy"))
    for batch in pq.ParquetFile(os.path.join(local, "items.parquet")).iter_batches(chunk):
        cols = batch.to_pydict()
        source, row = cols["source"], np.asarray(cols["row"], dtype=np.int64)
        gen = np.asarray(source) == "generated"
        vecs = np.where(
            gen[:, None], generated[np.where(gen, row, 0)], trained[np.where(gen, 0, row)]
        )
        meta = [json.loads(m) for m in cols["metadata"]]
        yield (
            cols["id"],
            vecs.astype(np.float32),
            Records(cols["text"], meta, source, [version] * len(row)),
        )


def bundle_item_ids(uri: str, verify: bool = True) -> set[str]:
    """The ids of the bundle's catalogue items (what ``iter_index_items`` seeds)."""
    local, manifest = _local_copy(uri, verify, parts=("items.json", "items.parquet"))
    if "items.parquet" not in manifest["files"]:
        with open(os.path.join(local, "items.json")) as f:
            return set(json.load(f))
    return set(
        pq.read_table(os.path.join(local, "items.parquet"), columns=["id"])["id"].to_pylist()
    )


def load_bundle(uri: str, device: str = "auto", verify: bool = True) -> Bundle:
    """Load a bundle from a local directory or s3:// prefix (checksums verified)."""
    local, manifest = _local_copy(uri, verify)
    with open(os.path.join(local, "config.yaml")) as f:
        config = from_dict(TrainConfig, yaml.safe_load(f))
    with open(os.path.join(local, "items.json")) as f:
        item_ids = json.load(f)
    return Bundle(
        encoder=TextEncoder.load(os.path.join(local, "encoder"), device=device).eval(),
        classifiers=OVAClassifiers.load(os.path.join(local, "classifiers")).eval(),
        generator=IreneGenerator.load(os.path.join(local, "generator")),
        selector=Selector.load(os.path.join(local, "selector")),
        item_ids=item_ids,
        config=config,
        manifest=manifest,
    )

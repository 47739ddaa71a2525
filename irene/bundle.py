"""The artifact bundle: one versioned unit with everything serving needs.

Layout (a local directory or an ``s3://`` prefix)::

    manifest.json        format, versions, config hash, metrics, sha256 of every file
    config.yaml          the TrainConfig used
    encoder/             HF model + tokenizer (safetensors) + irene_encoder.json
    classifiers/         seen-item classifiers (base + delta, safetensors) + JSON
    generator/           IRENE generator (safetensors) + JSON
    selector/            seen-item embeddings for kNN (safetensors) + JSON
    items.json           the seen items' string ids, in classifier order
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any

import faiss  # noqa: I001
import numpy as np
import torch
import yaml

from irene import __version__, io
from irene.config import TrainConfig, config_hash, from_dict, to_dict
from irene.index.records import Records
from irene.model.classifiers import OVAClassifiers
from irene.model.encoder import TextEncoder
from irene.model.generator import IreneGenerator
from irene.model.selector import Selector
from irene.model.synthesis import generate

log = logging.getLogger(__name__)

FORMAT = "irene-bundle"
FORMAT_VERSION = 2  # 2: pre-norm mean-pooling generator, the one Config's TrainConfig


class BundleError(RuntimeError):
    pass


@dataclass
class Bundle:
    encoder: TextEncoder
    classifiers: OVAClassifiers
    generator: IreneGenerator
    selector: Selector
    item_ids: list[str]  # seen items, in classifier order
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
        idx, scores = self.selector.search(item_emb, k)
        return generate(self.generator, item_emb, idx, scores, self._weights())

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
) -> dict[str, Any]:
    """Write a bundle to a local directory or s3:// prefix; returns the manifest."""
    if len(item_ids) != classifiers.num_items or len(item_ids) != selector.num_items:
        raise BundleError("item_ids, classifiers and selector disagree on the number of seen items")
    if len(set(item_ids)) != len(item_ids):
        raise BundleError("seen item ids must be unique")
    with tempfile.TemporaryDirectory() as tmp:
        encoder.save(os.path.join(tmp, "encoder"))
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
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "versions": _versions(),
            "config_hash": config_hash(config),
            "num_seen_items": len(item_ids),
            "dim": selector.item_emb.shape[1],
            "metrics": metrics or {},
            "files": dict(sorted(files.items())),
        }
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        if io.exists(uri) and io.listdir(uri):
            log.warning("overwriting existing bundle at %s", uri)
        io.copy_tree(tmp, uri)
    log.info("bundle written to %s (%d seen items)", uri, len(item_ids))
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
    local, manifest = _local_copy(uri, verify, parts=("classifiers", "items.json"))
    version = bundle_version(manifest)
    with open(os.path.join(local, "items.json")) as f:
        ids = json.load(f)
    vecs = OVAClassifiers.load(os.path.join(local, "classifiers")).weights().numpy()
    for s in range(0, len(ids), chunk):
        part = ids[s : s + chunk]
        yield part, vecs[s : s + chunk], Records.of([""] * len(part), None, "trained", version)


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

"""The pieces of bulk ingest shared by the in-process run (:mod:`irene.ingest`) and the Ray
Data run (:mod:`irene.ray.ingest`): the item readers, the stages, the report.

Both runners import this module and nothing here imports either of them, so the two never
import each other's internals (:mod:`irene.ingest` describes the flow, the stages and the input
formats).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from irene import io
from irene.config import Config
from irene.index.records import Records
from irene.metadata import MAX_METADATA_BYTES, MetadataError, check_metadata

FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".tsv": "tsv", ".txt": "tsv"}
STAGES = ("skip", "encode", "generate", "write")
RESERVED = ("id", "text", "metadata")  # columns that are not metadata
NO_META = "{}"


class IngestError(ValueError):
    """Bad input: unknown format, missing columns, malformed lines."""


# --------------------------------------------------------------------------- input
def item_files(uri: str) -> tuple[str, list[str]]:
    """(format, files) of an items file or directory (files of one format, sorted)."""
    if not io.exists(uri):
        raise IngestError(f"items not found: {uri}")
    fs, path = io.resolve(uri)
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type == pafs.FileType.Directory:
        names = sorted(n for n in io.listdir(uri) if _format(n, strict=False))
        files = [io.join(uri, n) for n in names]
    else:
        files = [uri]
    if not files:
        raise IngestError(f"no .parquet/.jsonl/.tsv files in {uri}")
    formats = {_format(f) for f in files}
    if len(formats) > 1:
        raise IngestError(f"{uri} mixes formats {sorted(formats)}")
    return formats.pop(), files


def _format(name: str, strict: bool = True) -> str | None:
    for ext, fmt in FORMATS.items():
        if name.endswith(ext):
            return fmt
    if strict:
        raise IngestError(f"unknown items format of {name!r}; expected one of {sorted(FORMATS)}")
    return None


def parse_tsv(lines: list[str], where: str = "") -> tuple[list[str], list[str]]:
    """``id<TAB>text`` lines (blank lines skipped) -> (ids, texts)."""
    ids, texts = [], []
    for n, line in enumerate(lines):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        id_, sep, text = line.partition("\t")
        if not sep or not id_ or not text.strip():
            raise IngestError(f"{where} line {n + 1}: expected 'id<TAB>text', got {line[:80]!r}")
        ids.append(id_)
        texts.append(text)
    return ids, texts


def check_rows(ids: list, texts: list, where: str) -> None:
    for i, t in zip(ids, texts, strict=True):
        if not isinstance(i, str) or not i or not isinstance(t, str) or not t.strip():
            raise IngestError(f"{where}: every row needs a non-empty string id and text")


def _metadata_object(v: Any, where: str) -> dict:
    """A row's ``metadata`` cell as a dict: an object (JSON, Parquet struct), a Parquet map
    (key/value pairs) or a JSON string of an object; null = none."""
    if v is None:
        return {}
    if isinstance(v, str):
        try:
            v = json.loads(v) if v.strip() else {}
        except ValueError as e:
            raise IngestError(f"{where}: metadata is not a JSON object ({e})") from None
    if isinstance(v, list) and all(isinstance(p, tuple) and len(p) == 2 for p in v):
        v = dict(v)  # a Parquet map column
    if not isinstance(v, dict):
        raise IngestError(f"{where}: metadata must be an object, got {type(v).__name__}")
    return {k: x for k, x in v.items() if x is not None}  # struct fields a row lacks: None


def row_metadata(row: dict, where: str, max_bytes: int = MAX_METADATA_BYTES) -> str:
    """The metadata of one input row (its ``metadata`` object plus every column other than
    id / text / metadata, nulls skipped), validated, as canonical JSON."""
    meta = _metadata_object(row.get("metadata"), where)
    for key, v in row.items():
        if key in RESERVED or v is None:
            continue
        if key in meta:
            raise IngestError(f"{where}: {key!r} is both a column and a metadata key")
        meta[key] = v
    if not meta:
        return NO_META
    try:
        meta = check_metadata(meta, f"{where}: metadata", max_bytes)
    except MetadataError as e:
        raise IngestError(str(e)) from None
    return Records.metadata_json(meta)


def parse_rows(rows: list[dict], where: str, first: int = 0) -> tuple[list, list, list]:
    """Row dicts (JSONL objects, Parquet rows) -> (ids, texts, metadata JSON strings);
    ``first``: the row number of ``rows[0]`` in its file (for messages)."""
    ids, texts = [r.get("id") for r in rows], [r.get("text") for r in rows]
    check_rows(ids, texts, where)
    metas = [row_metadata(r, f"{where} row {first + n + 1}") for n, r in enumerate(rows)]
    return ids, texts, metas


def parse_jsonl(lines: list[str], where: str, first: int = 0) -> tuple[list, list, list]:
    """JSONL lines (blank lines skipped) -> (ids, texts, metadata JSON strings)."""
    rows = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise IngestError(f"{where} line {first + n + 1}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise IngestError(f"{where} line {first + n + 1}: expected a JSON object")
        rows.append(row)
    return parse_rows(rows, where, first)


def iter_items(uri: str, batch_size: int) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """(ids, texts, metadata JSON strings) batches of at most ``batch_size`` rows, in file
    order (TSV rows have no metadata: ``"{}"``)."""
    fmt, files = item_files(uri)
    for f in files:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            fs, path = io.resolve(f)
            with fs.open_input_file(path) as fh:
                done = 0
                for rb in pq.ParquetFile(fh).iter_batches(batch_size):
                    yield parse_rows(rb.to_pylist(), f, done)
                    done += rb.num_rows
            continue
        lines = io.read_text(f).splitlines()
        for s in range(0, len(lines), batch_size):
            chunk = lines[s : s + batch_size]
            if fmt == "tsv":
                ids, texts = parse_tsv(chunk, f"{f}:{s}")
                metas = [NO_META] * len(ids)
            else:
                ids, texts, metas = parse_jsonl(chunk, f, s)
            if ids:
                yield ids, texts, metas


def write_tsv(path: str, items: list[tuple[str, str]]) -> str:
    """Write (id, text) items as ``id<TAB>text`` lines (whitespace in texts collapsed)."""
    lines = []
    for id_, text in items:
        if "\t" in id_ or "\n" in id_:
            raise IngestError(f"id {id_!r} cannot be written to a TSV line")
        lines.append(f"{id_}\t{' '.join(text.split())}\n")
    io.write_text(path, "".join(lines))
    return path


def byte_ranges(files: list[str], parts: int, max_bytes: int = 16 << 20) -> list[dict]:
    """Split line-oriented files into ~``parts`` byte ranges (at most ``max_bytes`` each) so
    that many workers can read one big file; :func:`read_lines` aligns them to lines."""
    fs, _ = io.resolve(files[0])
    sizes = [fs.get_file_info(io.resolve(f)[1]).size for f in files]
    chunk = max(1 << 12, min(max_bytes, -(-sum(sizes) // max(parts, 1))))
    return [
        {"path": f, "start": lo, "end": min(lo + chunk, size)}
        for f, size in zip(files, sizes, strict=True)
        for lo in range(0, max(size, 1), chunk)
    ]


def read_lines(path: str, start: int, end: int) -> list[str]:
    """The lines that *start* in bytes [start, end) of ``path`` (a line belongs to the range
    holding its first byte), decoded as UTF-8."""
    fs, p = io.resolve(path)
    with fs.open_input_file(p) as f:
        f.seek(max(start - 1, 0))
        data = f.read(end - max(start - 1, 0))
        while data and not data.endswith(b"\n"):  # finish the last line started in range
            more = f.read(1 << 16)
            if not more:
                break
            cut = more.find(b"\n")
            data += more if cut < 0 else more[: cut + 1]
            if cut >= 0:
                break
    if start > 0:  # data[0] is the byte before the range: skip a line begun before it
        data = data[data.index(b"\n") + 1 :] if b"\n" in data else b""
    *full, last = data.decode("utf-8").split("\n")  # "\n" only: texts may hold \r, \x0b
    return [line + "\n" for line in full] + ([last] if last else [])


def count_items(uri: str) -> int:
    """Rows in the items (Parquet metadata; non-blank lines otherwise)."""
    fmt, files = item_files(uri)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        total = 0
        for f in files:
            fs, path = io.resolve(f)
            with fs.open_input_file(path) as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total
    return sum(sum(1 for line in io.read_text(f).splitlines() if line.strip()) for f in files)


# --------------------------------------------------------------------------- stages
def _timed(batch: dict, stage: str, t0: float) -> dict:
    n = len(batch["id"])
    batch[f"t_{stage}"] = np.full(n, (time.perf_counter() - t0) / max(n, 1), np.float64)
    return batch


def _rows(batch: dict, keep: np.ndarray) -> dict:
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


class Skip:
    """Drops rows whose id is already in the index (``skip_existing``)."""

    def __init__(self, index) -> None:
        self.index = index

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        ids = [str(i) for i in batch["id"]]
        present = np.asarray(self.index.contains(ids), dtype=bool) if ids else np.zeros(0, bool)
        return _timed(_rows(batch, ~present), "skip", t0)


class Encode:
    """``text`` -> ``emb`` (B, d) with the bundle's encoder (the text stays: Write stores it)."""

    def __init__(self, bundle: str, device: str = "auto") -> None:
        from irene.bundle import load_encoder

        self.encoder = load_encoder(bundle, device=device)

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        texts = [str(t) for t in batch["text"]]
        emb = self.encoder.encode(texts) if texts else np.zeros((0, self.encoder.dim), np.float32)
        out = dict(batch)
        out["emb"] = np.asarray(emb, np.float32)  # (B, d)
        return _timed(out, "encode", t0)


class Generate:
    """``emb`` -> ``clf`` (B, d): selector kNN over the seen items + the IRENE generator."""

    def __init__(self, bundle: str) -> None:
        from irene.bundle import load_bundle

        self.bundle = load_bundle(bundle, device="cpu")
        self.bundle.encoder = None  # not needed here

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        n, d = len(batch["id"]), self.bundle.dim
        emb = np.array(batch["emb"], np.float32).reshape(n, d)  # (B, d), writable for torch
        clf = self.bundle.synthesize(emb) if n else emb
        out = {k: v for k, v in batch.items() if k != "emb"}
        out["clf"] = np.asarray(clf, np.float32)  # (B, d)
        return _timed(out, "generate", t0)


class Write:
    """One durable upsert of the batch (vectors + records: text, metadata, source
    "generated", ``version``) through the index's router; keeps only ids + times."""

    def __init__(self, index, version: str = "") -> None:
        self.index = index
        self.version = version  # the bundle's (irene.bundle.bundle_version)

    def records(self, batch: dict) -> Records:
        texts = [str(t) for t in batch["text"]]
        metas = batch.get("meta")
        meta = None if metas is None else [json.loads(str(m)) for m in metas]
        return Records.of(texts, meta, "generated", self.version)

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        ids = [str(i) for i in batch["id"]]
        if ids:
            clf = np.asarray(batch["clf"], np.float32).reshape(len(ids), -1)  # (B, d)
            self.index.add(ids, clf, self.records(batch))
        out = {k: v for k, v in batch.items() if k not in ("clf", "text", "meta")}
        return _timed(out, "write", t0)


# --------------------------------------------------------------------------- report
@dataclass
class IngestReport:
    """What an ingest did: rows read, skipped (already present) and written, seconds, the
    seconds per stage (summed over batches) and the index count after."""

    items: int = 0
    skipped: int = 0
    written: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    index_count: int = 0
    executor: str = "local"
    first_batch_s: float = 0.0  # until the first batch was written (start-up included)
    first_batch_items: int = 0

    def observe(self, batch: dict, read: int) -> None:
        self.items += read
        self.written += len(batch["id"])
        for s in STAGES:
            if f"t_{s}" in batch:
                self.stage_seconds[s] += float(np.sum(batch[f"t_{s}"]))

    def observe_first(self, seconds: float, items: int) -> None:
        if not self.first_batch_items:
            self.first_batch_s, self.first_batch_items = seconds, items

    def to_dict(self) -> dict[str, Any]:
        rate = self.written / self.seconds if self.seconds else 0.0
        total = sum(self.stage_seconds.values()) or 1.0
        after = self.seconds - self.first_batch_s
        # the rate after the first batch (start-up excluded); None where the rest arrived too
        # close behind it to time (Ray Data may hand a short run's batches over together)
        steady = None
        if after > 0.1 * self.seconds and self.written > self.first_batch_items:
            steady = round((self.written - self.first_batch_items) / after, 2)
        return {
            "executor": self.executor,
            "items": self.items,
            "skipped": self.skipped,
            "written": self.written,
            "seconds": round(self.seconds, 3),
            "items_per_s": round(rate, 2),
            "first_batch_s": round(self.first_batch_s, 3),
            "items_per_s_after_first_batch": steady,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "stage_share": {k: round(v / total, 4) for k, v in self.stage_seconds.items()},
            "index_count": self.index_count,
        }


def progress(total: int | None, enabled: bool = True):
    """A tqdm bar in items (rate and ETA), or a no-op bar."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def check_ingest_config(cfg: Config) -> None:
    if not cfg.bundle:
        raise IngestError("ingest needs a bundle ('bundle' / --bundle)")
    if not cfg.ingest.items:
        raise IngestError("ingest needs items ('ingest.items' / ITEMS)")
    if not cfg.ingest.index.uri:
        raise IngestError("ingest needs an index location ('ingest.index.uri' / --index)")
    item_files(cfg.ingest.items)

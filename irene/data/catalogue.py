"""Readers for a user's own data: the catalogue of items and the interactions that label them.

Catalogue, one row per item: ``id`` (string; integer ids are read as their decimal string),
``text``, and any other column as metadata (keyword, int, float, bool, list of keywords).
Interactions, one row per (query, item): ``query`` (text) or ``query_id`` plus a queries table
(``query_id``, ``text``), ``item_id``, optional ``weight`` (positive number, default 1).

Formats by extension: ``.parquet``, ``.csv`` (header row; every value read as a string, CSV
metadata columns typed over the whole column), ``.jsonl`` (one JSON object per line); a local
path or ``s3://`` URI of one file or of a directory of part files (read in name order).

Files are streamed with pyarrow and validated batch by batch. Reading is strict: any problem
raises one :class:`DataError` naming the file, the 1-based data row (CSV: header not counted;
JSONL: the line) and the column; nothing partial is returned.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pj
import pyarrow.parquet as pq
import scipy.sparse as sp

from irene import io

log = logging.getLogger(__name__)

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl"}
BATCH_ROWS = 65_536  # Parquet batch
CHUNK_BYTES = 8 << 20  # read size: hashing, CSV blocks, JSONL chunks
HEAD_BYTES = 1 << 20  # longest CSV header line
MAX_EXAMPLES = 5
INTERACTION_COLUMNS = ("query", "query_id", "item_id", "weight")


class DataError(ValueError):
    """Bad user input: message names file, row (1-based data row; header not counted) and
    column, e.g. ``items.csv, row 3, column 'id': duplicate id 'a' (also at row 1)``."""

    def __init__(
        self, file: str, row: int | None = None, column: str | None = None, message: str = ""
    ) -> None:
        self.file = str(file)
        self.row = row
        self.column = column
        self.message = message
        where = self.file
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # picklable across processes (Ray)
        return type(self), (self.file, self.row, self.column, self.message)


@dataclass
class Catalogue:
    ids: list[str]  # item ids (unique, non-empty strings), file order
    texts: list[str]  # non-empty
    metadata: list[dict]  # per item: other columns -> str | int | float | bool | list[str]
    uri: str
    fingerprint: str  # sha256 hex of the file bytes (a directory: of its files, sorted)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Interactions:
    queries: list[str]  # unique query texts, first-seen order
    Y: sp.csr_matrix  # (n_queries, n_items) float32, summed weights of repeated pairs
    uri: str
    fingerprint: str
    n_rows: int  # rows read (a split part: of the file it came from)
    n_dropped: int  # rows naming unknown items that were dropped (drop_unknown)


# ----------------------------------------------------------------------------------------------
# files


def _basename(uri: str) -> str:
    s = str(uri).rstrip("/")
    return posixpath.basename(s) if io.is_s3(s) else os.path.basename(s)


def _format(uri: str) -> str:
    name = _basename(uri)
    ext = os.path.splitext(name)[1].lower()
    if ext in FORMATS:
        return FORMATS[ext]
    hint = ""
    if ext == ".json":
        hint = " (a file with one JSON object per line is .jsonl)"
    elif ext in (".gz", ".zst", ".bz2", ".zip"):
        hint = " (compressed files are not read: decompress it, or write Parquet)"
    raise DataError(
        uri, message=f"unknown extension {ext or '(none)'!r}: use .parquet, .csv or .jsonl{hint}"
    )


def _table_files(uri: str) -> list[str]:
    """The files of a table: ``uri`` itself, or a directory's part files in name order
    (names starting with "." or "_", e.g. ``_SUCCESS``, skipped)."""
    fs, path = io.resolve(uri)
    try:
        kind = fs.get_file_info(path).type
    except OSError as e:
        raise DataError(uri, message=f"cannot read: {e}") from None
    if kind == pa.fs.FileType.NotFound:
        raise DataError(uri, message="file not found")
    if kind != pa.fs.FileType.Directory:
        _format(uri)
        return [uri]
    files = [io.join(uri, n) for n in io.listdir(uri) if not n.startswith((".", "_"))]
    if not files:
        raise DataError(uri, message="directory holds no .parquet, .csv or .jsonl files")
    for f in files:
        _format(f)
    return files


def find_table(directory: str, stem: str) -> str | None:
    """``directory/stem.{parquet,csv,jsonl}`` if exactly one exists; None if none does."""
    found = [
        io.join(directory, stem + ext)
        for ext in FORMATS
        if io.exists(io.join(directory, stem + ext))
    ]
    if len(found) > 1:
        names = ", ".join(_basename(f) for f in found)
        raise DataError(directory, message=f"several tables named {stem!r} ({names}): keep one")
    return found[0] if found else None


@dataclass
class _Scan:
    sha256: str
    size: int
    quotes: int  # number of '"' bytes (CSV)
    head: bytes  # the first line (CSV header), up to HEAD_BYTES


def _scan(uri: str, head: bool = False) -> _Scan:
    """One streamed pass over the bytes: sha256, size, quote count, first line."""
    h = hashlib.sha256()
    size = quotes = 0
    first = b""
    try:
        with io.open_input(uri) as f:
            while data := f.read(CHUNK_BYTES):
                h.update(data)
                size += len(data)
                if head:
                    quotes += data.count(b'"')
                    if b"\n" not in first and len(first) < HEAD_BYTES:
                        first += data[: HEAD_BYTES - len(first)]
    except OSError as e:
        raise DataError(uri, message=f"cannot read: {e}") from None
    return _Scan(h.hexdigest(), size, quotes, first.split(b"\n", 1)[0])


def _fingerprint(files: list[str], digests: list[str]) -> str:
    if len(files) == 1:
        return digests[0]
    h = hashlib.sha256()
    for f, d in zip(files, digests, strict=True):
        h.update(f"{_basename(f)}\t{d}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# format readers: each yields _Part batches with the data row of every batch row


@dataclass
class _Part:
    file: str
    rows: np.ndarray  # (n,) int64 1-based data row of each row
    table: pa.Table

    def column(self, name: str) -> pa.Array | None:
        if name not in self.table.column_names:
            return None
        return self.table.column(name).combine_chunks()

    def first_row(self, mask) -> int | None:
        """Data row of the first True in a boolean array (nulls count as False)."""
        if isinstance(mask, pa.Array | pa.ChunkedArray):
            mask = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        hit = np.flatnonzero(mask)
        return int(self.rows[hit[0]]) if len(hit) else None


class _Reader:
    """One file: ``names`` (columns), iterate for :class:`_Part`; ``sha256`` once consumed."""

    file: str
    names: list[str]
    sha256: str | None = None

    def __iter__(self) -> Iterator[_Part]:
        raise NotImplementedError


def _check_names(file: str, names: list[str]) -> None:
    seen = set()
    for k, n in enumerate(names):
        if not n or not n.strip():
            raise DataError(file, message=f"empty column name (column {k + 1} of the header)")
        if n in seen:
            raise DataError(file, column=n, message="column appears twice")
        seen.add(n)


class _ParquetReader(_Reader):
    def __init__(self, uri: str, wanted: set[str] | None) -> None:
        self.file = uri
        scan = _scan(uri)
        if scan.size == 0:
            raise DataError(uri, message="empty file (0 bytes)")
        self.sha256 = scan.sha256
        self._fs, self._path = io.resolve(uri)
        try:
            with self._fs.open_input_file(self._path) as f:
                self.names = list(pq.read_schema(f).names)
        except (pa.ArrowException, OSError) as e:
            raise DataError(uri, message=f"not a readable Parquet file (truncated?): {e}") from None
        _check_names(uri, self.names)
        self._cols = [n for n in self.names if wanted is None or n in wanted]

    def __iter__(self) -> Iterator[_Part]:
        row = 1
        try:
            with self._fs.open_input_file(self._path) as f:
                batches = pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=self._cols)
                for batch in batches:
                    n = batch.num_rows
                    yield _Part(self.file, np.arange(row, row + n), pa.Table.from_batches([batch]))
                    row += n
        except (pa.ArrowException, OSError) as e:
            raise DataError(
                self.file, message=f"Parquet data unreadable after row {row - 1} (corrupted?): {e}"
            ) from None


def _text_lines(uri: str) -> Iterator[str]:
    """The file's lines (with their "\\n"), decoded streaming; bad UTF-8 replaced."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buf = ""
    with io.open_input(uri) as f:
        while data := f.read(CHUNK_BYTES):
            buf += dec.decode(data)
            *lines, buf = buf.split("\n")
            for line in lines:
                yield line + "\n"
    buf += dec.decode(b"", final=True)
    if buf:
        yield buf


def _csv_records(uri: str, strict: bool) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """(data row, record) with Python's csv module, for locating errors; a csv.Error ends it."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(_text_lines(uri), strict=strict)
    row = 0  # the header is record 0; blank lines are not rows (as in pyarrow)
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield row or None, e
            return
        if rec:
            if row:
                yield row, rec
            row += 1


class _CsvReader(_Reader):
    def __init__(self, uri: str, wanted: set[str] | None) -> None:
        self.file = uri
        scan = _scan(uri, head=True)
        if scan.size == 0:
            raise DataError(uri, message="empty file (0 bytes)")
        self.sha256 = scan.sha256
        try:
            header = scan.head.decode("utf-8").removeprefix("\ufeff").rstrip("\r")
        except UnicodeDecodeError:
            raise DataError(uri, message="the header line is not valid UTF-8") from None
        self.names = next(csv.reader([header]), [])
        _check_names(uri, self.names)
        self._cols = [n for n in self.names if wanted is None or n in wanted]
        if scan.quotes % 2:  # an odd number of quotes: maybe a quoted value cut at the end
            for row, rec in _csv_records(uri, strict=True):
                if isinstance(rec, csv.Error):
                    msg = str(rec)
                    if "unexpected end of data" in msg:
                        msg = "a quoted value is never closed: the file ends inside quotes (cut?)"
                    raise DataError(uri, row, message=f"malformed CSV: {msg}")

    def __iter__(self) -> Iterator[_Part]:
        convert = pcsv.ConvertOptions(
            column_types={n: pa.string() for n in self.names},
            include_columns=self._cols,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            check_utf8=False,  # checked per column, to name the row
        )
        read = pcsv.ReadOptions(block_size=CHUNK_BYTES)
        parse = pcsv.ParseOptions(newlines_in_values=True)
        row = 1
        try:
            with io.open_input(self.file) as f:
                reader = pcsv.open_csv(f, read, parse, convert)
                if reader.schema.names != self._cols:
                    raise DataError(self.file, message="cannot parse the header line")
                for batch in reader:
                    n = batch.num_rows
                    yield _Part(self.file, np.arange(row, row + n), pa.Table.from_batches([batch]))
                    row += n
        except pa.ArrowInvalid as e:
            raise self._parse_error(str(e)) from None
        except OSError as e:
            raise DataError(self.file, message=f"cannot read: {e}") from None

    def _parse_error(self, msg: str) -> DataError:
        msg = msg.removeprefix("CSV parse error: ")
        m = re.match(r"Expected (\d+) columns, got (\d+)", msg)
        if m:
            n, rest = len(self.names), msg[m.end() :]
            records = _csv_records(self.file, strict=False)
            row = next(
                (r for r, rec in records if isinstance(rec, csv.Error) or len(rec) != n), None
            )
            return DataError(
                self.file, row, message=f"expected {m[1]} columns, got {m[2]}: {rest.lstrip(': ')}"
            )
        return DataError(self.file, message=f"malformed CSV: {msg}")


_JSON_ROW = re.compile(r" in row (\d+)$")
_JSON_COLUMN = re.compile(r"Column\(/?([^)/]*)[^)]*\)")
_JSON_KEY = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:')


class _JsonlReader(_Reader):
    def __init__(self, uri: str, schema: dict[str, pa.DataType] | None) -> None:
        self.file = uri
        self._schema = pa.schema(list((schema or {}).items())) if schema else None
        self._hash = hashlib.sha256()
        self._size = 0
        self._parts = self._iter_parts()
        self._first = next(self._parts, None)
        if self._first is None:
            if self._size == 0:
                raise DataError(uri, message="empty file (0 bytes)")
            self.names = []
            self.sha256 = self._hash.hexdigest()
        else:
            self.names = list(self._first.table.column_names)

    def __iter__(self) -> Iterator[_Part]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            yield from self._parts

    def _chunks(self) -> Iterator[tuple[int, bytes]]:
        """(line number of its first line, bytes) of whole lines, about CHUNK_BYTES each."""
        line, buf = 1, b""
        try:
            with io.open_input(self.file) as f:
                while data := f.read(CHUNK_BYTES):
                    self._hash.update(data)
                    if self._size == 0 and data.startswith(codecs.BOM_UTF8):
                        data = data[len(codecs.BOM_UTF8) :]
                        self._size += len(codecs.BOM_UTF8)
                    self._size += len(data)
                    buf += data
                    cut = buf.rfind(b"\n") + 1
                    if cut:
                        yield line, buf[:cut]
                        line += buf.count(b"\n", 0, cut)
                        buf = buf[cut:]
        except OSError as e:
            raise DataError(self.file, message=f"cannot read: {e}") from None
        self.sha256 = self._hash.hexdigest()
        if buf:
            yield line, buf

    def _iter_parts(self) -> Iterator[_Part]:
        for line, chunk in self._chunks():
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError as e:
                start = chunk.rfind(b"\n", 0, e.start) + 1
                keys = _JSON_KEY.findall(chunk[start : e.start])
                column = keys[-1].decode("utf-8", "replace") if keys else None
                row = line + chunk.count(b"\n", 0, e.start)
                msg = f"invalid UTF-8 byte {chunk[e.start]:#04x}"
                raise DataError(self.file, row, column, msg) from None
            pieces = chunk.split(b"\n")
            rows = np.asarray([line + k for k, p in enumerate(pieces) if p.strip()], dtype=np.int64)
            if not len(rows):
                continue
            try:
                table = pj.read_json(
                    pa.BufferReader(chunk),
                    read_options=pj.ReadOptions(use_threads=False, block_size=len(chunk) + 1),
                    parse_options=pj.ParseOptions(
                        explicit_schema=self._schema, unexpected_field_behavior="infer"
                    ),
                )
            except pa.ArrowInvalid as e:
                raise self._parse_error(str(e), rows, chunk.endswith(b"\n")) from None
            if table.num_rows != len(rows):
                raise DataError(self.file, int(rows[0]), message="cannot split the lines")
            yield _Part(self.file, rows, table)

    def _parse_error(self, msg: str, rows: np.ndarray, complete: bool) -> DataError:
        msg = msg.removeprefix("JSON parse error: ")
        row = column = None
        m = _JSON_ROW.search(msg)
        if m and int(m[1]) < len(rows):
            row = int(rows[int(m[1])])
            msg = msg[: m.start()]
        c = _JSON_COLUMN.search(msg)
        if c:
            column = c[1] or None
            changed = re.search(r"changed from (\w+) to (\w+)", msg)
            if column is None:
                msg = "each line must be one JSON object"
            elif changed and self._schema is not None and column in self._schema.names:
                msg = f"wrong type: expected a number, got {changed[2]}"
            elif changed:
                msg = f"mixed value types: {changed[1]} in earlier rows, {changed[2]} here"
            elif "specified twice" in msg:
                msg = "the key appears twice in the object"
        else:
            msg = f"invalid JSON: {msg.rstrip('. ')}"
            if row is not None and row == rows[-1] and not complete:
                msg += " (the last line is incomplete: file cut?)"
        return DataError(self.file, row, column, msg)


def _open(uri: str, wanted: set[str] | None = None, schema: dict | None = None) -> _Reader:
    fmt = _format(uri)
    if fmt == "parquet":
        return _ParquetReader(uri, wanted)
    if fmt == "csv":
        return _CsvReader(uri, wanted)
    return _JsonlReader(uri, schema)


# ----------------------------------------------------------------------------------------------
# column checks (per part, vectorised)


def _kind(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_struct(t) or pa.types.is_map(t):
        return "nested object"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list of {_kind(t.value_type)}s"
    if pa.types.is_temporal(t):
        return "date/time"
    if pa.types.is_null(t):
        return "null"
    return str(t)


def _plain(arr: pa.Array) -> pa.Array:
    """Dictionary-decoded; large strings as strings."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    return arr


def _check_utf8(part: _Part, name: str, arr: pa.Array) -> None:
    try:
        arr.validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    flat = arr
    while pa.types.is_list(flat.type):
        flat = pc.list_flatten(flat)  # (a list column: the row is found below)
    for i, v in enumerate(flat.cast(pa.binary()).to_pylist()):
        try:
            (v or b"").decode("utf-8")
        except UnicodeDecodeError as e:
            if flat is not arr:
                i = int(pc.list_parent_indices(arr)[i].as_py())
            msg = f"invalid UTF-8 byte {v[e.start]:#04x}"
            raise DataError(part.file, int(part.rows[i]), name, msg) from None
    raise DataError(part.file, None, name, "invalid string data")


def _wrong_type(part: _Part, name: str, arr: pa.Array, expected: str) -> DataError:
    row = part.first_row(pc.is_valid(arr))
    return DataError(part.file, row, name, f"wrong type: {_kind(arr.type)}, expected {expected}")


def _string_column(part: _Part, name: str, what: str, allow_int: bool) -> pa.Array:
    """A required string column: ints allowed for ids, non-empty, valid UTF-8."""
    arr = part.column(name)
    if arr is None:
        arr = pa.nulls(part.table.num_rows, pa.string())
    arr = _plain(arr)
    if pa.types.is_null(arr.type):
        arr = arr.cast(pa.string())
    elif pa.types.is_integer(arr.type) and allow_int:
        arr = arr.cast(pa.string())
    elif not pa.types.is_string(arr.type):
        raise _wrong_type(part, name, arr, "a string")
    _check_utf8(part, name, arr)
    row = part.first_row(
        pc.or_kleene(pc.is_null(arr), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0))
    )
    if row is not None:
        raise DataError(part.file, row, name, f"empty {what}")
    return arr


def _weight_column(part: _Part, name: str) -> np.ndarray:
    """Positive finite float64 weights; a missing value is 1."""
    arr = part.column(name)
    if arr is None:
        return np.ones(part.table.num_rows)
    arr = _plain(arr)
    if pa.types.is_string(arr.type):  # CSV
        _check_utf8(part, name, arr)
        arr = pc.utf8_trim_whitespace(arr)
        arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
        try:
            arr = arr.cast(pa.float64())
        except pa.ArrowInvalid:
            for i, v in enumerate(arr.to_pylist()):
                try:
                    pa.array([v], pa.string()).cast(pa.float64())
                except pa.ArrowInvalid:
                    raise DataError(
                        part.file, int(part.rows[i]), name, f"not a number: {v!r}"
                    ) from None
            raise
    elif (
        pa.types.is_null(arr.type)
        or pa.types.is_integer(arr.type)
        or pa.types.is_floating(arr.type)
    ):
        arr = arr.cast(pa.float64())
    else:
        raise _wrong_type(part, name, arr, "a positive number")
    w = pc.fill_null(arr, 1.0).to_numpy(zero_copy_only=False)
    bad = ~(np.isfinite(w) & (w > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            part.file, int(part.rows[i]), name, f"weight must be a positive number, got {w[i]:g}"
        )
    return w


@dataclass
class _MetaChunk:
    arr: pa.Array  # string (raw CSV) | int64 | float64 | bool | list<string> | null
    file: str
    first_row: int | None  # data row of the first non-null value
    raw_csv: bool = False


_META_TYPES = "a keyword, integer, number, boolean or list of keywords"


def _meta_column(part: _Part, name: str, arr: pa.Array, raw_csv: bool) -> _MetaChunk:
    arr = _plain(arr)
    t = arr.type
    if pa.types.is_null(t) or pa.types.is_boolean(t):
        pass
    elif pa.types.is_string(t):
        _check_utf8(part, name, arr)
    elif pa.types.is_integer(t):
        try:
            arr = arr.cast(pa.int64())
        except pa.ArrowInvalid:
            row = part.first_row(pc.greater(arr, 2**63 - 1))
            raise DataError(part.file, row, name, "integer too large") from None
    elif pa.types.is_floating(t) or pa.types.is_decimal(t):
        arr = arr.cast(pa.float64())
        row = part.first_row(pc.is_inf(arr))
        if row is not None:
            raise DataError(part.file, row, name, "infinite number")
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, pa.float64()), arr)  # NaN = missing
    elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_null(t.value_type)
        or pa.types.is_string(t.value_type)
        or pa.types.is_large_string(t.value_type)
        or (pa.types.is_dictionary(t.value_type) and pa.types.is_string(t.value_type.value_type))
    ):
        arr = arr.cast(pa.list_(pa.string()))
        _check_utf8(part, name, arr)
        nulls = pc.is_null(pc.list_flatten(arr)).to_numpy(zero_copy_only=False)
        if nulls.any():
            parent = pc.list_parent_indices(arr).to_numpy()[np.flatnonzero(nulls)[0]]
            raise DataError(part.file, int(part.rows[parent]), name, "null inside a list")
    else:
        raise _wrong_type(part, name, arr, _META_TYPES)
    return _MetaChunk(arr, part.file, part.first_row(pc.is_valid(arr)), raw_csv)


def _infer_csv(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    """A CSV metadata column (strings) typed as int, float, bool or keyword, whole column."""
    vals = pc.drop_null(arr)
    if len(vals) == 0:
        return arr
    try:
        ints = vals.cast(pa.int64())
        if pc.all(pc.equal(ints.cast(pa.string()), vals)).as_py():  # "007" stays a keyword
            return arr.cast(pa.int64())
        return arr
    except pa.ArrowInvalid:
        pass
    try:
        if pc.any(pc.is_inf(vals.cast(pa.float64()))).as_py():
            return arr  # "inf" is no JSON number: keep the column as keywords
        return pc.if_else(pc.is_nan(f := arr.cast(pa.float64())), pa.scalar(None, pa.float64()), f)
    except pa.ArrowInvalid:
        pass
    if pc.all(pc.is_in(pc.utf8_lower(vals), pa.array(["true", "false"]))).as_py():
        return pc.equal(pc.utf8_lower(arr), "true")
    return arr


def _metadata(columns: dict[str, list[_MetaChunk | int]], n: int) -> list[dict]:
    """Per-item dicts from metadata chunks (an int = that many rows without the column)."""
    out: list[dict] = [{} for _ in range(n)]
    for name, chunks in columns.items():
        present = [c for c in chunks if isinstance(c, _MetaChunk)]
        raw = [c for c in present if c.raw_csv]
        if raw:  # CSV columns: typed over all their values together
            typed = _infer_csv(pa.chunked_array([c.arr for c in raw], pa.string()))
            for c, a in zip(raw, _split(typed, raw), strict=True):
                c.arr = a
        valued = [c for c in present if c.first_row is not None]
        if not valued:
            continue  # no value anywhere
        ref = valued[0]
        types = {c.arr.type for c in valued}
        target = pa.float64() if types == {pa.int64(), pa.float64()} else ref.arr.type
        for c in valued:
            if c.arr.type != target and not (target == pa.float64() and c.arr.type == pa.int64()):
                where = f"row {ref.first_row}" + (f" of {ref.file}" if ref.file != c.file else "")
                raise DataError(
                    c.file,
                    c.first_row,
                    name,
                    f"{_kind(c.arr.type)} value, but {_kind(ref.arr.type)} values before ({where})",
                )
        values: list = []
        for c in chunks:
            if isinstance(c, int) or c.first_row is None:
                values.extend([None] * (c if isinstance(c, int) else len(c.arr)))
            else:
                values.extend(c.arr.cast(target).to_pylist())
        for d, v in zip(out, values, strict=True):
            if v is not None:
                d[name] = v
    return out


def _split(arr: pa.ChunkedArray, like: list[_MetaChunk]) -> list[pa.Array]:
    flat = arr.combine_chunks()
    out, k = [], 0
    for c in like:
        out.append(flat.slice(k, len(c.arr)))
        k += len(c.arr)
    return out


class _Rows:
    """Where each global row came from: (file index, data row), for messages."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.file_idx: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []

    def add(self, part: _Part) -> None:
        if not self.files or self.files[-1] != part.file:
            self.files.append(part.file)
        self.file_idx.append(np.full(len(part.rows), len(self.files) - 1, dtype=np.int32))
        self.rows.append(part.rows)

    def finish(self) -> None:
        self.file_idx = (
            [np.concatenate(self.file_idx)] if self.file_idx else [np.zeros(0, np.int32)]
        )
        self.rows = [np.concatenate(self.rows)] if self.rows else [np.zeros(0, np.int64)]

    def where(self, i: int) -> tuple[str, int]:
        return self.files[int(self.file_idx[0][i])], int(self.rows[0][i])


def _missing(file: str, column: str, names: list[str]) -> DataError:
    found = ", ".join(repr(n) for n in names) or "none"
    return DataError(file, None, column, f"missing column (columns found: {found})")


# ----------------------------------------------------------------------------------------------
# catalogue


def read_catalogue(uri: str, id_column: str = "id", text_column: str = "text") -> Catalogue:
    """Read and validate a catalogue table (see the module docstring)."""
    uri = str(uri)
    files = _table_files(uri)
    id_chunks: list[pa.Array] = []
    text_chunks: list[pa.Array] = []
    meta: dict[str, list[_MetaChunk | int]] = {}
    where = _Rows()
    digests: list[str] = []
    n = 0
    for file in files:
        reader = _open(file)
        for col in (id_column, text_column):
            if reader.names and col not in reader.names:
                raise _missing(file, col, reader.names)
        raw_csv = isinstance(reader, _CsvReader)
        for part in reader:
            id_chunks.append(_string_column(part, id_column, "id", allow_int=True))
            text_chunks.append(_string_column(part, text_column, "text", allow_int=False))
            m = part.table.num_rows
            new = [c for c in part.table.column_names if c not in meta]
            for name in [*meta, *(c for c in new if c not in (id_column, text_column))]:
                chunks = meta.setdefault(name, [n] if n else [])
                arr = part.column(name)
                chunks.append(m if arr is None else _meta_column(part, name, arr, raw_csv))
            where.add(part)
            n += m
        digests.append(reader.sha256)
    if n == 0:
        raise DataError(uri, message="no data rows")
    where.finish()
    ids = pa.chunked_array(id_chunks, pa.string()).to_pylist()
    first: dict[str, int] = {}
    for i, item in enumerate(ids):
        j = first.setdefault(item, i)
        if j != i:
            f0, r0 = where.where(j)
            f1, r1 = where.where(i)
            also = f"row {r0}" + (f" of {f0}" if f0 != f1 else "")
            raise DataError(f1, r1, id_column, f"duplicate id {item!r} (also at {also})")
    cat = Catalogue(
        ids=ids,
        texts=pa.chunked_array(text_chunks, pa.string()).to_pylist(),
        metadata=_metadata(meta, n),
        uri=uri,
        fingerprint=_fingerprint(files, digests),
    )
    log.info("read catalogue %s: %d items, metadata %s", uri, n, sorted(meta))
    return cat


# ----------------------------------------------------------------------------------------------
# interactions


def _read_queries(uri: str) -> tuple[pa.Array, pa.Array, str]:
    """A queries table -> (query ids, texts, fingerprint); ids unique."""
    files = _table_files(uri)
    ids, texts, digests, where = [], [], [], _Rows()
    for file in files:
        reader = _open(file, wanted={"query_id", "text"})
        for col in ("query_id", "text"):
            if reader.names and col not in reader.names:
                raise _missing(file, col, reader.names)
        for part in reader:
            ids.append(_string_column(part, "query_id", "query_id", allow_int=True))
            texts.append(_string_column(part, "text", "query text", allow_int=False))
            where.add(part)
        digests.append(reader.sha256)
    if not ids or not sum(map(len, ids)):
        raise DataError(uri, message="no data rows")
    where.finish()
    id_arr = pa.chunked_array(ids, pa.string()).combine_chunks()
    if len(pc.unique(id_arr)) != len(id_arr):
        first: dict[str, int] = {}
        for i, q in enumerate(id_arr.to_pylist()):
            j = first.setdefault(q, i)
            if j != i:
                f1, r1 = where.where(i)
                f0, r0 = where.where(j)
                also = f"row {r0}" + (f" of {f0}" if f0 != f1 else "")
                raise DataError(f1, r1, "query_id", f"duplicate query_id {q!r} (also at {also})")
    return (
        id_arr,
        pa.chunked_array(texts, pa.string()).combine_chunks(),
        _fingerprint(files, digests),
    )


def _unknown(where: _Rows, values: pa.Array, missing: np.ndarray, what: str) -> str:
    idx = np.flatnonzero(missing)
    examples = []
    for i in idx[:MAX_EXAMPLES].tolist():
        f, r = where.where(i)
        examples.append(f"row {r} {values[i].as_py()!r}")
    return f"{len(idx)} row(s) name {what}, e.g. " + ", ".join(examples)


def read_interactions(
    uri: str,
    catalogue: Catalogue,
    queries_uri: str | None = None,
    drop_unknown: bool = False,
) -> Interactions:
    """Read (query, item_id, weight) rows into a (queries x catalogue items) matrix.

    ``drop_unknown``: rows naming items not in ``catalogue`` are dropped and counted instead
    of raising. Repeated (query, item) pairs sum their weights.
    """
    uri = str(uri)
    files = _table_files(uri)
    q_ids = q_texts = None
    q_fp = None
    if queries_uri is not None:
        q_ids, q_texts, q_fp = _read_queries(str(queries_uri))
    key = "query_id" if queries_uri is not None else "query"
    q_chunks, item_chunks, w_chunks = [], [], []
    digests: list[str] = []
    where = _Rows()
    for file in files:
        reader = _open(file, wanted=set(INTERACTION_COLUMNS), schema={"weight": pa.float64()})
        names = [
            c for c in reader.names if not (c == "weight" and isinstance(reader, _JsonlReader))
        ]
        if reader.names:
            if "query" in names and "query_id" in names:
                raise DataError(file, message="both 'query' and 'query_id' columns: keep one")
            if key == "query" and "query_id" in names:
                raise DataError(
                    file, None, "query_id", "query ids need a queries table (query_id, text)"
                )
            if key == "query_id" and "query" in names:
                raise DataError(
                    file, None, "query", "a queries table was given: use query_id, not query"
                )
            for col in (key, "item_id"):
                if col not in names:
                    raise _missing(file, col, names)
        for part in reader:
            q_chunks.append(_string_column(part, key, key, allow_int=key == "query_id"))
            item_chunks.append(_string_column(part, "item_id", "item_id", allow_int=True))
            w_chunks.append(_weight_column(part, "weight"))
            where.add(part)
        digests.append(reader.sha256)
    n_rows = sum(map(len, q_chunks))
    if n_rows == 0:
        raise DataError(uri, message="no data rows")
    where.finish()
    qcol = pa.chunked_array(q_chunks, pa.string()).combine_chunks()
    if q_ids is not None:
        pos = pc.index_in(qcol, value_set=q_ids)
        missing = pc.is_null(pos).to_numpy(zero_copy_only=False)
        if missing.any():
            f, r = where.where(int(np.flatnonzero(missing)[0]))
            msg = _unknown(
                where, qcol, missing, f"query ids not in the queries table {queries_uri}"
            )
            raise DataError(f, r, "query_id", msg)
        qcol = pc.take(q_texts, pos)
    items = pa.chunked_array(item_chunks, pa.string()).combine_chunks()
    item_idx = pc.index_in(items, value_set=pa.array(catalogue.ids, pa.string()))
    unknown = pc.is_null(item_idx).to_numpy(zero_copy_only=False)
    n_dropped = int(unknown.sum())
    if n_dropped and not drop_unknown:
        f, r = where.where(int(np.flatnonzero(unknown)[0]))
        msg = _unknown(where, items, unknown, f"items not in the catalogue {catalogue.uri}")
        raise DataError(f, r, "item_id", msg + " (drop_unknown drops them)")
    if n_dropped == n_rows:
        raise DataError(uri, None, "item_id", f"all {n_rows} rows name items not in the catalogue")
    keep = ~unknown
    qcol = qcol.filter(pa.array(keep))
    weights = np.concatenate(w_chunks)[keep]
    queries = pc.unique(qcol)  # first-seen order
    rows = pc.index_in(qcol, value_set=queries).to_numpy()
    cols = item_idx.filter(pa.array(keep)).to_numpy()
    Y = sp.csr_matrix(
        (weights.astype(np.float32), (rows, cols)), shape=(len(queries), len(catalogue.ids))
    )
    Y.sum_duplicates()
    fp = _fingerprint(files, digests)
    if q_fp is not None:
        fp = hashlib.sha256(f"{fp}\n{q_fp}\n".encode()).hexdigest()
    log.info(
        "read interactions %s: %d rows, %d queries, %d dropped",
        uri,
        n_rows,
        len(queries),
        n_dropped,
    )
    return Interactions(
        queries=queries.to_pylist(),
        Y=Y,
        uri=uri,
        fingerprint=fp,
        n_rows=n_rows,
        n_dropped=n_dropped,
    )


def split_queries(
    inter: Interactions, eval_fraction: float, seed: int
) -> tuple[Interactions, Interactions]:
    """Seeded split by query -> (train, eval); each keeps the queries' first-seen order."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    n = len(inter.queries)
    n_eval = round(eval_fraction * n)
    if n_eval == 0 or n_eval == n:
        raise ValueError(f"eval_fraction {eval_fraction} of {n} queries leaves a part empty")
    perm = np.random.default_rng(seed).permutation(n)
    parts = []
    for idx in (np.sort(perm[n_eval:]), np.sort(perm[:n_eval])):
        parts.append(
            Interactions(
                queries=[inter.queries[i] for i in idx.tolist()],
                Y=inter.Y[idx],
                uri=inter.uri,
                fingerprint=inter.fingerprint,
                n_rows=inter.n_rows,
                n_dropped=inter.n_dropped,
            )
        )
    return parts[0], parts[1]


# ----------------------------------------------------------------------------------------------
# writing


def write_table(uri: str, table: pa.Table) -> None:
    """Write ``table`` by extension (.parquet, .csv, .jsonl), local (atomic) or s3://."""
    uri = str(uri)
    fmt = _format(uri)
    if fmt == "jsonl":
        lines = []
        for batch in table.to_batches():
            lines.extend(json.dumps(r, ensure_ascii=False) + "\n" for r in batch.to_pylist())
        io.write_text(uri, "".join(lines))
        return
    sink = pa.BufferOutputStream()
    if fmt == "parquet":
        pq.write_table(table, sink)
    else:
        nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
        if nested:
            raise ValueError(
                f"{uri}: CSV cannot hold list/nested columns {nested}: use .parquet or .jsonl"
            )
        pcsv.write_csv(table, sink)
    io.write_bytes(uri, sink.getvalue().to_pybytes())

"""Item records: the payload stored with every vector (text, metadata, source, bundle version).

:class:`Records` is one batch of them, column by column and aligned with a batch of ids; it
travels with the vectors through the write-ahead log, snapshots, the change feed and Ray
calls. :class:`RecordStore` keeps the records of an index column-wise beside its vectors.
It also holds every stored id's string id, so it is the index's one id map. Only the HTTP
edge (and ``get_records``) turns records into per-item dicts.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from irene.index.filters import Filter, KeyColumn, append_at, metadata_key, select
from irene.index.idmap import IdMap, grown

SOURCES = ("trained", "generated")
FIELDS = ("text", "metadata", "source", "version")


@dataclass(frozen=True)
class Records:
    """Columns of item records, row i belongs to id i of the batch it travels with.

    ``metadata`` values are JSON-serialisable dicts (keyword, int, float, bool, list of
    keywords); ``source`` is ``"trained"`` (a classifier learned from interactions) or
    ``"generated"`` (IRENE); ``version`` is the bundle version that made the vector."""

    text: list[str]
    metadata: list[dict[str, Any]]
    source: list[str]
    version: list[str]

    def __post_init__(self) -> None:
        _check(self)  # once, where the batch is built; copies (take, from_json) are trusted

    @classmethod
    def _trusted(cls, *cols: list) -> Records:
        """Columns already validated (a slice of a checked batch, a logged batch)."""
        out = object.__new__(cls)
        for name, col in zip(FIELDS, cols, strict=True):
            object.__setattr__(out, name, col)
        return out

    def __len__(self) -> int:
        return len(self.text)

    @classmethod
    def of(
        cls,
        texts: Sequence[str],
        metadata: Sequence[dict[str, Any] | None] | None = None,
        source: str | Sequence[str] = "generated",
        version: str | Sequence[str] = "",
    ) -> Records:
        """Records for ``texts``; a single ``source`` / ``version`` applies to every row."""
        n = len(texts)
        meta = [dict(m or {}) for m in metadata] if metadata is not None else [{} for _ in texts]
        src = [source] * n if isinstance(source, str) else list(source)
        ver = [version] * n if isinstance(version, str) else list(version)
        return cls(list(texts), meta, src, ver)

    def take(self, rows: Sequence[int]) -> Records:
        """The records of ``rows`` (positions in this batch), in that order."""
        rows = list(rows)
        return Records._trusted(*([getattr(self, f)[i] for i in rows] for f in FIELDS))

    def row(self, i: int) -> dict[str, Any]:
        return {f: getattr(self, f)[i] for f in FIELDS}

    def to_json(self) -> dict[str, list]:
        """Plain columns (for a JSON log header)."""
        return {f: list(getattr(self, f)) for f in FIELDS}

    @classmethod
    def from_json(cls, cols: dict[str, list]) -> Records:
        """The columns of ``to_json`` (a logged batch: validated before it was logged)."""
        return cls._trusted(*(list(cols[f]) for f in FIELDS))

    @staticmethod
    def metadata_json(meta: dict[str, Any]) -> str:
        """Canonical JSON of one metadata dict (sorted keys, no NaN)."""
        return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False)


_EMPTY = {"text": "", "metadata": {}, "source": "generated", "version": ""}
NO_RECORD = 255  # the source code of a row whose id was stored without a record
_MAX_ROWS = 2**31 - 1  # rows are int32 in the position map


def empty_record() -> dict[str, Any]:
    """The record of an id stored without one (``add(..., records=None)``, old snapshots)."""
    return {**_EMPTY, "metadata": {}}


def as_records(records: Records | dict | None) -> Records | None:
    """``records`` as :class:`Records` (also accepts the ``to_json`` columns), or None."""
    if records is None or isinstance(records, Records):
        return records
    if isinstance(records, dict):
        return Records.from_json(records)
    raise TypeError(f"records must be Records or None, got {type(records).__name__}")


_META_JSON = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _meta_bytes(meta: dict[str, Any]) -> bytes:
    """How the store keeps one metadata dict: canonical UTF-8 JSON, empty for ``{}``."""
    return _META_JSON.encode(meta).encode("utf-8") if meta else b""


def _flat_value(v: Any) -> bool:
    """What a metadata value may be (``irene.metadata`` gives the user-facing errors)."""
    if isinstance(v, str | bool | float):
        return True
    if isinstance(v, int):
        return -(1 << 63) <= v < 1 << 63
    return isinstance(v, list | tuple) and all(isinstance(s, str) for s in v)


def _check(records: Records) -> None:
    """Validate a batch of records: equal column lengths, value types, sources, UTF-8
    encodable strings and metadata that is JSON-serialisable without NaN/inf (so nothing can
    fail once the batch is logged). Raises ``ValueError``/``TypeError``."""
    n = len(records.text)
    for name in FIELDS[1:]:
        if len(getattr(records, name)) != n:
            raise ValueError(f"records: {name} has {len(getattr(records, name))} rows, text {n}")
    for name in ("text", "version"):
        for i, v in enumerate(getattr(records, name)):
            if not isinstance(v, str):
                raise TypeError(f"records: {name}[{i}] must be a string, got {type(v).__name__}")
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"records: {name}[{i}] is not valid text: {e}") from None
    for i, src in enumerate(records.source):
        if src not in SOURCES:
            raise ValueError(f"records: source[{i}] must be one of {SOURCES}, got {src!r}")
    for i, meta in enumerate(records.metadata):
        if not isinstance(meta, dict):
            raise TypeError(f"records: metadata[{i}] must be a dict, got {type(meta).__name__}")
        for key, v in meta.items():
            if not _flat_value(v):
                raise ValueError(
                    f"records: metadata[{i}].{key}: expected a string, an int64, a number, a "
                    f"bool or a list of strings, got {v!r:.60}"
                )
    try:
        _META_JSON.encode(list(records.metadata)).encode("utf-8")  # one call for the batch
    except (TypeError, ValueError):
        for i, meta in enumerate(records.metadata):  # which row
            try:
                _meta_bytes(meta)
            except (TypeError, ValueError) as e:
                raise ValueError(f"records: metadata[{i}] is not JSON-serialisable: {e}") from None
        raise


def _gather(off: np.ndarray, buf, rows: np.ndarray) -> tuple[np.ndarray, bytes]:
    """Offsets (len(rows)+1,) and bytes of the values of ``rows`` (sorted ascending), copied
    run by run (a run: consecutive rows, contiguous bytes)."""
    lens = off[rows + 1] - off[rows]  # (r,)
    new_off = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lens, out=new_off[1:])
    if not len(rows):
        return new_off, b""
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    first = np.concatenate([[0], cut])
    last = np.concatenate([cut, [len(rows)]]) - 1
    view = memoryview(buf)
    try:
        data = b"".join(
            view[off[rows[a]] : off[rows[b] + 1]]
            for a, b in zip(first.tolist(), last.tolist(), strict=True)
        )
    finally:
        view.release()
    return new_off, data


class RecordStore:
    """The string ids and records of a set of int64 ids, held as columns (not one dict per
    item): the index's id map.

    Row ``r`` holds ``name`` (the string id: UTF-8 bytes ``name[name_off[r]:name_off[r+1]]``
    of one shared buffer), ``text`` and ``metadata`` (canonical JSON, empty for ``{}``) the
    same way, ``source`` (uint8 index into ``SOURCES``; ``NO_RECORD`` for an id stored without
    a record) and ``version`` (int32 code into a small list of strings). Ids find their row
    through an ``IdMap`` (int32 rows). An upsert appends rows; the rows it replaces, and those
    of removed ids, are garbage until :meth:`compact` (run when garbage outnumbers live rows;
    snapshots hold live rows only). About 38 bytes per row besides the strings.

    Not thread-safe: ``ShardedIndex`` calls it under its readers-writer lock (reads don't
    mutate)."""

    def __init__(self) -> None:
        self._n = 0  # rows in use (live + garbage)
        self._live = 0
        self._name_off = np.zeros(1, dtype=np.uint32)  # (capacity + 1,); see _put_strings
        self._name = bytearray()
        self._text_off = np.zeros(1, dtype=np.uint32)  # (capacity + 1,)
        self._text = bytearray()
        self._meta_off = np.zeros(1, dtype=np.uint32)  # (capacity + 1,)
        self._meta = bytearray()
        self._source = np.zeros(0, dtype=np.uint8)  # (capacity,)
        self._version = np.zeros(0, dtype=np.int32)  # (capacity,)
        self._versions: list[str] = []
        self._version_code: dict[str, int] = {}
        self._pos = IdMap(np.int32)  # id -> its current row
        self._iid = np.zeros(0, dtype=np.int64)  # (capacity,) the id a row was written for
        self._alive = np.zeros(0, dtype=bool)  # (capacity,) the row is its id's current one
        self._bare = 0  # rows (live or garbage) of ids stored without a record
        self._cols = _ColumnCache(self)  # filter columns, built on first use
        self.writes = 0  # puts so far (``ShardedIndex`` swaps in a compacted copy if unchanged)

    def __len__(self) -> int:
        return self._live

    @property
    def garbage(self) -> int:
        return self._n - self._live

    # ----------------------------------------------------------------- writes
    def put(self, iids: np.ndarray, names: Sequence[str], records: Records | None) -> None:
        """Store unique ``iids`` (n,) with their string ids and ``records``, replacing what
        they had; ``None``: the ids keep no record (they read as :func:`empty_record` and no
        filter matches them)."""
        iids = np.asarray(iids, dtype=np.int64)
        self.writes += 1
        rows = self._append(iids, names, records)
        self._retire(self._pos.put(iids, rows))
        self._alive[rows] = True
        self._live += len(rows)
        if self.garbage > self._live:
            self.compact()

    def remove(self, iids: np.ndarray) -> None:
        """Forget unique ``iids`` (absent ones are ignored)."""
        self.writes += 1
        self._retire(self._pos.remove(np.asarray(iids, dtype=np.int64)))
        if self.garbage > self._live:
            self.compact()

    def _retire(self, rows: np.ndarray) -> None:
        old = rows[rows >= 0]
        self._alive[old] = False
        self._live -= len(old)

    def _append(self, iids: np.ndarray, names: Sequence[str], records: Records | None):
        k, n0 = len(iids), self._n
        n1 = n0 + k
        if n1 > _MAX_ROWS:
            raise OverflowError(f"a record store holds at most {_MAX_ROWS} rows")
        if len(names) != k:
            raise ValueError(f"{k} ids but {len(names)} names")
        if records is None:
            texts = metas = [b""] * k
            source = np.full(k, NO_RECORD, dtype=np.uint8)
            version = np.full(k, self._code(""), dtype=np.int32)
            self._bare += k
        else:
            texts = [t.encode("utf-8") for t in records.text]
            metas = [_meta_bytes(m) for m in records.metadata]
            source = [SOURCES.index(s) for s in records.source]
            version = [self._code(v) for v in records.version]
        self._source = grown(self._source, n1)
        self._version = grown(self._version, n1)
        self._iid = grown(self._iid, n1)
        self._alive = grown(self._alive, n1)
        self._iid[n0:n1] = iids
        self._name_off = _put_strings(self._name_off, self._name, n0, [s.encode() for s in names])
        self._text_off = _put_strings(self._text_off, self._text, n0, texts)
        self._meta_off = _put_strings(self._meta_off, self._meta, n0, metas)
        self._source[n0:n1] = source
        self._version[n0:n1] = version
        self._n = n1
        return np.arange(n0, n1, dtype=np.int64)

    def _code(self, version: str) -> int:
        code = self._version_code.get(version)
        if code is None:
            code = self._version_code[version] = len(self._versions)
            self._versions.append(version)
        return code

    def _live_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, rows) of every live row, in row order."""
        keys, rows = self._pos.items()
        order = np.argsort(rows, kind="stable")
        return keys[order], rows[order].astype(np.int64)

    def version_counts(self) -> dict[str, int]:
        """Live items per bundle version that made their vector (``""``: no record)."""
        rows = self._pos.items()[1]
        counts = np.bincount(self._version[rows], minlength=len(self._versions))
        return {v: int(c) for v, c in zip(self._versions, counts.tolist(), strict=True) if c}

    def compact(self) -> None:
        """Drop garbage rows (live rows keep their order)."""
        if self.garbage == 0:
            return
        self._load(self._columns())

    # ----------------------------------------------------------------- reads
    def rows_of(self, iids: np.ndarray) -> np.ndarray:
        """Row of each id (n,) int64, -1 where it is not stored."""
        return self._pos.get(iids)

    def ids(self) -> np.ndarray:
        """Every stored int64 id (unordered)."""
        return self._pos.keys()

    def _str(self, off: np.ndarray, buf: bytearray, r: int) -> str:
        return buf[off[r] : off[r + 1]].decode("utf-8")

    def names(self, iids: np.ndarray) -> list[str | None]:
        """The string id of each int64 id (None where it is not stored)."""
        return self._names_of_rows(self.rows_of(iids).tolist())

    def _names_of_rows(self, rows: list[int]) -> list[str | None]:
        off, buf = self._name_off, self._name
        return [None if r < 0 else self._str(off, buf, r) for r in rows]

    def all_names(self) -> list[str]:
        """The string ids of every stored id, in row order."""
        return self._names_of_rows(self._live_pairs()[1].tolist())

    def row(self, r: int) -> dict[str, Any]:
        """Row ``r``'s record as a dict (``Records.row``'s fields)."""
        if self._source[r] == NO_RECORD:
            return empty_record()
        m0, m1 = self._meta_off[r], self._meta_off[r + 1]
        return {
            "text": self._str(self._text_off, self._text, r),
            "metadata": json.loads(self._meta[m0:m1]) if m1 > m0 else {},
            "source": SOURCES[self._source[r]],
            "version": self._versions[self._version[r]],
        }

    def lookup(self, iids: np.ndarray) -> tuple[list[str | None], list[dict | None]]:
        """String id and record of each id (None, None where it is not stored)."""
        rows = self.rows_of(iids).tolist()
        return self._names_of_rows(rows), [None if r < 0 else self.row(r) for r in rows]

    def match(self, f: Filter) -> np.ndarray:
        """The ids (int64, each once, in no set order) of the stored records that ``f``
        matches."""
        return self._cols.match(f)

    def nbytes(self) -> dict[str, int]:
        """Memory held: ``values`` (string ids, text and metadata bytes, as allocated: a
        buffer that grows by appends keeps up to ~1/8 spare) and ``bookkeeping``
        (everything else: offsets, codes, the position map; array capacity included)."""
        arrays = (self._name_off, self._text_off, self._meta_off, self._source, self._version)
        book = sum(a.nbytes for a in arrays) + self._pos.nbytes()
        book += sum(sys.getsizeof(v) for v in self._versions)
        book += self._iid.nbytes + self._alive.nbytes
        return {
            "values": sum(sys.getsizeof(b) for b in (self._name, self._text, self._meta)),
            "bookkeeping": book,
            "filter_columns": self._cols.nbytes(),
        }

    # ----------------------------------------------------------------- snapshots
    def _columns(self) -> dict[str, Any]:
        keys, rows = self._live_pairs()
        out: dict[str, Any] = {"ids": keys}
        for name in ("name", "text", "meta"):
            off, buf = getattr(self, f"_{name}_off"), getattr(self, f"_{name}")
            if len(rows) == self._n:  # no garbage: rows == arange(n)
                off, data = off[: self._n + 1].copy(), bytes(buf)
            else:
                off, data = _gather(off, buf, rows)
            out[f"{name}_off"], out[name] = off, np.frombuffer(data, dtype=np.uint8)
        out.update(
            source=self._source[rows], version=self._version[rows], versions=list(self._versions)
        )
        return out

    def state(self) -> dict[str, Any]:
        """The live rows as arrays (``ids`` int64 (r,), ``name_off``/``text_off``/``meta_off``
        int64 (r+1,), ``name``/``text``/``meta`` uint8, ``source`` uint8 (r,), ``version``
        int32 (r,)) plus ``versions`` (list of str); offsets may also be uint32."""
        return self._columns()

    def _load(self, st: dict[str, Any]) -> None:
        ids = np.asarray(st["ids"], dtype=np.int64)
        n = len(ids)
        self._n = self._live = n
        for name in ("name", "text", "meta"):
            off = _offsets(np.asarray(st[f"{name}_off"]))
            if len(off) != n + 1:
                raise ValueError(f"record state: {name}_off does not match the ids")
            setattr(self, f"_{name}_off", off)
            setattr(self, f"_{name}", bytearray(np.asarray(st[name], dtype=np.uint8).tobytes()))
        self._source = np.asarray(st["source"], dtype=np.uint8).copy()
        self._version = np.asarray(st["version"], dtype=np.int32).copy()
        self._versions = list(st["versions"])
        self._version_code = {v: i for i, v in enumerate(self._versions)}
        if len(self._source) != n or len(self._version) != n:
            raise ValueError("record state: columns do not match the ids")
        self._pos = IdMap.from_arrays(ids, np.arange(n), np.int32)
        self._iid, self._alive = ids.copy(), np.ones(n, dtype=bool)
        self._bare = int((self._source == NO_RECORD).sum())
        self._cols = _ColumnCache(self)  # rows were renumbered

    @classmethod
    def from_state(cls, st: dict[str, Any] | None) -> RecordStore:
        """Rebuild from :meth:`state` (``None``: an empty store)."""
        store = cls()
        if st is not None:
            store._load(st)
        return store


def pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n+1,) int64, UTF-8 bytes as uint8) of ``strings``: a column of a state."""
    data = [s.encode("utf-8") for s in strings]
    off = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, data), np.int64, len(data)), out=off[1:])
    return off, np.frombuffer(b"".join(data), dtype=np.uint8)


_MAX_U32 = 2**32 - 1


def _offsets(off: np.ndarray) -> np.ndarray:
    """A copy of string-column offsets as uint32 while they fit (4 B a row), else int64."""
    small = len(off) == 0 or int(off[-1]) <= _MAX_U32
    return off.astype(np.uint32 if small else np.int64, copy=True)


def _put_strings(off: np.ndarray, buf: bytearray, n0: int, values: list[bytes]) -> np.ndarray:
    """Write ``values`` as rows n0.. of a string column (offsets grown as needed; ``buf``
    holds exactly rows < n0); returns the offsets. Offsets are uint32 until the column's
    bytes pass 4 GiB, then int64."""
    n1 = n0 + len(values)
    lens = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    if off.dtype == np.uint32 and int(off[n0]) + int(lens.sum()) > _MAX_U32:
        off = off.astype(np.int64)
    off = grown(off, n1 + 1)
    off[n0 + 1 : n1 + 1] = off[n0] + np.cumsum(lens)
    buf += b"".join(values)
    return off


class _ColumnCache:
    """The filter columns of a :class:`RecordStore`, over its rows: one :class:`KeyColumn`
    per metadata key a filter has named and the rows' string ids, each built on first use
    and extended over the rows appended since (rows are append-only until a compaction,
    which starts a new cache). Safe for concurrent readers (its own lock)."""

    def __init__(self, store: RecordStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._n = 0  # rows covered by every cached key column
        self._keys: dict[str, KeyColumn] = {}
        self._ids = np.zeros(0, dtype="S1")
        self._nids = 0

    def _metadata(self, a: int, b: int) -> list[dict]:
        st = self._store
        off, buf = st._meta_off, st._meta
        chunks = [
            bytes(buf[off[r] : off[r + 1]]) or b"{}" for r in range(a, b)
        ]  # one JSON parse for the whole run
        return json.loads(b"[" + b",".join(chunks) + b"]") if chunks else []

    def _ensure(self, keys: set[str], n: int) -> None:
        new = [k for k in keys if k not in self._keys]
        if self._keys and self._n < n:
            rows = self._metadata(self._n, n)
            for k, col in self._keys.items():
                col.extend([m.get(k) for m in rows])
        if new:
            rows = self._metadata(0, n)
            for k in new:
                col = self._keys[k] = KeyColumn()
                col.extend([m.get(k) for m in rows])
        self._n = n

    def _ids_upto(self, n: int) -> np.ndarray:
        have = self._nids
        if have < n:
            off, buf = self._store._name_off, self._store._name
            more = np.array([bytes(buf[off[r] : off[r + 1]]) for r in range(have, n)], dtype="S")
            if more.dtype.itemsize > self._ids.dtype.itemsize:
                self._ids = self._ids.astype(more.dtype)
            self._ids = append_at(self._ids, have, more)
            self._nids = n
        return self._ids[:n]

    def match(self, f: Filter) -> np.ndarray:
        st = self._store
        n = st._n
        with self._lock:
            self._ensure({metadata_key(k) for k in f.keys()} - {None}, n)
            ids = self._ids_upto(n) if f.uses_ids() else None
            cols = _RowColumns(st, n, self._keys, ids)
            rows = select(f, cols)
        if st.garbage or st._bare:  # else every row is live and has its record
            rows = rows[st._alive[rows] & (st._source[rows] != NO_RECORD)]
        return st._iid[rows]

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self._keys.values()) + self._ids.nbytes


class _RowColumns:
    """``irene.index.filters.Columns`` over the first ``n`` rows of a store."""

    def __init__(self, store: RecordStore, n: int, keys: dict, ids: np.ndarray | None) -> None:
        self._store, self.n, self._keys, self._ids = store, n, keys, ids

    def key(self, key: str) -> KeyColumn:
        return self._keys[key]

    def record_field(self, field: str) -> tuple[np.ndarray, list[str]]:
        st = self._store
        if field == "source":
            return st._source[: self.n], list(SOURCES)
        return st._version[: self.n], list(st._versions)

    def ids(self) -> np.ndarray:
        assert self._ids is not None
        return self._ids

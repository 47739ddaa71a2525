"""Durability for ``ShardedIndex``: a write-ahead log plus checksummed snapshots.

Layout under ``uri`` (a local directory or ``s3://bucket/prefix``)::

    log/{first_seq:020d}.log     local: append-only segment files (new one per snapshot/open)
    log/{seq:020d}.rec           S3: one object per acknowledged batch (objects can't append)
    snapshots/{seq:020d}.snap    full index state as of ``seq``
    LOCK                         local only: ``flock``-ed by the single writer

Record framing (little-endian)::

    [magic u32 = 0x47524C49 "ILRG"][seq u64][payload length u32][crc32 u32][payload]

``crc32`` covers ``seq``, ``length`` and the payload. The payload is
``[header length u32][JSON header {"op", "ids", "dim", "records"?}][n * dim float32 vectors]``.
One record = one acknowledged batch (``op`` is ``"upsert"`` or ``"delete"``); sequence
numbers start at 1 and increase by exactly 1 per record. An upsert's item records
(``irene.index.records.Records``) are the header's ``"records"`` columns; a record without
them (written before records existed, or ``add(..., records=None)``) stores none.

Durability contract: ``DurableIndex.add``/``delete`` validate the batch, append the record
and make it durable (local: ``write`` + ``flush`` + ``os.fsync``, plus an fsync of the
directory when a segment file is created; S3: the PUT has completed) and only then apply it
in memory and return. A batch that returned is never lost; one that raised may or may not
survive a crash (exactly like any WAL). Concurrent writers are serialised, so there is no
cross-caller group commit: callers should batch their ids (one record per call).

Reading a log, damage is classified as follows:

* **Torn tail** -- the *last* segment ends in an incomplete record (header or payload cut
  short, or a zero-filled tail) and no valid record follows it. This is what a crash during
  an append leaves behind; the record was never acknowledged. With ``repair=True`` the bytes
  are truncated (S3: the object is rewritten or deleted), a ``logging.warning`` is emitted and
  the damage is listed in ``RecoveryReport.truncated``; with ``repair=False`` it raises
  ``CorruptLogError``. ``DurableIndex.open`` repairs by default; ``read_log`` does not.
* **Corruption** -- a *complete* record whose CRC does not match (anywhere, including the
  last record), a bad magic number, a torn record that is followed by valid records or
  sits in a non-final segment, or sequence numbers that go backwards. Always
  ``CorruptLogError`` naming the file and byte offset: acknowledged data may be damaged and
  silently dropping it would hide data loss.
* **Gap** -- a missing sequence range between records (e.g. a deleted S3 object). Logged as
  an error and listed in ``RecoveryReport.gaps``; replay continues.

Snapshots: ``[b"IRSNAP01"][seq u64][payload length u64][sha256 of payload, 32 bytes][payload]``
with ``payload = ShardedIndex.to_bytes()``, written atomically (local: temp file + fsync +
rename + directory fsync; S3: one PUT). On open, the newest snapshot whose checksum verifies
is used; newer ones that fail are logged as errors and listed in
``RecoveryReport.skipped_snapshots``. The newest ``keep_snapshots`` snapshots are kept (default
2) and the log is compacted up to the *oldest kept* snapshot: with ``keep_snapshots=1`` that is
every record with ``seq <= S`` after a snapshot at ``S``; with the default 2 the log since the
previous snapshot is also kept, so falling back from a corrupt newest snapshot loses nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mmap
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.fs as pafs

from irene import io as iio
from irene.index.filters import Filter
from irene.index.records import Records
from irene.index.shard import IndexSpec, as_vectors
from irene.index.sharded import ShardedIndex, check_str_ids

log = logging.getLogger(__name__)

MAGIC = 0x47524C49  # b"ILRG" little-endian
FRAME = struct.Struct("<IQII")  # magic, seq, payload length, crc32 -> 20 bytes
_MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_PAYLOAD = (1 << 32) - 1
SNAP_MAGIC = b"IRSNAP01"
SNAP_HEADER = struct.Struct("<8sQQ32s")  # magic, seq, payload length, sha256
_HASH_CHUNK = 16 << 20  # a snapshot is checksummed in reads of this size
OPS = ("upsert", "delete")

_LOCAL_SEGMENT = re.compile(r"^(\d{20})\.log$")
_S3_SEGMENT = re.compile(r"^(\d{20})\.rec$")
_SNAPSHOT = re.compile(r"^(\d{20})\.snap$")


class StorageUnavailable(RuntimeError):
    """The log or snapshot storage refused a write (disk full, read-only, S3 down): nothing of
    the batch was acknowledged; a later write retries the storage by itself. ``reason``: the
    storage's error without paths or keys (e.g. "No space left on device"), safe to show to
    clients."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message, reason)  # both in args: survives pickling across Ray
        self.message, self.reason = message, reason

    def __str__(self) -> str:
        return self.message


def storage_reason(e: BaseException) -> str:
    """The OS error text, or pyarrow's S3 error code ("S3 NETWORK_CONNECTION"), no paths."""
    if getattr(e, "strerror", None):
        return e.strerror
    m = re.search(r"AWS Error ([A-Z_]+)", str(e))
    return f"S3 {m.group(1)}" if m else type(e).__name__


class CorruptLogError(RuntimeError):
    """The log or a snapshot is damaged in a way that may lose acknowledged data."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path} at byte offset {offset}: {reason}")
        self.path, self.offset, self.reason = path, offset, reason


@dataclass
class LogRecord:
    seq: int
    op: str  # "upsert" | "delete"
    ids: list[str]
    vectors: np.ndarray | None = None  # (n, dim) float32 for "upsert", else None
    records: Records | None = None  # the items' records ("upsert" only; None: none)


@dataclass
class RecoveryReport:
    """What ``DurableIndex.open`` found and did."""

    uri: str = ""
    snapshot_seq: int = 0  # seq of the restored snapshot; 0 = started empty
    snapshot: str | None = None  # location of the restored snapshot
    skipped_snapshots: list[dict] = field(default_factory=list)  # {"uri", "reason"}
    replayed_records: int = 0
    skipped_records: int = 0  # records already contained in the snapshot
    last_seq: int = 0
    truncated: list[dict] = field(
        default_factory=list
    )  # {"uri", "offset", "dropped_bytes", "reason"}
    gaps: list[tuple[int, int]] = field(default_factory=list)  # missing seq ranges, inclusive

    @property
    def clean(self) -> bool:
        return not (self.skipped_snapshots or self.truncated or self.gaps)

    def to_dict(self) -> dict:
        return {**asdict(self), "clean": self.clean}


# --------------------------------------------------------------------------- records
def _crc(seq: int, payload) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<QI", seq, len(payload))))


def encode_record(rec: LogRecord) -> bytes:
    """The framed bytes of one record."""
    if rec.op not in OPS:
        raise ValueError(f"op must be one of {OPS}")
    dim = 0 if rec.vectors is None else int(rec.vectors.shape[1])
    head = {"op": rec.op, "ids": list(rec.ids), "dim": dim}
    if rec.records is not None:
        if rec.op != "upsert" or len(rec.records) != len(rec.ids):
            raise ValueError("records go with an upsert, one per id")
        head["records"] = rec.records.to_json()
    header = json.dumps(head, ensure_ascii=False, allow_nan=False).encode()
    parts = [struct.pack("<I", len(header)), header]
    if rec.op == "upsert":
        vecs = np.ascontiguousarray(rec.vectors, dtype="<f4")  # (n, dim)
        if vecs.shape[0] != len(rec.ids):
            raise ValueError("ids and vectors differ in length")
        parts.append(vecs.tobytes())
    payload = b"".join(parts)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"record payload of {len(payload)} bytes is too large; split the batch")
    return FRAME.pack(MAGIC, rec.seq, len(payload), _crc(rec.seq, payload)) + payload


def decode_payload(seq: int, payload) -> LogRecord:
    (hlen,) = struct.unpack_from("<I", payload, 0)
    header = json.loads(bytes(payload[4 : 4 + hlen]).decode())
    ids = header["ids"]
    if header["op"] == "upsert":
        vecs = np.frombuffer(payload, dtype="<f4", offset=4 + hlen).astype(np.float32)
        vecs = vecs.reshape(len(ids), header["dim"])  # (n, dim)
        records = header.get("records")
        records = None if records is None else Records.from_json(records)
        return LogRecord(seq, "upsert", ids, vecs, records)
    return LogRecord(seq, header["op"], ids, None)


@dataclass(frozen=True)
class _Frame:
    seq: int
    start: int  # payload start offset
    end: int  # payload end offset


def _valid_frame_at(buf, off: int) -> bool:
    if len(buf) - off < FRAME.size:
        return False
    magic, seq, length, crc = FRAME.unpack_from(buf, off)
    end = off + FRAME.size + length
    return magic == MAGIC and end <= len(buf) and _crc(seq, buf[off + FRAME.size : end]) == crc


def _valid_frame_after(buf, off: int) -> bool:
    """Is there any complete, CRC-valid record starting after ``off``?"""
    pos = buf.find(_MAGIC_BYTES, off + 1)
    while pos != -1:
        if _valid_frame_at(buf, pos):
            return True
        pos = buf.find(_MAGIC_BYTES, pos + 1)
    return False


def scan_frames(buf, name: str) -> tuple[list[_Frame], int, str | None]:
    """Parse frames in ``buf`` (bytes or mmap). Returns (frames, end of the last good frame,
    torn-tail reason or None). Raises ``CorruptLogError`` on corruption."""
    frames: list[_Frame] = []
    off, n = 0, len(buf)
    view = memoryview(buf)
    try:
        while off < n:
            if n - off < FRAME.size:
                return frames, off, f"incomplete record header ({n - off} of {FRAME.size} bytes)"
            magic, seq, length, crc = FRAME.unpack_from(buf, off)
            if magic != MAGIC:
                if not np.frombuffer(view[off:], dtype=np.uint8).any():
                    return frames, off, f"zero-filled tail of {n - off} bytes"
                raise CorruptLogError(name, off, f"bad magic number {magic:#010x}")
            end = off + FRAME.size + length
            if end > n:
                return (
                    frames,
                    off,
                    f"incomplete record: {length} payload bytes declared, {n - off - FRAME.size} present",
                )
            if _crc(seq, view[off + FRAME.size : end]) != crc:
                raise CorruptLogError(name, off, f"CRC mismatch in record seq={seq}")
            frames.append(_Frame(seq, off + FRAME.size, end))
            off = end
        return frames, off, None
    finally:
        view.release()


# --------------------------------------------------------------------------- storage
def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Store:
    """Where the log segments and snapshots live. Subclasses: local directory, S3 prefix."""

    segment_re: re.Pattern

    def __init__(self, uri: str) -> None:
        self.uri = str(uri)
        self.fs, self.base = iio.resolve(self.uri)

    # paths are filesystem paths for ``self.fs`` (for S3: "bucket/key")
    def _path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def _list(self, sub: str, pattern: re.Pattern) -> list[tuple[int, str]]:
        path = self._path(sub)
        sel = pafs.FileSelector(path, recursive=False, allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(sel):
            m = pattern.match(info.base_name)
            if m and info.type == pafs.FileType.File:
                out.append((int(m.group(1)), info.path))
        return sorted(out)

    def segments(self) -> list[tuple[int, str]]:
        return self._list("log", self.segment_re)

    def snapshots(self) -> list[tuple[int, str]]:
        return self._list("snapshots", _SNAPSHOT)

    def read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def open(self, path: str):
        """A seekable binary file for reading ``path`` (close it)."""
        return self.fs.open_input_file(path)

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(path)

    def write_snapshot(self, seq: int, *parts) -> str:
        """Write a snapshot file made of ``parts`` (bytes-like, in order) atomically."""
        path = self._path("snapshots", f"{seq:020d}.snap")
        self._write_atomic(path, *parts)
        return path

    def _write_atomic(self, path: str, *parts) -> None:
        with self.fs.open_output_stream(path) as f:  # one PUT: atomic per object
            for part in parts:
                f.write(part)

    # log-specific
    def open_writer(self, next_seq: int) -> None:
        raise NotImplementedError

    def append(self, seq: int, frame: bytes) -> None:
        raise NotImplementedError

    def rotate(self, next_seq: int) -> None:
        """Start a new segment whose first record will be ``next_seq``."""

    def defer_writer(self, next_seq: int) -> None:
        """``open_writer`` failed (storage read-only or full): open it at the next append."""

    def iter_segment_buffers(self) -> Iterator[tuple[int, str, object]]:
        """(name seq, path, buffer) for each segment in order; buffers are bytes or mmap."""
        raise NotImplementedError

    def truncate(self, path: str, offset: int) -> None:
        raise NotImplementedError

    def compact(self, upto_seq: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _LocalStore(_Store):
    segment_re = _LOCAL_SEGMENT

    def __init__(self, uri: str, lock_timeout_s: float = 30.0, lock: bool = True) -> None:
        super().__init__(uri)
        for sub in ("log", "snapshots"):
            with contextlib.suppress(OSError):  # a read-only store may still be restored
                os.makedirs(self._path(sub), exist_ok=True)
        self._lock_wanted = lock
        self._fd: int | None = None  # the active segment, opened O_APPEND, unbuffered
        self._active: str | None = None  # its path
        self._good: tuple[str, int] | None = None  # (active segment, size) after a failed append
        self._pending: int | None = None  # first seq of a segment that could not be opened yet
        self._lock_file = None
        self._lock_timeout_s = lock_timeout_s
        with contextlib.suppress(OSError):  # read-only, or nothing there yet
            _fsync_dir(self.base)
        if lock:
            try:
                self._lock()
            except OSError as e:  # read-only or full: restore anyway, lock before writing
                log.warning("%s: cannot take the writer lock yet (%s); reads only", uri, e)

    def _lock(self) -> None:
        self._lock_file = open(self._path("LOCK"), "a+b")  # held until close()
        self._acquire_lock(self._lock_timeout_s)
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        """Temp files of snapshots whose writer crashed before the rename (we hold the lock)."""
        snap_dir = self._path("snapshots")
        for name in os.listdir(snap_dir):
            if ".tmp-" in name:
                log.info("removing stale temporary snapshot file %s", name)
                os.remove(os.path.join(snap_dir, name))

    def _acquire_lock(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._lock_file.close()
                    raise RuntimeError(
                        f"{self.uri} is locked by another writer (LOCK held)"
                    ) from None
                time.sleep(0.05)

    def iter_segment_buffers(self):
        for seq, path in self.segments():
            size = os.path.getsize(path)
            if size == 0:
                yield seq, path, b""
                continue
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                yield seq, path, mm

    def truncate(self, path: str, offset: int) -> None:
        with open(path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())

    def open_writer(self, next_seq: int) -> None:
        """Make a new segment the active one; if that fails the old one stays active."""
        if self._lock_wanted and self._lock_file is None:
            self._lock()
        path = self._path("log", f"{next_seq:020d}.log")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # unbuffered
        try:
            os.fsync(fd)
            _fsync_dir(self._path("log"))
        except BaseException:
            os.close(fd)
            raise
        self._close_active()
        self._fd, self._active, self._good, self._pending = fd, path, None, None

    rotate = open_writer

    def defer_writer(self, next_seq: int) -> None:
        self._pending = next_seq

    def append(self, seq: int, frame: bytes) -> None:
        if self._fd is None and self._pending is not None:
            self.open_writer(self._pending)  # storage was read-only or full at open
        elif self._fd is None:
            self._reopen()
        fd = self._fd
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(frame)
            while view:  # a write may be partial
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            # Roll back the partial frame so later appends don't sit behind a torn record.
            # If even that fails (read-only, gone), close the segment: the next append first
            # truncates it to this size and reopens it (storage back: writes resume).
            self._good = (self._active, size)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            except OSError:
                log.exception("could not roll back a failed append to %s", self._active)
                self._close_active()
            raise

    def _reopen(self) -> None:
        if self._good is None:
            raise RuntimeError(f"{self.uri}: no open log segment")
        path, size = self._good
        os.truncate(path, size)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.fsync(fd)
        self._fd, self._active = fd, path
        log.info("reopened log segment %s at %d bytes after a failed write", path, size)

    def _close_active(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _write_atomic(self, path: str, *parts) -> None:
        iio.write_bytes(path, *parts)  # temp file + fsync + rename
        _fsync_dir(os.path.dirname(path))

    def compact(self, upto_seq: int) -> int:
        """Delete segments all of whose records have seq <= upto_seq (never the active one)."""
        segs = self.segments()
        active = os.path.abspath(self._active) if self._active is not None else None
        removed = 0
        for (_, path), (next_first, _) in zip(segs, segs[1:], strict=False):
            if next_first - 1 <= upto_seq and os.path.abspath(path) != active:
                os.remove(path)
                removed += 1
        if removed:
            _fsync_dir(self._path("log"))
        return removed

    def close(self) -> None:
        self._close_active()
        if self._lock_file is not None and not self._lock_file.closed:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()


class _S3Store(_Store):
    """S3 (or compatible): one immutable object per record; a completed PUT is the commit.

    There is no lock: the caller must ensure a single writer (e.g. one named Ray actor)."""

    segment_re = _S3_SEGMENT
    prefetch = 16

    def iter_segment_buffers(self):
        segs = self.segments()
        with ThreadPoolExecutor(8) as pool:
            for i in range(0, len(segs), self.prefetch):
                window = segs[i : i + self.prefetch]
                datas = list(pool.map(lambda s: self.read(s[1]), window))
                for (seq, path), data in zip(window, datas, strict=True):
                    yield seq, path, data

    def truncate(self, path: str, offset: int) -> None:
        if offset == 0:
            self.delete(path)
        else:
            self._write_atomic(path, self.read(path)[:offset])

    def open_writer(self, next_seq: int) -> None:
        pass

    def append(self, seq: int, frame: bytes) -> None:
        self._write_atomic(self._path("log", f"{seq:020d}.rec"), frame)

    def compact(self, upto_seq: int) -> int:
        doomed = [path for seq, path in self.segments() if seq <= upto_seq]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self.delete, doomed))
        return len(doomed)


def open_store(uri: str, lock_timeout_s: float = 30.0, lock: bool = True) -> _Store:
    """Local stores take an exclusive ``flock`` on ``LOCK`` when ``lock`` (single writer)."""
    return _S3Store(uri) if iio.is_s3(uri) else _LocalStore(uri, lock_timeout_s, lock)


# --------------------------------------------------------------------------- reading
def _iter_records(store: _Store, report: RecoveryReport, repair: bool) -> Iterator[LogRecord]:
    segs = store.segments()
    last_path = segs[-1][1] if segs else None
    for _, path, buf in store.iter_segment_buffers():
        frames, good_end, torn = scan_frames(buf, path)
        if torn is not None:
            if path != last_path or _valid_frame_after(buf, good_end):
                raise CorruptLogError(path, good_end, f"{torn}, followed by more data")
            if not repair:
                raise CorruptLogError(
                    path, good_end, f"torn tail: {torn} (open with repair=True to truncate)"
                )
            dropped = len(buf) - good_end
        for fr in frames:
            yield decode_payload(fr.seq, buf[fr.start : fr.end])
        if torn is not None:
            if isinstance(buf, mmap.mmap):
                buf.close()  # before truncating the file under it
            store.truncate(path, good_end)
            log.warning(
                "repaired torn log tail: %s: dropped %d bytes at offset %d (%s)",
                path,
                dropped,
                good_end,
                torn,
            )
            report.truncated.append(
                {"uri": path, "offset": good_end, "dropped_bytes": dropped, "reason": torn}
            )


def read_log(
    uri: str, *, repair: bool = False, after_seq: int = 0
) -> tuple[list[LogRecord], RecoveryReport]:
    """All records with seq > ``after_seq`` in order, plus a report (see the module docstring)."""
    store = open_store(uri, lock=repair)  # reading alone needs no writer lock
    report = RecoveryReport(uri=str(uri))
    try:
        records = [r for r in _iter_records(store, report, repair) if r.seq > after_seq]
    finally:
        store.close()
    return records, report


# --------------------------------------------------------------------------- snapshots
def snapshot_header(seq: int, payload) -> bytes:
    """The header of a snapshot of ``payload`` (any bytes-like object)."""
    return SNAP_HEADER.pack(SNAP_MAGIC, seq, len(payload), hashlib.sha256(payload).digest())


def verify_snapshot(f, name: str) -> int:
    """Check a snapshot file's header and the sha256 of its payload, reading it in chunks;
    returns its seq and leaves ``f`` at the start of the payload. Raises
    ``CorruptLogError`` if the header, the length or the checksum is wrong."""
    head = f.read(SNAP_HEADER.size)
    if len(head) < SNAP_HEADER.size:
        raise CorruptLogError(name, 0, "snapshot shorter than its header")
    magic, seq, length, digest = SNAP_HEADER.unpack_from(head, 0)
    if magic != SNAP_MAGIC:
        raise CorruptLogError(name, 0, "bad snapshot magic")
    h, size = hashlib.sha256(), 0
    while chunk := f.read(_HASH_CHUNK):
        h.update(chunk)
        size += len(chunk)
    if size != length:
        raise CorruptLogError(
            name, SNAP_HEADER.size, f"snapshot payload is {size} bytes, header says {length}"
        )
    if h.digest() != digest:
        raise CorruptLogError(name, SNAP_HEADER.size, "snapshot sha256 mismatch")
    f.seek(SNAP_HEADER.size)
    return seq


def _load_newest_snapshot(
    store: _Store, report: RecoveryReport, spec: IndexSpec
) -> tuple[int, ShardedIndex | None]:
    """(seq, index) of the newest snapshot that verifies, loaded from its file (so a restore
    holds the index's arrays, not also the file's bytes); (0, None) when there is none."""
    for name_seq, path in reversed(store.snapshots()):
        f = None
        try:
            f = store.open(path)
            seq = verify_snapshot(f, path)
            if seq != name_seq:
                raise CorruptLogError(
                    path, 0, f"snapshot header seq {seq} != file name seq {name_seq}"
                )
        except (CorruptLogError, OSError) as e:
            if f is not None:
                f.close()
            log.error("skipping unusable snapshot %s: %s", path, e)
            report.skipped_snapshots.append({"uri": path, "reason": str(e)})
            continue
        report.snapshot_seq, report.snapshot = seq, path
        with f:
            return seq, ShardedIndex.from_file(f, spec)
    return 0, None


# --------------------------------------------------------------------------- the index
class DurableIndex:
    """A ``ShardedIndex`` whose writes go through a write-ahead log; see the module docstring.

    Thread-safe: writes are serialised (log order == apply order), searches run concurrently
    with each other and with log I/O (they only wait while a batch is applied in memory).
    """

    def __init__(
        self,
        index: ShardedIndex,
        store: _Store,
        report: RecoveryReport,
        snapshot_every: int = 1000,
        keep_snapshots: int = 2,
    ) -> None:
        if keep_snapshots < 1:
            raise ValueError("keep_snapshots must be >= 1")
        self.index = index
        self.recovery_report = report
        self.snapshot_every = snapshot_every
        self.keep_snapshots = keep_snapshots
        self._store = store
        self._last_seq = report.last_seq
        self._snapshot_seq = report.snapshot_seq
        self._write_lock = threading.Lock()
        # called under the write lock before every write; raises to refuse it (a sealed
        # generation: irene.index.actor)
        self.write_guard: Callable[[], None] | None = None
        self._snapshot_lock = threading.Lock()
        self._closed = False
        self._listeners: list[Callable[[LogRecord], None]] = []
        self._snapshotter: threading.Thread | None = None

    @classmethod
    def open(
        cls,
        uri: str,
        dim: int,
        spec: IndexSpec | dict | None = None,
        n_shards: int = 4,
        *,
        snapshot_every: int = 1000,
        keep_snapshots: int = 2,
        repair: bool = True,
        lock_timeout_s: float = 30.0,
    ) -> DurableIndex:
        """Restore the newest valid snapshot under ``uri`` and replay the log after it.

        ``snapshot_every``: take a snapshot (and compact the log) automatically once this many
        records were logged since the last one; 0 disables. ``keep_snapshots``: how many
        snapshots to retain (see the module docstring). ``repair``: truncate a torn log tail
        (reported in ``recovery_report``) instead of raising ``CorruptLogError``.
        ``lock_timeout_s``: how long to wait for another local writer to release ``LOCK``.
        Once a snapshot exists its ``n_shards`` wins over the argument (with a warning) and a
        different index kind or ``dim`` raises ``ValueError``.
        """
        spec = IndexSpec.from_dict(spec)
        store = open_store(uri, lock_timeout_s)
        try:
            report = RecoveryReport(uri=str(uri))
            index = cls._restore(store, report, dim, spec, n_shards, repair)
            try:
                store.open_writer(report.last_seq + 1)
            except OSError as e:  # read-only / full: serve reads; writes answer 503 meanwhile
                log.warning("%s: log not writable (%s); writes refused until it is", uri, e)
                store.defer_writer(report.last_seq + 1)
        except BaseException:
            store.close()
            raise
        log.info(
            "opened %s: snapshot seq %d, replayed %d records, last seq %d, %d vectors",
            uri,
            report.snapshot_seq,
            report.replayed_records,
            report.last_seq,
            index.count,
        )
        return cls(index, store, report, snapshot_every, keep_snapshots)

    @staticmethod
    def _restore(
        store: _Store,
        report: RecoveryReport,
        dim: int,
        spec: IndexSpec,
        n_shards: int,
        repair: bool,
    ) -> ShardedIndex:
        snap_seq, index = _load_newest_snapshot(store, report, spec)
        if index is None:
            index = ShardedIndex(dim, n_shards, spec)
        else:
            if index.dim != dim:
                raise ValueError(f"{store.uri} holds dim {index.dim} vectors, not {dim}")
            if index.n_shards != n_shards:
                log.warning(
                    "%s was built with %d shards; keeping that (asked for %d)",
                    store.uri,
                    index.n_shards,
                    n_shards,
                )
        last = snap_seq
        for rec in _iter_records(store, report, repair):
            if rec.seq <= snap_seq:
                report.skipped_records += 1
                continue
            if rec.seq <= last:
                raise CorruptLogError(
                    store.uri, 0, f"sequence goes backwards: {rec.seq} after {last}"
                )
            if rec.seq != last + 1:
                log.error(
                    "log gap in %s: records %d..%d are missing", store.uri, last + 1, rec.seq - 1
                )
                report.gaps.append((last + 1, rec.seq - 1))
            apply_record(index, rec)
            report.replayed_records += 1
            last = rec.seq
        report.last_seq = last
        return index

    # ----------------------------------------------------------------- writes
    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def snapshot_seq(self) -> int:
        return self._snapshot_seq

    def _commit(self, rec: LogRecord) -> None:
        """Caller holds the write lock. Durable before return; seq only advances on success."""
        if self._closed:
            raise RuntimeError("DurableIndex is closed")
        frame = encode_record(rec)
        try:
            self._store.append(rec.seq, frame)
        except OSError as e:  # disk full, read-only, S3 down (pyarrow's S3 errors are OSErrors)
            raise StorageUnavailable(
                f"index storage {self._store.uri} refused the write of record {rec.seq} "
                f"({type(e).__name__}: {e}); nothing was acknowledged",
                storage_reason(e),
            ) from e
        self._last_seq = rec.seq

    def add(self, ids: Sequence[str], vecs, records: Records | None = None) -> int:
        """Upsert a batch (ids (n,), vecs (n, dim), records (n rows) or None: no records);
        validated, then durable when it returns. Returns its seq."""
        return self.upsert(ids, vecs, records)[0]

    def upsert(
        self, ids: Sequence[str], vecs, records: Records | None = None
    ) -> tuple[int, np.ndarray]:
        """:meth:`add`, also returning ``created`` (n,) bool per id of the batch (an id
        repeated in the batch reads as the batch's single upsert of it)."""
        with self._write_lock:
            self._guard()
            uniq, x, records = self.index.prepare_batch(ids, vecs, records)
            if not uniq:
                return self._last_seq, np.zeros(0, dtype=bool)
            rec = LogRecord(self._last_seq + 1, "upsert", uniq, x, records)
            self._commit(rec)
            created = self.index.add_prepared(uniq, x, records)
            self._publish(rec)
            seq = self._last_seq
        self._maybe_snapshot()
        if len(uniq) != len(ids):
            new = dict(zip(uniq, created.tolist(), strict=True))
            created = np.array([new[s] for s in ids], dtype=bool)
        return seq, created

    def delete(self, ids: Sequence[str]) -> list[bool]:
        """Remove ids; element i is True if ids[i] was present. Durable when it returns."""
        ids = check_str_ids(ids)
        with self._write_lock:
            self._guard()
            seen: set[str] = set()
            present = []
            for s in ids:
                present.append(s not in seen and s in self.index)
                seen.add(s)
            self._delete_locked([s for s, p in zip(ids, present, strict=True) if p])
        if any(present):
            self._maybe_snapshot()
        return present

    def delete_where(self, filter: Filter | dict) -> int:
        """Remove every item ``filter`` matches (decided and logged under the write lock, so
        a concurrent write cannot slip between); returns how many. Durable when it returns."""
        with self._write_lock:
            self._guard()
            doomed = [s for s in self.index.names(self.index.match(filter)) if s is not None]
            self._delete_locked(doomed)
        if doomed:
            self._maybe_snapshot()
        return len(doomed)

    def _guard(self) -> None:
        if self.write_guard is not None:
            self.write_guard()

    def _delete_locked(self, doomed: list[str]) -> None:
        if doomed:
            rec = LogRecord(self._last_seq + 1, "delete", doomed)
            self._commit(rec)
            self.index.delete(doomed)
            self._publish(rec)

    def add_listener(self, fn: Callable[[LogRecord], None]) -> None:
        """Call ``fn(record)`` for every committed record, in seq order, once it is durable
        and applied in memory (under the write lock: ``fn`` must be quick and not write)."""
        self._listeners.append(fn)

    def _publish(self, rec: LogRecord) -> None:
        for fn in self._listeners:
            fn(rec)

    def export_state(self) -> tuple[int, dict]:
        """``(seq, ShardedIndex.state_dict())``: the whole state as of ``seq``, consistently."""
        with self._write_lock:
            return self._last_seq, self.index.state_dict()

    # ----------------------------------------------------------------- reads
    def contains(self, ids: Sequence[str]) -> list[bool]:
        return self.index.contains(ids)

    def get(self, id_: str) -> np.ndarray | None:
        return self.index.get(id_)

    def get_records(self, ids: Sequence[str]) -> list[dict | None]:
        """Per id its record dict, or None when absent (``ShardedIndex.get_records``)."""
        return self.index.get_records(ids)

    def search(
        self, queries, k: int, filter: Filter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, int64 ids)`` arrays (``ShardedIndex.search``)."""
        return self.index.search(queries, k, filter)

    def lookup(self, iids) -> tuple[list, list]:
        """String ids and records of int64 ids (``ShardedIndex.lookup``)."""
        return self.index.lookup(iids)

    @property
    def count(self) -> int:
        return self.index.count

    # ----------------------------------------------------------------- snapshots
    def _maybe_snapshot(self) -> None:
        """Start a snapshot in the background once ``snapshot_every`` records were logged
        since the last one (the write that crossed the line does not wait for it)."""
        if self.snapshot_every and self._last_seq - self._snapshot_seq >= self.snapshot_every:
            if self._snapshot_lock.acquire(blocking=False):  # else one is already running
                self._snapshotter = threading.Thread(
                    target=self._background_snapshot, name="irene-snapshot", daemon=True
                )
                self._snapshotter.start()

    def _background_snapshot(self) -> None:
        try:
            if not self._closed:
                self._snapshot_locked()
        except Exception:  # the batches are already durable in the log: don't fail them
            log.exception("automatic snapshot of %s failed; will retry later", self._store.uri)
        finally:
            self._snapshot_lock.release()

    def wait_snapshot(self, timeout: float | None = None) -> None:
        """Wait for a background snapshot in progress (tests, shutdown)."""
        t = self._snapshotter
        if t is not None:
            t.join(timeout)

    def snapshot(self) -> int:
        """Write a snapshot of the current state and compact the log. Returns its seq."""
        with self._snapshot_lock:
            try:
                return self._snapshot_locked()
            except OSError as e:
                raise StorageUnavailable(
                    f"index storage {self._store.uri} refused the snapshot ({e})",
                    storage_reason(e),
                ) from e

    def _snapshot_locked(self) -> int:
        with self._write_lock:  # a consistent (state, seq) pair; I/O happens after release
            seq = self._last_seq
            if seq == self._snapshot_seq:
                return seq
            payload = self.index.to_buffer()  # no write runs until the lock is released
            self._store.rotate(seq + 1)
        t0 = time.perf_counter()
        path = self._store.write_snapshot(seq, snapshot_header(seq, payload), payload)
        self._snapshot_seq = seq
        snaps = self._store.snapshots()
        kept = snaps[-self.keep_snapshots :]
        for _, old in snaps[: -self.keep_snapshots]:
            self._store.delete(old)
        horizon = min(s for s, _ in kept)
        removed = self._store.compact(horizon)
        log.info(
            "snapshot %s (%d bytes, %.2fs); compacted %d log segments with seq <= %d",
            path,
            len(payload),
            time.perf_counter() - t0,
            removed,
            horizon,
        )
        return seq

    def close(self) -> None:
        self.wait_snapshot()
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._store.close()
            self.index.close()

    def __enter__(self) -> DurableIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def apply_record(index: ShardedIndex, rec: LogRecord) -> None:
    """Apply one logged batch to an in-memory index (replay, read replicas): it was
    validated before it was logged, so only its vectors' shape is checked again."""
    if rec.op == "upsert":
        index.add_prepared(list(rec.ids), as_vectors(rec.vectors, index.dim), rec.records)
    else:
        index.delete(rec.ids)

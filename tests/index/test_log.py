"""Write-ahead log + snapshots, on a local directory and on a real (moto) S3 server."""

from __future__ import annotations

import json
import logging
import struct
import uuid

import faiss  # noqa: F401 -- faiss before anything that may pull in torch
import numpy as np
import pytest

from irene import io as iio
from irene.index.log import (
    FRAME,
    MAGIC,
    CorruptLogError,
    DurableIndex,
    _crc,
    decode_payload,
    read_log,
    snapshot_header,
)
from irene.index.records import Records, empty_record
from irene.index.sharded import ShardedIndex
from tests.helpers import named_search, old_index_blob

DIM = 8
BUCKET = "irene-test"  # created by the moto_s3 fixture


@pytest.fixture(params=["local", "s3"])
def uri(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "index")
    request.getfixturevalue("moto_s3")
    return f"s3://{BUCKET}/{uuid.uuid4().hex}"


def _batch(b: int, n: int = 4) -> tuple[list[str], np.ndarray]:
    x = np.random.default_rng(b).standard_normal((n, DIM)).astype(np.float32)  # (n, DIM)
    return [f"b{b}-{i}" for i in range(n)], x / np.linalg.norm(x, axis=1, keepdims=True)


def _open(uri: str, **kw) -> DurableIndex:
    kw.setdefault("snapshot_every", 0)  # 0: no automatic snapshots
    return DurableIndex.open(uri, DIM, None, 2, **kw)


def _fill(uri: str, batches: range, **kw) -> None:
    with _open(uri, **kw) as di:
        for b in batches:
            di.add(*_batch(b))
            di.wait_snapshot()  # automatic snapshots run in the background: one at a time here


def _segments(uri: str) -> list[str]:
    d = iio.join(uri, "log")
    return [iio.join(d, n) for n in iio.listdir(d) if n.endswith((".log", ".rec"))]


def _snapshots(uri: str) -> list[str]:
    d = iio.join(uri, "snapshots")
    return [iio.join(d, n) for n in iio.listdir(d) if n.endswith(".snap")]


def _flip(path: str, offset: int) -> None:
    data = bytearray(iio.read_bytes(path))
    data[offset] ^= 0xFF
    iio.write_bytes(path, bytes(data))


def _assert_has(di: DurableIndex, batches) -> None:
    for b in batches:
        ids, x = _batch(b)
        for i, v in zip(ids, x, strict=True):
            got = di.get(i)
            assert got is not None, i
            np.testing.assert_allclose(got, v, rtol=1e-6)


def test_round_trip(uri):
    with _open(uri) as di:
        seqs = [di.add(*_batch(b)) for b in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        assert di.delete(["b0-0", "zzz", "b0-0"]) == [True, False, False]
        assert di.delete(["zzz"]) == [False]  # nothing to delete: no record
        q = _batch(99)[1]
        before = named_search(di, q, 5)
        assert di.count == 19 and di.last_seq == 6

    records, report = read_log(uri)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r.op for r in records] == ["upsert"] * 5 + ["delete"]
    assert records[2].ids == _batch(2)[0]
    np.testing.assert_array_equal(records[2].vectors, _batch(2)[1])
    assert records[5].ids == ["b0-0"] and records[5].vectors is None
    assert report.clean

    with _open(uri) as di:
        rep = di.recovery_report
        assert (
            rep.clean and rep.replayed_records == 6 and rep.snapshot_seq == 0 and rep.last_seq == 6
        )
        assert di.count == 19 and di.get("b0-0") is None
        _assert_has(di, range(1, 5))
        assert named_search(di, q, 5) == before
        assert di.add(*_batch(7)) == 7


def test_torn_tail_is_repaired_and_reported(uri, caplog):
    _fill(uri, range(3))
    last = _segments(uri)[-1]
    data = iio.read_bytes(last)
    iio.write_bytes(last, data[:-5])  # a crash in the middle of writing record 3

    with pytest.raises(CorruptLogError, match="torn tail") as err:
        read_log(uri)
    assert err.value.path.endswith(last.split("/")[-1])
    with pytest.raises(CorruptLogError):
        _open(uri, repair=False)

    with caplog.at_level(logging.WARNING, logger="irene.index.log"), _open(uri) as di:
        rep = di.recovery_report
        assert len(rep.truncated) == 1 and not rep.clean
        t = rep.truncated[0]
        assert t["uri"].endswith(last.split("/")[-1])
        assert t["offset"] + t["dropped_bytes"] == len(data) - 5
        assert t["offset"] == (0 if uri.startswith("s3://") else 2 * len(data) // 3)
        assert di.count == 8 and di.last_seq == 2 and di.get("b2-0") is None
        _assert_has(di, range(2))
        assert di.add(*_batch(3)) == 3
    assert "repaired torn log tail" in caplog.text

    with _open(uri) as di:  # the repair was persisted: clean now
        assert di.recovery_report.clean and di.count == 12
        _assert_has(di, [0, 1, 3])


def test_flipped_byte_in_a_middle_record_is_an_error(uri):
    _fill(uri, range(3))
    segs = _segments(uri)
    if uri.startswith("s3://"):  # one object per record
        path, rec_off = segs[1], 0
    else:  # one segment holding three equal-sized records
        path = segs[-1]
        rec_off = len(iio.read_bytes(path)) // 3
    _flip(path, rec_off + FRAME.size + 10)
    for repair in (False, True):
        with pytest.raises(CorruptLogError, match="CRC mismatch") as err:
            _open(uri, repair=repair)
        assert err.value.offset == rec_off and err.value.path.endswith(path.split("/")[-1])
        assert f"offset {rec_off}" in str(err.value)


def test_bad_crc_in_last_complete_record_is_an_error(uri):
    _fill(uri, range(2))
    last = _segments(uri)[-1]
    _flip(last, len(iio.read_bytes(last)) - 1)
    with pytest.raises(CorruptLogError, match="CRC mismatch"):
        _open(uri, repair=True)


def test_torn_record_followed_by_valid_data_is_an_error(uri):
    _fill(uri, range(3))
    segs = _segments(uri)
    if uri.startswith("s3://"):  # a truncated object that is not the last one
        iio.write_bytes(segs[1], iio.read_bytes(segs[1])[:-3])
    else:  # record 2's length field corrupted to reach past the end of the file
        data = bytearray(iio.read_bytes(segs[-1]))
        off = len(data) // 3
        struct.pack_into("<I", data, off + 12, 10**9)
        iio.write_bytes(segs[-1], bytes(data))
    with pytest.raises(CorruptLogError, match="followed by more data"):
        _open(uri, repair=True)


def test_zero_filled_tail_is_repaired(tmp_path):
    uri = str(tmp_path / "index")
    _fill(uri, range(2))
    seg = _segments(uri)[-1]
    with open(seg, "ab") as f:
        f.write(b"\0" * 100)
    with _open(uri) as di:
        assert di.recovery_report.truncated[0]["dropped_bytes"] == 100
        assert di.count == 8


def test_gap_is_reported(uri):
    for b in range(3):  # every open starts a new local segment: three segments
        _fill(uri, range(b, b + 1))
    segs = _segments(uri)
    assert len(segs) >= 3
    iio.delete([s for s in segs if iio.read_bytes(s)][1])
    with _open(uri) as di:
        assert di.recovery_report.gaps == [(2, 2)] and not di.recovery_report.clean
        assert di.count == 8 and di.get("b1-0") is None
        _assert_has(di, [0, 2])


def test_corrupt_newest_snapshot_falls_back_to_previous(uri, caplog):
    with _open(uri) as di:
        di.add(*_batch(0))
        di.add(*_batch(1))
        assert di.snapshot() == 2
        di.add(*_batch(2))
        di.add(*_batch(3))
        assert di.snapshot() == 4
        di.add(*_batch(4))
    snaps = _snapshots(uri)
    assert [s.split("/")[-1] for s in snaps] == [f"{2:020d}.snap", f"{4:020d}.snap"]
    _flip(snaps[-1], len(iio.read_bytes(snaps[-1])) // 2)

    with caplog.at_level(logging.ERROR, logger="irene.index.log"), _open(uri) as di:
        rep = di.recovery_report
        assert rep.snapshot_seq == 2 and rep.snapshot.endswith(f"{2:020d}.snap")
        assert len(rep.skipped_snapshots) == 1 and not rep.clean
        assert rep.skipped_snapshots[0]["uri"].endswith(f"{4:020d}.snap")
        assert "sha256" in rep.skipped_snapshots[0]["reason"]
        assert rep.replayed_records == 3 and rep.last_seq == 5 and not rep.gaps
        assert di.count == 20  # nothing lost: the log is kept back to the previous snapshot
        _assert_has(di, range(5))
    assert "skipping unusable snapshot" in caplog.text


def test_snapshot_restores_without_replay(uri):
    with _open(uri, snapshot_every=3) as di:
        for b in range(3):
            di.add(*_batch(b))
        di.wait_snapshot()  # automatic, in the background: the write did not wait for it
        assert di.snapshot_seq == 3
    with _open(uri) as di:
        rep = di.recovery_report
        assert rep.snapshot_seq == 3 and rep.replayed_records == 0 and rep.clean
        _assert_has(di, range(3))


def test_compaction_deletes_old_log(uri):
    _fill(uri, range(10), snapshot_every=3, keep_snapshots=2)
    assert [s.split("/")[-1] for s in _snapshots(uri)] == [f"{6:020d}.snap", f"{9:020d}.snap"]
    records, _ = read_log(uri)
    assert [r.seq for r in records] == [7, 8, 9, 10]  # seq <= 6 (the older kept snapshot) is gone
    first_seqs = [int(s.split("/")[-1].split(".")[0]) for s in _segments(uri)]
    assert min(first_seqs) == 7

    with _open(uri, keep_snapshots=1) as di:
        assert di.count == 40 and di.recovery_report.snapshot_seq == 9
        di.add(*_batch(10))
        assert di.snapshot() == 11
    assert [s.split("/")[-1] for s in _snapshots(uri)] == [f"{11:020d}.snap"]
    assert read_log(uri)[0] == []  # everything <= 11 compacted
    with _open(uri) as di:
        assert di.count == 44
        _assert_has(di, range(11))


def test_local_single_writer_lock(tmp_path):
    uri = str(tmp_path / "index")
    with _open(uri):
        with pytest.raises(RuntimeError, match="locked"):
            _open(uri, lock_timeout_s=0.2)
        assert read_log(uri)[0] == []  # read-only access needs no lock
    with _open(uri) as di:  # released on close
        assert di.count == 0


def test_invalid_batches_are_not_logged(tmp_path):
    uri = str(tmp_path / "index")
    with _open(uri) as di:
        with pytest.raises(ValueError):
            di.add(["a"], np.zeros((1, DIM + 1)))
        with pytest.raises(ValueError):
            di.add(["a"], np.full((1, DIM), np.inf))
        assert di.add([], np.zeros((0, DIM))) == 0
        assert di.last_seq == 0
    assert read_log(uri)[0] == []


def test_s3_outage_refuses_writes_then_resumes_by_itself(moto_endpoint, monkeypatch):
    """The S3 server goes away mid-ingest: the write raises StorageUnavailable and nothing is
    acknowledged (seq unchanged), reads keep working; when S3 returns the next write succeeds
    and a restart recovers exactly the acknowledged batches."""
    from moto.server import ThreadedMotoServer

    from irene.index.log import StorageUnavailable

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("IRENE_S3_ENDPOINT", f"http://{host}:{port}")
    import boto3

    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="outage")
    uri = f"s3://outage/{uuid.uuid4().hex}"
    di = _open(uri)
    try:
        assert di.add(*_batch(0)) == 1
        server.stop()  # S3 down
        with pytest.raises(StorageUnavailable, match="nothing was acknowledged"):
            di.add(*_batch(1))
        assert di.last_seq == 1 and di.get("b1-0") is None
        assert named_search(di, _batch(0)[1][:1], 1)[0][0][0] == "b0-0"  # reads still answer
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # S3 back (same state)
        assert di.add(*_batch(2)) == 2
    finally:
        di.close()
    with _open(uri) as again:
        _assert_has(again, [0, 2])
        assert again.get("b1-0") is None and again.last_seq == 2
    server.stop()


def test_local_write_failure_rolls_back_and_resumes(tmp_path):
    """A local append that fails (here: the log directory's filesystem full, a real tmpfs
    when the test may mount one, else a file size limit) leaves no torn record behind, acks
    nothing, and later writes succeed once there is room again."""
    import resource

    from irene.index.log import StorageUnavailable

    uri = str(tmp_path / "index")
    di = _open(uri)
    try:
        assert di.add(*_batch(0)) == 1
        size = sum(len(iio.read_bytes(p)) for p in _segments(uri))
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        import signal

        old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))  # no room for a record
        try:
            with pytest.raises(StorageUnavailable):
                di.add(*_batch(1))
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, old)
        assert di.last_seq == 1 and sum(len(iio.read_bytes(p)) for p in _segments(uri)) == size
        assert di.add(*_batch(2)) == 2
    finally:
        di.close()
    with _open(uri) as again:  # no torn tail to repair, exactly the acknowledged batches
        assert again.recovery_report.clean
        _assert_has(again, [0, 2])
        assert again.get("b1-0") is None


def test_read_only_storage_at_open_restores_and_refuses_writes_until_writable(tmp_path):
    """The log's filesystem is read-only when the index opens (a real tmpfs remounted ro):
    the index restores and answers reads, writes raise StorageUnavailable, and once the
    filesystem is writable again the next write succeeds with no gap."""
    from irene.index.log import StorageUnavailable
    from tests.helpers import remount, tmpfs_mount

    with tmpfs_mount(tmp_path / "mnt") as mnt:
        uri = str(mnt / "index")
        with _open(uri) as di:
            di.add(*_batch(0))
        assert remount(mnt, "ro")
        di = _open(uri)
        try:
            _assert_has(di, [0])
            with pytest.raises(StorageUnavailable):
                di.add(*_batch(1))
            assert remount(mnt, "rw")
            assert di.add(*_batch(2)) == 2
        finally:
            di.close()
        with _open(uri) as again:
            assert again.recovery_report.clean and again.last_seq == 2
            _assert_has(again, [0, 2])
            assert again.get("b1-0") is None


# --------------------------------------------------------------------------- records
def _records(b: int, n: int = 4, tag: str = "") -> Records:
    ids = _batch(b, n)[0]
    return Records.of(
        [f"text of {i}{tag} — ünïcode" for i in ids],
        [{"batch": b, "tag": tag, "price": 1.5, "kw": ["x", i]} for i in ids],
        "generated" if b % 2 else "trained",
        f"bundle-{b}{tag}",
    )


def _want(b: int, n: int = 4, tag: str = "") -> list[dict]:
    recs = _records(b, n, tag)
    return [recs.row(k) for k in range(n)]


def _assert_records(di: DurableIndex, batches, tag: str = "") -> None:
    for b in batches:
        assert di.get_records(_batch(b)[0]) == _want(b, tag=tag), b


def test_records_survive_replay_and_snapshots(uri):
    with _open(uri) as di:
        for b in range(4):
            assert di.add(*_batch(b), _records(b)) == b + 1
        di.add(*_batch(4))  # no records
        _assert_records(di, range(4))
    records, _ = read_log(uri)
    assert records[1].records == _records(1) and records[4].records is None
    with _open(uri) as di:  # replay only
        assert di.recovery_report.replayed_records == 5
        _assert_records(di, range(4))
        assert di.get_records(_batch(4)[0]) == [empty_record()] * 4
        assert di.snapshot() == 5
        di.add(*_batch(1), _records(1, tag="new"))  # after the snapshot: replayed over it
        di.delete(_batch(2)[0][:2])
    with _open(uri) as di:  # snapshot + replay
        rep = di.recovery_report
        assert rep.snapshot_seq == 5 and rep.replayed_records == 2
        _assert_records(di, [0, 3])
        _assert_records(di, [1], tag="new")
        assert di.get_records(_batch(2)[0]) == [None, None, *_want(2)[2:]]
        assert di.get_records(["absent"]) == [None]


def test_torn_tail_keeps_the_records_of_acknowledged_batches(uri):
    with _open(uri) as di:
        for b in range(3):
            di.add(*_batch(b), _records(b))
    last = _segments(uri)[-1]
    iio.write_bytes(last, iio.read_bytes(last)[:-7])  # crash while writing record 3
    with _open(uri) as di:
        assert len(di.recovery_report.truncated) == 1 and di.last_seq == 2
        _assert_records(di, range(2))
        assert di.get_records(_batch(2)[0]) == [None] * 4


def test_invalid_records_are_not_logged(tmp_path):
    uri = str(tmp_path / "index")
    ids, x = _batch(0)
    with _open(uri) as di:
        with pytest.raises(ValueError):
            di.add(ids, x, Records.of(["one"]))  # length
        with pytest.raises(ValueError):
            di.add(ids, x, Records.of(["t"] * 4, [{"x": float("inf")}] + [{}] * 3))
        with pytest.raises((ValueError, TypeError)):
            di.add(ids, x, Records.of(["t"] * 4, [{"x": {1, 2}}] + [{}] * 3))
        assert di.last_seq == 0 and di.count == 0
    assert read_log(uri)[0] == []


def _old_frame(seq: int, ids: list[str], x: np.ndarray) -> bytes:
    """A log record exactly as written before records existed."""
    header = json.dumps({"op": "upsert", "ids": ids, "dim": DIM}).encode()
    payload = struct.pack("<I", len(header)) + header + x.astype("<f4").tobytes()
    return FRAME.pack(MAGIC, seq, len(payload), _crc(seq, payload)) + payload


def test_old_log_records_and_snapshots_without_records_still_load(uri):
    old = ShardedIndex(DIM, 2)
    old.add(*_batch(0))
    payload = old_index_blob(old, 1)
    blob = snapshot_header(1, payload) + payload
    iio.write_bytes(iio.join(uri, "snapshots", f"{1:020d}.snap"), blob)
    name = f"{2:020d}.rec" if uri.startswith("s3://") else f"{2:020d}.log"
    iio.write_bytes(iio.join(uri, "log", name), _old_frame(2, *_batch(1)))
    assert decode_payload(2, _old_frame(2, *_batch(1))[FRAME.size :]).records is None
    with _open(uri) as di:
        rep = di.recovery_report
        assert rep.snapshot_seq == 1 and rep.replayed_records == 1 and rep.clean
        _assert_has(di, range(2))
        assert di.get_records(_batch(0)[0] + _batch(1)[0]) == [empty_record()] * 8
        assert di.add(*_batch(2), _records(2)) == 3
        di.snapshot()
    with _open(uri) as di:  # a new-format snapshot now, with the records
        assert di.recovery_report.snapshot_seq == 3
        _assert_records(di, [2])
        assert di.get_records(_batch(0)[0][:1]) == [empty_record()]

"""Bulk ingest in-process: formats, metadata, equality with the serving path, idempotence, and
a run SIGKILLed mid-way then resumed with nothing lost and nothing twice."""

from __future__ import annotations

import json
import subprocess
import sys

import faiss  # noqa: F401 -- faiss before anything that may pull in torch
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from irene.config import load_config
from irene.ingest import (
    IngestError,
    count_items,
    ingest_local,
    iter_items,
    open_local_index,
)
from tests.faults import ROOT as FAULTS_CWD
from tests.faults import kill_after_writes_command
from tests.helpers import make_tiny_bundle, tiny_item_text

N = 37


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(str(tmp_path_factory.mktemp("ingest") / "bundle"), n_seen=20)


def _items(n: int = N) -> tuple[list[str], list[str]]:
    return [f"novel/{i}" for i in range(n)], [tiny_item_text(100 + i) for i in range(n)]


def _write(path, fmt: str, ids, texts) -> str:
    if fmt == "tsv":
        path.write_text("".join(f"{i}\t{t}\n" for i, t in zip(ids, texts, strict=True)) + "\n")
    elif fmt == "jsonl":
        path.write_text(
            "".join(
                json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True)
            )
        )
    else:
        pq.write_table(pa.table({"id": ids, "text": texts, "extra": list(range(len(ids)))}), path)
    return str(path)


def _cfg(bundle, items, index, **ingest):
    sets = [f"ingest.{k}={json.dumps(v)}" for k, v in ingest.items()]
    return load_config(
        None, sets, bundle=bundle, executor="local",
        ingest={"items": items, "index": {"uri": index, "n_owners": 2, "n_shards": 2}},
    )  # fmt: skip


def _expected(bundle, texts) -> np.ndarray:
    from irene.bundle import load_bundle

    b = load_bundle(bundle)
    return b.synthesize(b.encoder.encode(texts))  # (n, d) what POST /v1/items would store


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "parquet"])
def test_every_format_reads_the_same_items(tmp_path, fmt):
    ids, texts = _items()
    items = _write(tmp_path / f"items.{fmt}", fmt, ids, texts)
    assert count_items(items) == N
    batches = list(iter_items(items, 16))
    assert [len(b[0]) for b in batches] == [16, 16, 5]
    assert [i for b in batches for i in b[0]] == ids
    assert [t for b in batches for t in b[1]] == texts
    metas = [json.loads(m) for b in batches for m in b[2]]
    # Parquet's extra column is metadata; TSV / JSONL rows without metadata have none
    assert metas == ([{"extra": n} for n in range(N)] if fmt == "parquet" else [{}] * N)


def _meta(n: int) -> dict:
    return {"brand": f"b{n % 3}", "price": 1.5 * n, "tags": ["x", f"t{n}"], "new": n % 2 == 0}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_metadata_column_and_extra_columns_become_the_items_metadata(bundle, tmp_path, fmt):
    """A `metadata` object column plus other columns -> each item's record (text, metadata,
    source "generated", the bundle's version), readable from the index after the ingest."""
    from irene.bundle import bundle_version, read_manifest

    ids, texts = _items(12)
    metas = [_meta(n) for n in range(12)]
    rows = [
        {"id": i, "text": t, "metadata": m, "stock": n}
        for n, (i, t, m) in enumerate(zip(ids, texts, metas, strict=True))
    ]
    rows[3]["metadata"] = None  # no metadata object: the extra column only
    if fmt == "jsonl":
        del rows[5]["stock"]  # a column a row lacks is no key of its metadata
        items = tmp_path / "items.jsonl"
        items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        items = tmp_path / "items.parquet"
        pq.write_table(pa.Table.from_pylist(rows), items)  # metadata: a struct column
    want = [{**(m if n != 3 else {}), "stock": n} for n, m in enumerate(metas)]
    if fmt == "jsonl":
        del want[5]["stock"]
    cfg = _cfg(bundle, str(items), str(tmp_path / "index"), batch_size=5)
    assert ingest_local(cfg, show_progress=False).written == 12
    index = open_local_index(cfg.ingest.index, 32)
    try:
        recs = index.get_records([*ids, "absent"])
    finally:
        index.close()
    version = bundle_version(read_manifest(bundle))
    assert version and recs[-1] is None
    assert [r["metadata"] for r in recs[:-1]] == want
    assert [r["text"] for r in recs[:-1]] == texts
    assert {(r["source"], r["version"]) for r in recs[:-1]} == {("generated", version)}


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"metadata": {"price": {"eur": 3}}}, r"row 2: metadata\.price: expected a string"),
        ({"metadata": {"tags": ["a", 1]}}, r"row 2: metadata\.tags\[1\]: a list may hold"),
        ({"metadata": [1, 2]}, "metadata must be an object"),
        ({"metadata": "{not json"}, "not a JSON object"),
        ({"metadata": {"a": 1}, "a": 2}, "'a' is both a column and a metadata key"),
        ({"size": {"w": 1}}, r"row 2: metadata\.size: expected"),
        ({"metadata": {"blob": "x" * 5000}}, "max_metadata_bytes=4096"),
    ],
    ids=["nested", "list of ints", "not an object", "bad JSON string", "both", "nested column",
         "too large"],
)  # fmt: skip
def test_bad_metadata_is_rejected_naming_the_field(tmp_path, row, match):
    ids, texts = _items(3)
    rows = [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]
    rows[1].update(row)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(IngestError, match=match):
        list(iter_items(str(items), 8))


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ({"a": "x", "b": 1, "c": -2.5, "d": True, "e": ["x", "y"], "f": []}, None),
        ({"a": None}, "items[0].metadata.a: expected a string"),
        ({"a": {"b": 1}}, "items[0].metadata.a: expected a string, number, bool or list"),
        ({"a": float("nan")}, "items[0].metadata.a: numbers must be finite"),
        ({"a": float("inf")}, "items[0].metadata.a: numbers must be finite"),
        ({"a": 1 << 63}, "items[0].metadata.a: integer out of the int64 range"),
        ({"a": [["x"]]}, "items[0].metadata.a[0]: a list may hold strings only"),
        ({"": 1}, "keys must be non-empty strings"),
        ({"k\n": 1}, "control characters"),
        ({"k" * 129: 1}, "longer than 128"),
        ([1], "items[0].metadata: expected an object"),
    ],
)
def test_check_metadata(meta, error):
    from irene.metadata import MetadataError, check_metadata

    if error is None:
        assert check_metadata(meta, "items[0].metadata") == meta
        return
    with pytest.raises(MetadataError) as e:
        check_metadata(meta, "items[0].metadata")
    assert error in str(e.value)


def test_ingest_stores_the_generated_classifiers_and_a_rerun_skips_them(bundle, tmp_path):
    ids, texts = _items()
    items = _write(tmp_path / "items.jsonl", "jsonl", ids, texts)
    cfg = _cfg(bundle, items, str(tmp_path / "index"), batch_size=16)
    rep = ingest_local(cfg, show_progress=False).to_dict()
    assert (rep["items"], rep["written"], rep["skipped"], rep["index_count"]) == (N, N, 0, N)
    assert set(rep["stage_share"]) == {"skip", "encode", "generate", "write"}
    assert rep["stage_seconds"]["encode"] > 0 and rep["items_per_s"] > 0
    index = open_local_index(cfg.ingest.index, 32)
    try:
        got = np.stack(index.get_many(ids))
        np.testing.assert_allclose(got, _expected(bundle, texts), atol=1e-5)
        assert [o.count() for o in index.owners] != [N, 0]  # spread over both shard actors
    finally:
        index.close()
    # a rerun skips everything: idempotent by id
    again = ingest_local(cfg, show_progress=False).to_dict()
    assert (again["written"], again["skipped"], again["index_count"]) == (0, N, N)


def test_directory_of_files_and_bad_inputs(bundle, tmp_path):
    d = tmp_path / "parts"
    d.mkdir()
    ids, texts = _items(10)
    _write(d / "a.jsonl", "jsonl", ids[:6], texts[:6])
    _write(d / "b.jsonl", "jsonl", ids[6:], texts[6:])
    (d / "README").write_text("not an items file")
    assert count_items(str(d)) == 10
    rep = ingest_local(_cfg(bundle, str(d), str(tmp_path / "ix")), show_progress=False)
    assert rep.written == 10
    bad = tmp_path / "bad.tsv"
    bad.write_text("no-tab-here\n")
    with pytest.raises(IngestError, match="id<TAB>text"):
        list(iter_items(str(bad), 8))
    with pytest.raises(IngestError, match="unknown items format"):
        count_items(_write(tmp_path / "x.csv", "tsv", ids, texts))
    with pytest.raises(IngestError, match="not found"):
        count_items(str(tmp_path / "missing.parquet"))
    nojson = tmp_path / "n.jsonl"
    nojson.write_text(json.dumps({"id": "", "text": "x"}) + "\n")
    with pytest.raises(IngestError, match="non-empty"):
        list(iter_items(str(nojson), 8))


def test_killed_mid_run_then_resumed_loses_nothing_and_stores_nothing_twice(bundle, tmp_path):
    ids, texts = _items(60)
    items = _write(tmp_path / "items.tsv", "tsv", ids, texts)
    index = str(tmp_path / "index")
    cmd = [
        sys.executable, "-m", "irene.cli", "ingest", items, "--bundle", bundle,
        "--index", index, "--n-owners", "2", "--set", "ingest.batch_size=8",
    ]  # fmt: skip
    # the same command, SIGKILLed right after its 3rd batch write (tests/faults.py)
    faulty = kill_after_writes_command(3, cmd[2], cmd[3:])
    run = {"cwd": FAULTS_CWD, "capture_output": True, "text": True, "timeout": 300}
    first = subprocess.run(faulty, **run)
    assert first.returncode == -9, first.stderr[-2000:]  # SIGKILLed after 3 batches
    assert "fault injection: SIGKILL after 3 written batches" in first.stderr
    second = subprocess.run(cmd, **run)
    assert second.returncode == 0, second.stderr[-2000:]
    rep = json.loads(second.stdout[second.stdout.index("{") :])
    assert rep["skipped"] == 24 and rep["written"] == 36 and rep["index_count"] == 60
    cfg = _cfg(bundle, items, index)
    ix = open_local_index(cfg.ingest.index, 32)
    try:
        integ = ix.stats()["integrity"]
        assert integ["ids"] == integ["labels"] == integ["stored"] - integ["tombstones"] == 60
        np.testing.assert_allclose(np.stack(ix.get_many(ids)), _expected(bundle, texts), atol=1e-5)
    finally:
        ix.close()


def test_byte_ranges_cover_every_line_exactly_once(tmp_path):
    from irene.ingest import byte_ranges, read_lines

    rng = np.random.default_rng(0)
    lines = [f"id-{i}\t{'é' * int(rng.integers(0, 40))}x\n" for i in range(3000)]  # multi-byte
    path = tmp_path / "items.tsv"
    path.write_text("".join(lines))
    for parts in (1, 3, 7, 64):
        ranges = byte_ranges([str(path)], parts, max_bytes=1 << 13)
        got = [ln for r in ranges for ln in read_lines(r["path"], r["start"], r["end"])]
        assert got == lines, parts
    assert len(byte_ranges([str(path)], 64, max_bytes=1 << 13)) > 1

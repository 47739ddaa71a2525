from __future__ import annotations

import hashlib
import json
import pickle
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from irene.data import catalogue as C
from irene.data.catalogue import (
    DataError,
    find_table,
    read_catalogue,
    read_interactions,
    split_queries,
    write_table,
)
from tests.conftest import MOTO_BUCKET


def _write(path, data) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _jsonl(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


ITEMS = pa.table(
    {
        "id": ["a1", "a2", "a3"],
        "text": ["red shoe", "blue shirt", "green hat"],
        "brand": ["acme", None, "zeta"],
        "size": [9, 10, None],
        "price": [9.5, None, 3.0],
        "sale": [True, False, None],
        "tags": [["shoe", "red"], [], None],
    }
)
ITEMS_META = [
    {"brand": "acme", "size": 9, "price": 9.5, "sale": True, "tags": ["shoe", "red"]},
    {"size": 10, "sale": False, "tags": []},
    {"brand": "zeta", "price": 3.0},
]


@pytest.fixture
def cat(tmp_path):
    return read_catalogue(_write(tmp_path / "items.csv", "id,text\na1,red shoe\na2,blue\na3,hat\n"))


# ----------------------------------------------------------------------------------------------
# catalogue: formats


@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_catalogue_round_trip_with_metadata(tmp_path, ext):
    path = str(tmp_path / f"items.{ext}")
    write_table(path, ITEMS)
    c = read_catalogue(path)
    assert c.ids == ["a1", "a2", "a3"]
    assert c.texts == ["red shoe", "blue shirt", "green hat"]
    assert c.metadata == ITEMS_META
    assert c.uri == path and len(c) == 3
    assert c.fingerprint == hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_csv_ids_are_strings_and_metadata_typed_per_column(tmp_path):
    path = _write(
        tmp_path / "items.csv",
        "id,text,size,price,sale,brand,code\n"
        '007,"red, shoe",9,9.5,true,acme,007\n'
        '12,"two\nlines",,3,False,,12\n',
    )
    c = read_catalogue(path)
    assert c.ids == ["007", "12"]
    assert c.texts == ["red, shoe", "two\nlines"]
    assert c.metadata == [
        {"size": 9, "price": 9.5, "sale": True, "brand": "acme", "code": "007"},
        {"price": 3.0, "sale": False, "code": "12"},  # "007" keeps code a keyword column
    ]
    assert isinstance(c.metadata[1]["price"], float)


def test_integer_ids_and_other_column_names(tmp_path):
    write_table(str(tmp_path / "i.parquet"), pa.table({"sku": [5, 6], "title": ["x", "y"]}))
    c = read_catalogue(str(tmp_path / "i.parquet"), id_column="sku", text_column="title")
    assert c.ids == ["5", "6"] and c.metadata == [{}, {}]
    c = read_catalogue(_write(tmp_path / "i.jsonl", _jsonl({"id": 5, "text": "x"})))
    assert c.ids == ["5"]


def test_nan_is_missing_and_dictionary_strings_are_keywords(tmp_path):
    table = pa.table(
        {
            "id": ["a", "b"],
            "text": ["x", "y"],
            "score": [float("nan"), 1.5],
            "colour": pa.array(["red", None]).dictionary_encode(),
        }
    )
    write_table(str(tmp_path / "i.parquet"), table)
    assert read_catalogue(str(tmp_path / "i.parquet")).metadata == [
        {"colour": "red"},
        {"score": 1.5},
    ]


def test_directory_of_parts(tmp_path):
    d = tmp_path / "items"
    d.mkdir()
    write_table(str(d / "part-0.parquet"), ITEMS.slice(0, 2))
    write_table(str(d / "part-1.parquet"), ITEMS.slice(2))
    (d / "_SUCCESS").write_text("")
    c = read_catalogue(str(d))
    assert c.ids == ["a1", "a2", "a3"] and c.metadata == ITEMS_META
    digests = [hashlib.sha256((d / f"part-{k}.parquet").read_bytes()).hexdigest() for k in (0, 1)]
    expect = f"part-0.parquet\t{digests[0]}\npart-1.parquet\t{digests[1]}\n"
    assert c.fingerprint == hashlib.sha256(expect.encode()).hexdigest()
    write_table(str(d / "part-2.parquet"), ITEMS.slice(1, 1))
    with pytest.raises(DataError) as e:
        read_catalogue(str(d))
    assert e.value.file.endswith("part-2.parquet") and e.value.row == 1
    assert "duplicate id 'a2' (also at row 2 of " in str(e.value)
    assert "part-0.parquet" in str(e.value)


def test_metadata_type_must_agree_across_parts(tmp_path):
    d = tmp_path / "items"
    d.mkdir()
    _write(d / "a.jsonl", _jsonl({"id": "a", "text": "x", "year": 2020, "n": 1}))
    _write(d / "b.jsonl", _jsonl({"id": "b", "text": "y", "year": "new", "n": 2.5}))
    with pytest.raises(DataError) as e:
        read_catalogue(str(d))
    assert (e.value.file, e.value.row, e.value.column) == (str(d / "b.jsonl"), 1, "year")
    assert "string value, but integer values before (row 1 of " in str(e.value)
    _write(d / "b.jsonl", _jsonl({"id": "b", "text": "y", "year": 2021, "n": 2.5}))
    assert read_catalogue(str(d)).metadata == [{"year": 2020, "n": 1.0}, {"year": 2021, "n": 2.5}]


def test_errors_name_the_row_in_later_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "CHUNK_BYTES", 512)
    monkeypatch.setattr(C, "BATCH_ROWS", 100)
    rows = [{"id": f"i{k}", "text": f"text {k}"} for k in range(3000)]
    rows[2345]["text"] = " "
    _write(tmp_path / "a.csv", "id,text\n" + "".join(f"{r['id']},{r['text']}\n" for r in rows))
    _write(tmp_path / "a.jsonl", _jsonl(*rows))
    write_table(str(tmp_path / "a.parquet"), pa.Table.from_pylist(rows))
    for ext in ("csv", "jsonl", "parquet"):
        with pytest.raises(DataError) as e:
            read_catalogue(str(tmp_path / f"a.{ext}"))
        assert (e.value.row, e.value.column, e.value.message) == (2346, "text", "empty text")
    rows[2345]["text"] = "ok"
    rows[2900]["id"] = "i7"
    _write(tmp_path / "b.jsonl", _jsonl(*rows))
    with pytest.raises(
        DataError, match=r"b\.jsonl, row 2901, column 'id': duplicate id 'i7' \(also at row 8\)"
    ):
        read_catalogue(str(tmp_path / "b.jsonl"))
    # a type error far into a JSONL file, and blank lines: the row is the line number
    text = _jsonl(*rows[:10]) + "\n\n" + _jsonl({"id": "z", "text": 5})
    with pytest.raises(DataError) as e:
        read_catalogue(_write(tmp_path / "c.jsonl", text))
    assert (e.value.row, e.value.column) == (13, "text")


# ----------------------------------------------------------------------------------------------
# catalogue: every error names file, row and column

BAD_CATALOGUES = [
    # (file name, content, row, column, message part)
    ("i.csv", "sku,text\na,x\n", None, "id", "missing column (columns found: 'sku', 'text')"),
    ("i.csv", "id,text\na,x\nb,y\na,z\n", 3, "id", "duplicate id 'a' (also at row 1)"),
    ("i.csv", "id,text\na,x\nb,\n", 2, "text", "empty text"),
    ("i.csv", 'id,text\na,x\n"",y\n', 2, "id", "empty id"),
    ("i.jsonl", _jsonl({"id": "a", "text": "x"}, {"id": " ", "text": "y"}), 2, "id", "empty id"),
    ("i.jsonl", _jsonl({"id": "a", "text": "x"}, {"text": "y"}), 2, "id", "empty id"),
    ("i.jsonl", _jsonl({"text": "y"}), None, "id", "missing column"),
    (
        "i.jsonl",
        _jsonl({"id": "a", "text": 7}),
        1,
        "text",
        "wrong type: integer, expected a string",
    ),
    ("i.jsonl", _jsonl({"id": 1.5, "text": "x"}), 1, "id", "wrong type: number"),
    (
        "i.jsonl",
        _jsonl({"id": "a", "text": "x", "m": {"k": 1}}),
        1,
        "m",
        "wrong type: nested object",
    ),
    ("i.jsonl", _jsonl({"id": "a", "text": "x", "m": [1, 2]}), 1, "m", "list of integers"),
    ("i.jsonl", _jsonl({"id": "a", "text": "x", "m": ["k", None]}), 1, "m", "null inside a list"),
    (
        "i.jsonl",
        _jsonl({"id": "a", "text": "x", "m": 1}, {"id": "b", "text": "y", "m": "k"}),
        2,
        "m",
        "mixed value types: number in earlier rows, string here",
    ),
    ("i.csv", b"id,text\na,x\nb,caf\xe9\n", 2, "text", "invalid UTF-8 byte 0xe9"),
    (
        "i.jsonl",
        b'{"id": "a", "text": "x"}\n{"id": "b", "text": "caf\xe9"}\n',
        2,
        "text",
        "invalid UTF-8",
    ),
    ("i.csv", b"id,t\xe9xt\na,x\n", None, None, "header line is not valid UTF-8"),
    ("i.csv", 'id,text\na,"x"\nb,"cut mid', 2, None, "the file ends inside quotes"),
    ("i.csv", "id,text\na,x\nb,y,z\n", 2, None, "expected 2 columns, got 3: b,y,z"),
    ("i.csv", "id,text\na,x\nb\n", 2, None, "expected 2 columns, got 1"),
    ("i.csv", "id,text,id\na,x,b\n", None, "id", "column appears twice"),
    ("i.jsonl", _jsonl({"id": "a", "text": "x"}) + '{"id": "b", "te', 2, None, "file cut?"),
    ("i.jsonl", _jsonl({"id": "a", "text": "x"}) + '["b", "y"]\n', 2, None, "one JSON object"),
    ("i.jsonl", '{"id": "a", "text": "x", "id": "b"}\n', 1, "id", "appears twice"),
    ("i.csv", "", None, None, "empty file (0 bytes)"),
    ("i.jsonl", "", None, None, "empty file (0 bytes)"),
    ("i.parquet", b"", None, None, "empty file (0 bytes)"),
    ("i.csv", "id,text\n", None, None, "no data rows"),
    ("i.jsonl", "\n\n", None, None, "no data rows"),
    ("i.json", "[]", None, None, "unknown extension '.json'"),
    ("i.tsv", "id\ttext\n", None, None, "unknown extension '.tsv'"),
    ("i.csv.gz", b"\x1f\x8b", None, None, "compressed files are not read"),
]


@pytest.mark.parametrize("name,content,row,column,message", BAD_CATALOGUES)
def test_bad_catalogue(tmp_path, name, content, row, column, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError) as e:
        read_catalogue(path)
    assert (e.value.file, e.value.row, e.value.column) == (path, row, column)
    assert message in e.value.message
    assert str(e.value).startswith(path)
    if row is not None:
        assert f", row {row}" in str(e.value)
    if column is not None:
        assert f", column {column!r}" in str(e.value)


def test_parquet_cut_and_non_utf8(tmp_path):
    data = _parquet_bytes(ITEMS)
    path = _write(tmp_path / "i.parquet", data[: len(data) // 2])
    with pytest.raises(DataError, match=r"i\.parquet: not a readable Parquet file \(truncated\?\)"):
        read_catalogue(path)
    texts = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())
    path = _write(
        tmp_path / "u.parquet", _parquet_bytes(pa.table({"id": ["a", "b"], "text": texts}))
    )
    with pytest.raises(DataError) as e:
        read_catalogue(path)
    assert (e.value.row, e.value.column, e.value.message) == (2, "text", "invalid UTF-8 byte 0xe9")


def test_missing_file_and_empty_directory(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.csv: file not found"):
        read_catalogue(str(tmp_path / "nowhere.csv"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "_SUCCESS").write_text("")
    with pytest.raises(DataError, match="directory holds no .parquet, .csv or .jsonl files"):
        read_catalogue(str(tmp_path / "d"))


def test_data_error_pickles():
    e = pickle.loads(pickle.dumps(DataError("f.csv", 3, "id", "empty id")))
    assert (e.file, e.row, e.column, e.message) == ("f.csv", 3, "id", "empty id")
    assert str(e) == "f.csv, row 3, column 'id': empty id"


# ----------------------------------------------------------------------------------------------
# interactions


def test_interactions_sum_weights_first_seen_order(tmp_path, cat):
    path = _write(
        tmp_path / "clicks.csv",
        "query,item_id,weight,when\nhat,a3,2,mon\nshoes,a1,,tue\nhat,a3,0.5,wed\nhat,a2,1,thu\n",
    )
    inter = read_interactions(path, cat)
    assert inter.queries == ["hat", "shoes"]
    assert inter.Y.dtype == np.float32 and inter.Y.shape == (2, 3)
    np.testing.assert_array_equal(inter.Y.toarray(), [[0, 1, 2.5], [1, 0, 0]])
    assert (inter.n_rows, inter.n_dropped, inter.uri) == (4, 0, path)
    assert inter.fingerprint == hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_interactions_jsonl_parquet_and_integer_item_ids(tmp_path):
    cat = read_catalogue(_write(tmp_path / "items.csv", "id,text\n1,one\n2,two\n"))
    rows = [{"query": "q", "item_id": 2, "weight": 3}, {"query": "r", "item_id": 1}]
    a = read_interactions(_write(tmp_path / "c.jsonl", _jsonl(*rows)), cat)
    write_table(str(tmp_path / "c.parquet"), pa.Table.from_pylist(rows))
    b = read_interactions(str(tmp_path / "c.parquet"), cat)
    for inter in (a, b):
        assert inter.queries == ["q", "r"]
        np.testing.assert_array_equal(inter.Y.toarray(), [[0, 3], [1, 0]])


def test_interactions_through_a_queries_table(tmp_path, cat):
    queries = _write(
        tmp_path / "queries.jsonl",
        _jsonl(
            {"query_id": 1, "text": "red shoes"},
            {"query_id": 2, "text": "hats"},
            {"query_id": 3, "text": "unused"},
        ),
    )
    path = _write(tmp_path / "clicks.csv", "query_id,item_id\n2,a3\n1,a1\n2,a2\n")
    inter = read_interactions(path, cat, queries_uri=queries)
    assert inter.queries == ["hats", "red shoes"]
    np.testing.assert_array_equal(inter.Y.toarray(), [[0, 1, 1], [1, 0, 0]])
    alone = read_interactions(_write(tmp_path / "q.csv", "query,item_id\nhats,a3\n"), cat)
    assert inter.fingerprint != alone.fingerprint


def test_unknown_items_error_or_drop(tmp_path, cat):
    lines = ["query,item_id", "q,a1"] + [f"q{k},zz{k}" for k in range(7)] + ["r,a2"]
    path = _write(tmp_path / "clicks.csv", "\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        read_interactions(path, cat)
    assert (e.value.row, e.value.column) == (2, "item_id")
    msg = e.value.message
    assert msg.startswith("7 row(s) name items not in the catalogue")
    assert "row 2 'zz0'" in msg and "row 6 'zz4'" in msg and "zz5" not in msg  # 5 examples
    assert "drop_unknown" in msg
    inter = read_interactions(path, cat, drop_unknown=True)
    assert (inter.n_rows, inter.n_dropped, inter.queries) == (9, 7, ["q", "r"])
    only_unknown = _write(tmp_path / "u.csv", "query,item_id\nq,zz\n")
    with pytest.raises(DataError, match="all 1 rows name items not in the catalogue"):
        read_interactions(only_unknown, cat, drop_unknown=True)


BAD_INTERACTIONS = [
    # (file name, content, queries content or None, row, column, message part)
    ("c.csv", "query,item\nq,a1\n", None, None, "item_id", "missing column"),
    ("c.csv", "item_id\na1\n", None, None, "query", "missing column"),
    ("c.csv", "query,item_id,weight\nq,a1,2\nq,a2,abc\n", None, 2, "weight", "not a number: 'abc'"),
    ("c.csv", "query,item_id,weight\nq,a1,-1\n", None, 1, "weight", "positive number, got -1"),
    ("c.jsonl", _jsonl({"query": "q", "item_id": "a1", "weight": 0}), None, 1, "weight", "got 0"),
    (
        "c.jsonl",
        _jsonl({"query": "q", "item_id": "a1", "weight": "2"}),
        None,
        1,
        "weight",
        "wrong type: expected a number, got string",
    ),
    ("c.csv", "query,item_id\nq,a1\n ,a2\n", None, 2, "query", "empty query"),
    ("c.csv", "query,item_id\nq,\n", None, 1, "item_id", "empty item_id"),
    ("c.csv", "query,query_id,item_id\nq,1,a1\n", None, None, None, "both 'query' and 'query_id'"),
    ("c.csv", "query_id,item_id\n1,a1\n", None, None, "query_id", "need a queries table"),
    ("c.csv", "query,item_id\nq,a1\n", "query_id,text\n1,q\n", None, "query", "use query_id"),
    (
        "c.csv",
        "query_id,item_id\n1,a1\n2,a2\n",
        "query_id,text\n1,q\n",
        2,
        "query_id",
        "1 row(s) name query ids not in the queries table",
    ),
    ("c.csv", "query,item_id\n", None, None, None, "no data rows"),
]


@pytest.mark.parametrize("name,content,queries,row,column,message", BAD_INTERACTIONS)
def test_bad_interactions(tmp_path, cat, name, content, queries, row, column, message):
    path = _write(tmp_path / name, content)
    q = _write(tmp_path / "queries.csv", queries) if queries else None
    with pytest.raises(DataError) as e:
        read_interactions(path, cat, queries_uri=q)
    assert (e.value.file, e.value.row, e.value.column) == (path, row, column)
    assert message in e.value.message


def test_bad_queries_table(tmp_path, cat):
    path = _write(tmp_path / "c.csv", "query_id,item_id\n1,a1\n")
    q = _write(tmp_path / "q.csv", "query_id,text\n1,a\n2,b\n1,c\n")
    with pytest.raises(DataError) as e:
        read_interactions(path, cat, queries_uri=q)
    assert (e.value.file, e.value.row, e.value.column) == (q, 3, "query_id")
    assert "duplicate query_id '1' (also at row 1)" in e.value.message
    q = _write(tmp_path / "q.csv", "query_id,text\n1,\n")
    with pytest.raises(DataError, match=r"q\.csv, row 1, column 'text': empty query text"):
        read_interactions(path, cat, queries_uri=q)


def test_split_queries(tmp_path, cat):
    rows = "".join(f"q{k},a{1 + k % 3}\n" for k in range(20))
    inter = read_interactions(_write(tmp_path / "c.csv", "query,item_id\n" + rows), cat)
    train, ev = split_queries(inter, 0.25, seed=3)
    assert len(ev.queries) == 5 and len(train.queries) == 15
    assert sorted(train.queries + ev.queries) == sorted(inter.queries)
    assert train.queries == [q for q in inter.queries if q in set(train.queries)]  # order kept
    for part in (train, ev):
        for i, q in enumerate(part.queries):
            j = inter.queries.index(q)
            assert (part.Y[i] != inter.Y[j]).nnz == 0
    again, _ = split_queries(inter, 0.25, seed=3)
    assert again.queries == train.queries
    assert split_queries(inter, 0.25, seed=4)[1].queries != ev.queries
    with pytest.raises(ValueError, match="eval_fraction"):
        split_queries(inter, 1.0, seed=0)
    with pytest.raises(ValueError, match="leaves a part empty"):
        split_queries(inter, 0.01, seed=0)


# ----------------------------------------------------------------------------------------------
# find_table, write_table, S3


def test_find_table(tmp_path):
    assert find_table(str(tmp_path), "catalogue") is None
    write_table(str(tmp_path / "catalogue.csv"), ITEMS.select(["id", "text"]))
    assert find_table(str(tmp_path), "catalogue") == str(tmp_path / "catalogue.csv")
    write_table(str(tmp_path / "catalogue.jsonl"), ITEMS)
    with pytest.raises(
        DataError, match=r"several tables named 'catalogue' \(catalogue\.csv, catalogue\.jsonl\)"
    ):
        find_table(str(tmp_path), "catalogue")


def test_write_table_formats(tmp_path):
    with pytest.raises(ValueError, match="CSV cannot hold list"):
        write_table(str(tmp_path / "i.csv"), ITEMS)
    with pytest.raises(DataError, match="unknown extension '.txt'"):
        write_table(str(tmp_path / "i.txt"), ITEMS)
    write_table(str(tmp_path / "i.csv"), ITEMS.drop_columns(["tags"]))
    c = read_catalogue(str(tmp_path / "i.csv"))
    assert c.metadata == [{k: v for k, v in m.items() if k != "tags"} for m in ITEMS_META]


def test_s3_round_trip(moto_s3, tmp_path):
    prefix = f"s3://{MOTO_BUCKET}/catalogue-{uuid.uuid4().hex[:8]}"
    write_table(f"{prefix}/catalogue.parquet", ITEMS)
    clicks = pa.table({"query": ["shoes", "hat", "shoes"], "item_id": ["a1", "a3", "a1"]})
    write_table(f"{prefix}/interactions.jsonl", clicks)
    write_table(str(tmp_path / "catalogue.parquet"), ITEMS)
    assert find_table(prefix, "catalogue") == f"{prefix}/catalogue.parquet"
    assert find_table(prefix, "queries") is None
    c = read_catalogue(find_table(prefix, "catalogue"))
    local = read_catalogue(str(tmp_path / "catalogue.parquet"))
    assert (c.ids, c.texts, c.metadata) == (local.ids, local.texts, local.metadata)
    assert c.fingerprint == local.fingerprint and c.uri == f"{prefix}/catalogue.parquet"
    inter = read_interactions(f"{prefix}/interactions.jsonl", c)
    assert inter.queries == ["shoes", "hat"]
    np.testing.assert_array_equal(inter.Y.toarray(), [[2, 0, 0], [0, 0, 1]])
    # a directory of parts and errors name the s3:// file
    write_table(f"{prefix}/parts/p0.csv", ITEMS.select(["id", "text"]).slice(0, 2))
    write_table(f"{prefix}/parts/p1.csv", ITEMS.select(["id", "text"]).slice(1))
    with pytest.raises(DataError) as e:
        read_catalogue(f"{prefix}/parts")
    assert (e.value.file, e.value.row, e.value.column) == (f"{prefix}/parts/p1.csv", 1, "id")
    with pytest.raises(DataError, match=f"{prefix}/missing.csv: file not found"):
        read_catalogue(f"{prefix}/missing.csv")

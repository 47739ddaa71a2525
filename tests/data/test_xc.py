from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import scipy.sparse as sp

from irene.data.xc import (
    XCDataset,
    XCFormatError,
    read_filter,
    read_label_matrix,
    read_xc,
    write_label_matrix,
    write_xc,
)


def _csr(rows: list[list[int]], n_labels: int, values: list[list[float]] | None = None):
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = [i for r in rows for i in r]
    data = [v for r in values for v in r] if values else [1.0] * len(indices)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_labels), dtype=np.float32)


def _tiny() -> XCDataset:
    return XCDataset(
        trn_X=["first query", "zweite Anfrage ü", "", "emoji 🚀 and tab\there"],
        tst_X=["test one", "test two \u2028 with a line separator"],
        Y=["label zero", "label one", "", "label three"],
        trn_X_Y=_csr([[0, 1], [3], [], [1]], 4, [[1.0, 0.5], [2.0], [], [0.25]]),
        tst_X_Y=_csr([[2], []], 4),
        filter_test=np.array([[0, 1]]),
        name="tiny",
    )


def _write_dir(d, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_bytes(text.encode("utf-8"))


def _valid_files() -> dict[str, str]:
    return {
        "trn_X.txt": "a\nb\nc\n",
        "tst_X.txt": "x\ny\n",
        "Y.txt": "l0\nl1\nl2\n",
        "trn_X_Y.txt": "3 3\n0:1\n1:1 2:1\n\n",
        "tst_X_Y.txt": "2 3\n2:1\n0:1.5\n",
    }


def _assert_same(a: XCDataset, b: XCDataset) -> None:
    assert a.trn_X == b.trn_X and a.tst_X == b.tst_X and a.Y == b.Y
    for m in ("trn_X_Y", "tst_X_Y"):
        x, y = getattr(a, m), getattr(b, m)
        assert x.shape == y.shape
        np.testing.assert_array_equal(x.indptr, y.indptr)
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.data, y.data)
    for f in ("filter_train", "filter_test"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)


def test_roundtrip_local(tmp_path):
    ds = _tiny()
    write_xc(ds, tmp_path / "tiny")
    back = read_xc(tmp_path / "tiny")
    _assert_same(ds, back)
    assert back.name == "tiny"
    assert back.filter_train is None
    assert back.filter_test.dtype == np.int64 and back.filter_test.shape == (1, 2)
    assert back.trn_X_Y.dtype == np.float32 and back.trn_X_Y.has_canonical_format
    assert read_xc(tmp_path / "tiny", name="other").name == "other"


def test_written_format_is_plain_xc(tmp_path):
    write_xc(_tiny(), tmp_path)
    assert (tmp_path / "trn_X_Y.txt").read_text() == "4 4\n0:1.0 1:0.5\n3:2.0\n\n1:0.25\n"
    assert (tmp_path / "tst_X_Y.txt").read_text() == "2 4\n2:1.0\n\n"
    assert (tmp_path / "filter_labels_test.txt").read_text() == "0 1\n"
    assert not (tmp_path / "filter_labels_train.txt").exists()
    assert (tmp_path / "Y.txt").read_text() == "label zero\nlabel one\n\nlabel three\n"


def test_write_removes_stale_filter(tmp_path):
    ds = _tiny()
    ds.filter_train = np.array([[1, 3]])
    write_xc(ds, tmp_path)
    assert read_xc(tmp_path).filter_train.tolist() == [[1, 3]]
    ds.filter_train = None
    write_xc(ds, tmp_path)
    assert read_xc(tmp_path).filter_train is None


def test_read_crlf_unsorted_and_extra_spaces(tmp_path):
    files = _valid_files()
    files["trn_X.txt"] = "a\r\nb  with spaces \r\nc"  # no final newline
    files["trn_X_Y.txt"] = "3 3\r\n2:1  0:1\r\n1:1\r\n\r\n"
    _write_dir(tmp_path, files)
    ds = read_xc(tmp_path)
    assert ds.trn_X == ["a", "b  with spaces ", "c"]
    assert ds.trn_X_Y.toarray().tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert ds.trn_X_Y.has_sorted_indices
    assert ds.tst_X_Y[1, 0] == pytest.approx(1.5)


def test_text_with_newline_cannot_be_written(tmp_path):
    ds = _tiny()
    ds.Y[1] = "two\nlines"
    with pytest.raises(ValueError, match="newline"):
        write_xc(ds, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_dataset_validates_shapes():
    with pytest.raises(ValueError, match="shape"):
        XCDataset(["a"], [], ["l0", "l1"], _csr([[0]], 3), _csr([], 2))
    with pytest.raises(ValueError, match="out of range"):
        XCDataset(["a"], [], ["l0"], _csr([[0]], 1), _csr([], 1), filter_train=[[1, 0]])


def test_dataset_canonicalises_matrices():
    Y = sp.csr_matrix(
        (np.array([1.0, 1.0, 2.0]), np.array([2, 0, 2]), np.array([0, 3])), shape=(1, 3)
    )
    ds = XCDataset(["a"], [], ["x", "y", "z"], Y, _csr([], 3))
    assert ds.trn_X_Y.dtype == np.float32
    assert ds.trn_X_Y.indices.tolist() == [0, 2]
    assert ds.trn_X_Y.data.tolist() == [1.0, 3.0]


def test_stats():
    s = _tiny().stats()
    assert s["n_train"] == 4 and s["n_test"] == 2 and s["n_labels"] == 4
    assert s["avg_labels_per_query_train"] == pytest.approx(4 / 4)
    assert s["avg_labels_per_query_test"] == pytest.approx(1 / 2)
    assert s["avg_queries_per_label_train"] == pytest.approx(4 / 4)
    assert s["n_labels_without_train_queries"] == 1  # label 2
    assert s["avg_label_chars"] == pytest.approx((10 + 9 + 0 + 11) / 4)
    assert s["n_filter_test"] == 1 and s["n_filter_train"] == 0


@pytest.mark.parametrize(
    "content, line, message",
    [
        ("", 1, "header"),
        ("3\n", 1, "header"),
        ("3 x\n", 1, "header"),
        ("-3 3\n", 1, "header"),
        ("3 3 1\n", 1, "header"),
        ("2 3\n0:1\n1:1\n\n", 1, "3 lines"),  # N != lines of trn_X.txt
        ("3 4\n0:1\n1:1\n\n", 1, "labels"),  # L != len(Y.txt)
        ("3 3\n0:1\n1:1\n", 4, "ends after 2 rows"),
        ("3 3\n0:1\n1:1\n\n\n", 5, "extra line"),
        ("3 3\n0:1\n3:x\n\n", 3, "bad token"),
        ("3 3\n0:1\nabc\n\n", 3, "bad token"),
        ("3 3\n0:1\n3\n\n", 3, "bad token"),
        ("3 3\n0:1\n:1\n\n", 3, "bad token"),
        ("3 3\n0:1\n1:\n\n", 3, "bad token"),
        ("3 3\n0:1\n1:nan\n\n", 3, "non-finite"),
        ("3 3\n0:1\n\n1:1 3:1\n", 4, "out of range"),
        ("3 3\n0:1\n\n-1:1\n", 4, "out of range"),
        ("3 3\n0:1\n2:1 1:1 2:0.5\n\n", 3, "duplicate label 2"),
    ],
)
def test_label_matrix_errors_name_file_and_line(tmp_path, content, line, message):
    files = _valid_files()
    files["trn_X_Y.txt"] = content
    _write_dir(tmp_path, files)
    with pytest.raises(XCFormatError, match=message) as err:
        read_xc(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'trn_X_Y.txt'}:{line}: ")
    assert err.value.line == line


@pytest.mark.parametrize(
    "content, line, message",
    [
        ("0 1\n2\n", 2, "malformed"),
        ("0 1\n1 1 1\n", 2, "malformed"),
        ("0 1\nx 1\n", 2, "malformed"),
        ("0 1\n\n", 2, "malformed"),
        ("2 0\n", 1, "query index 2"),
        ("0 3\n", 1, "label index 3"),
        ("1 -1\n", 1, "label index -1"),
    ],
)
def test_filter_errors(tmp_path, content, line, message):
    files = _valid_files()
    files["filter_labels_test.txt"] = content
    _write_dir(tmp_path, files)
    with pytest.raises(XCFormatError, match=message) as err:
        read_xc(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'filter_labels_test.txt'}:{line}: ")


def test_read_filter(tmp_path):
    (tmp_path / "f.txt").write_text("0 2\n1 0\r\n")
    F = read_filter(tmp_path / "f.txt", n_rows=2, n_labels=3)
    assert F.dtype == np.int64 and F.tolist() == [[0, 2], [1, 0]]
    (tmp_path / "empty.txt").write_text("")
    assert read_filter(tmp_path / "empty.txt", 2, 3).shape == (0, 2)


def test_invalid_utf8_names_line(tmp_path):
    files = _valid_files()
    _write_dir(tmp_path, files)
    (tmp_path / "tst_X.txt").write_bytes(b"ok\n\xff\xfe bad\n")
    with pytest.raises(XCFormatError, match="UTF-8") as err:
        read_xc(tmp_path)
    assert err.value.line == 2 and err.value.file.endswith("tst_X.txt")


def test_missing_file(tmp_path):
    files = _valid_files()
    del files["Y.txt"]
    _write_dir(tmp_path, files)
    with pytest.raises(FileNotFoundError, match="Y.txt"):
        read_xc(tmp_path)


def test_label_matrix_standalone(tmp_path):
    Y = _csr([[4, 1], [], [0]], 5, [[0.1, 3.0], [], [1e-8]])
    write_label_matrix(tmp_path / "m.txt", Y)
    back = read_label_matrix(tmp_path / "m.txt")
    assert back.shape == (3, 5)
    np.testing.assert_array_equal(back.toarray(), Y.toarray())
    with pytest.raises(XCFormatError, match="4 lines"):
        read_label_matrix(tmp_path / "m.txt", n_rows=4)


def test_read_is_fast(tmp_path):
    n, L = 60_000, 20_000
    rng = np.random.default_rng(0)
    Y = sp.random(n, L, density=6 / L, format="csr", random_state=rng, dtype=np.float32)
    Y.data[:] = 1.0
    ds = XCDataset(
        [f"query number {i}" for i in range(n)],
        [f"test {i}" for i in range(1000)],
        [f"label {i}" for i in range(L)],
        Y,
        Y[:1000],
    )
    write_xc(ds, tmp_path)
    t0 = time.perf_counter()
    back = read_xc(tmp_path)
    elapsed = time.perf_counter() - t0
    assert back.trn_X_Y.nnz == Y.nnz
    assert elapsed < 2.0, f"reading 60k lines took {elapsed:.2f}s"


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch):
    import boto3

    monkeypatch.setenv("IRENE_S3_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"xc-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return f"s3://{bucket}"


def test_roundtrip_s3(s3_bucket):
    ds = _tiny()
    write_xc(ds, f"{s3_bucket}/datasets/tiny")
    back = read_xc(f"{s3_bucket}/datasets/tiny/")
    _assert_same(ds, back)
    assert back.name == "tiny"

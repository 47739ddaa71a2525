"""The shard router: an index over 4 owners answers exactly like one index holding everything."""

from __future__ import annotations

import faiss  # noqa: F401 -- faiss before anything that may pull in torch
import numpy as np
import pytest

from irene.index.actor import IndexActor
from irene.index.router import RoutedIndex, ShardRouter, owner_of, owner_uri
from irene.index.sharded import ShardedIndex, int_id
from tests.helpers import named_search

DIM = 16
FLAT = {"kind": "flat", "use_gpu": False}


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)  # (n, DIM)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _owners(tmp_path, n: int, **kw) -> RoutedIndex:
    return RoutedIndex(
        [
            IndexActor.open(owner_uri(str(tmp_path / "index"), i, n), DIM, 2, FLAT, **kw)
            for i in range(n)
        ]
    )


def test_owner_partition_is_balanced_and_independent_of_the_inner_shards():
    iids = [int_id(f"item-{i}") for i in range(8000)]
    owners = np.array([owner_of(i, 4) for i in iids])
    counts = np.bincount(owners, minlength=4)
    assert counts.min() > 1800  # ~2,000 each
    # within one owner, the inner partition (int_id % 4) still spreads over all 4 shards
    inner = np.bincount([i % 4 for i, o in zip(iids, owners, strict=True) if o == 0], minlength=4)
    assert inner.min() > 400


def test_owner_uri_and_single_owner_layout():
    assert owner_uri("s3://b/idx/", 2, 4) == "s3://b/idx/shard-002-of-004"
    assert owner_uri("/data/idx", 0, 1) == "/data/idx"  # one owner: today's layout


def test_four_owners_answer_like_one_index(tmp_path):
    rng = np.random.default_rng(0)
    x, q = _unit(rng, 400), _unit(rng, 25)
    ids = [f"item-{i}" for i in range(400)]
    one = ShardedIndex(DIM, 2)
    one.add(ids, x)
    shards = _owners(tmp_path, 4)
    seq = shards.add(ids, x)
    assert seq == 1  # one log record per owner
    per_owner = [o.count() for o in shards.owners]
    assert sum(per_owner) == 400 and min(per_owner) > 60
    assert shards.count() == 400
    got, want = named_search(shards, q, 10), named_search(one, q, 10)
    assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want]
    np.testing.assert_allclose([[s for _, s in r] for r in got], [[s for _, s in r] for r in want])
    # per-id answers come back in the caller's order, whichever owner holds each id
    probe = ["item-7", "nope", "item-399", "item-0"]
    assert shards.contains(probe) == [True, False, True, True]
    vecs = shards.get_many(probe)
    assert vecs[1] is None and np.allclose(vecs[2], x[399]) and np.allclose(vecs[3], x[0])
    assert np.allclose(shards.get("item-7"), x[7])
    empty = {"text": "", "metadata": {}, "source": "generated", "version": ""}
    assert shards.get_records(probe) == [empty, None, empty, empty]  # added without records
    assert shards.delete(["item-0", "nope", "item-1"]) == [True, False, True]
    assert shards.count() == 398 and shards.contains(["item-0"]) == [False]
    stats = shards.stats()
    assert stats["n_owners"] == 4 and stats["count"] == 398
    assert stats["integrity"]["ids"] == stats["integrity"]["labels"] == 398
    assert stats["uri"] == str(tmp_path / "index")
    assert shards.snapshot() >= 2
    shards.close()
    # every owner restores its own log: the same index again
    again = _owners(tmp_path, 4)
    assert again.count() == 398
    assert [i for i, _ in named_search(again, q[:1], 5)[0]] == [
        i for i, _ in named_search(one, q[:1], 7)[0] if i not in ("item-0", "item-1")
    ][:5]
    again.close()


def test_seeding_splits_the_bundle_items_over_the_owners(tmp_path):
    from irene.bundle import iter_index_items
    from tests.helpers import make_tiny_bundle

    bundle = make_tiny_bundle(str(tmp_path / "bundle"), n_seen=40)
    chunks = list(iter_index_items(bundle, 7))
    ids = [i for c in chunks for i in c[0]]
    vecs = np.concatenate([c[1] for c in chunks])  # (n, d)
    want = [c[2].row(k) for c in chunks for k in range(len(c[0]))]
    owners = [
        IndexActor.open(owner_uri(str(tmp_path / "idx"), i, 3), vecs.shape[1], 1, FLAT)
        for i in range(3)
    ]
    added = [o.seed(iter_index_items(bundle, 8), i, 3) for i, o in enumerate(owners)]
    assert sum(added) == len(ids) >= 40 and min(added) > 0
    shards = RoutedIndex(owners)
    assert shards.contains(ids) == [True] * len(ids)
    np.testing.assert_allclose(np.stack(shards.get_many(ids)), vecs, atol=1e-6)
    assert shards.get_records(ids) == want  # every item with its record
    assert {r["source"] for r in want} >= {"trained"}
    assert [o.seed(iter_index_items(bundle, 8), i, 3) for i, o in enumerate(owners)] == [0, 0, 0]
    shards.close()


def test_bad_input():
    router = ShardRouter(3)
    with pytest.raises(TypeError):
        router.contains("not-a-list")
    with pytest.raises(ValueError):
        router.add(["x", "y"], np.zeros((1, DIM), np.float32))
    with pytest.raises(ValueError):
        ShardRouter(0)


def test_records_are_split_with_their_ids_and_survive_a_restart(tmp_path):
    from irene.index.records import Records, empty_record

    rng = np.random.default_rng(1)
    ids = [f"item-{i}" for i in range(120)]
    x = _unit(rng, 120)
    recs = Records.of([f"text {i}" for i in ids], [{"i": k} for k in range(120)], "generated", "v7")
    shards = _owners(tmp_path, 4)
    shards.add(ids, x, records=recs)
    shards.add(ids[:3], x[:3])  # overwritten without records
    probe = ["nope", "item-50", "item-1", "item-119"]
    want = [None, recs.row(50), empty_record(), recs.row(119)]
    assert shards.get_records(probe) == want
    owners = [shards.router.owner(i) for i in ids[3:]]
    for o, owner in enumerate(shards.owners):  # each owner holds exactly its own records
        mine = [i for i, w in zip(ids[3:], owners, strict=True) if w == o]
        assert owner.get_records(mine) == [recs.row(ids.index(i)) for i in mine]
    with pytest.raises(ValueError):  # validated before any owner is written
        shards.add(ids[:2], x[:2], Records.of(["one"]))
    shards.snapshot()
    shards.add(["late"], x[:1], Records.of(["late text"], [{"a": ["1", "2"]}], "trained", "v8"))
    shards.close()
    again = _owners(tmp_path, 4)  # snapshots + log replay on every owner
    assert again.get_records(probe) == want
    assert again.get_records(["late"])[0] == {
        "text": "late text", "metadata": {"a": ["1", "2"]}, "source": "trained", "version": "v8"
    }  # fmt: skip
    again.close()

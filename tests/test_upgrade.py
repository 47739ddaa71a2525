"""Model upgrade and rollback in-process: generations, sync rounds, sealing, the alias."""

from __future__ import annotations

import numpy as np
import pytest

from irene.bundle import bundle_version, load_bundle, read_manifest
from irene.config import Config, IndexConfig, IngestConfig
from irene.index.actor import GenerationSealed, IndexActor, actor_settings
from irene.index.generations import generation_config, load_alias
from irene.index.records import Records
from irene.index.router import RoutedIndex
from irene.ingest import ingest_local
from irene.upgrade import GENERATED, Generations, catalogue, rollback, upgrade
from tests.helpers import make_tiny_bundle, tiny_item_text

N_SEEN = 12


def _regenerate(path, cfg, index, bundle):
    run = Config(bundle=bundle, ingest=IngestConfig(items=path, index=cfg, skip_existing=False))
    return ingest_local(run, show_progress=False, index=index)


class Harness:
    """In-process shard owners per generation (what the shard actors are on Ray), and the
    app's writes, made with the serving generation's bundle."""

    def __init__(self, tmp_path, bundles):
        self.bundles = bundles
        self.config = IndexConfig(uri=str(tmp_path / "index"), n_owners=2, n_shards=2)
        self.dim = int(read_manifest(bundles[0])["dim"])
        self.open_ = {}
        self.hook = None  # called once inside the first regeneration (writes "meanwhile")

    def open(self, cfg: IndexConfig) -> RoutedIndex:
        if cfg.uri not in self.open_:
            self.open_[cfg.uri] = RoutedIndex(
                [IndexActor(s) for s in actor_settings(cfg, self.dim)]
            )
        return self.open_[cfg.uri]

    def seed(self, index: RoutedIndex, bundle: str) -> int:
        from irene.bundle import iter_index_items

        n = len(index.owners)
        return sum(o.seed(iter_index_items(bundle), i, n) for i, o in enumerate(index.owners))

    def regenerate(self, path, cfg, index, bundle):
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return _regenerate(path, cfg, index, bundle)

    def gens(self) -> Generations:
        return Generations(self.config, self.open, self.seed, self.regenerate)

    def serving(self) -> tuple[RoutedIndex, str]:
        alias = load_alias(self.config)
        name = "" if alias is None else alias.current
        bundle = self.bundles[0] if alias is None else alias.generations[name].bundle
        return self.open(generation_config(self.config, name)), bundle

    def api_write(self, items: list[tuple[str, str, dict]]) -> None:
        """What POST /v1/items does: encode + generate with the serving bundle, upsert."""
        index, bundle = self.serving()
        b = load_bundle(bundle)
        clf = b.synthesize(b.encoder.encode([t for _, t, _ in items]))
        recs = Records.of(
            [t for _, t, _ in items],
            [m for *_, m in items],
            "generated",
            bundle_version(b.manifest),
        )
        index.upsert([i for i, _, _ in items], clf, recs)

    def close(self):
        for idx in self.open_.values():
            idx.close()


@pytest.fixture
def harness(tmp_path):
    bundles = [make_tiny_bundle(str(tmp_path / f"b{s}"), n_seen=N_SEEN, seed=s) for s in (0, 1)]
    h = Harness(tmp_path, bundles)
    yield h
    h.close()


def _expected(bundle: str, texts: list[str]) -> np.ndarray:
    b = load_bundle(bundle)
    return b.synthesize(b.encoder.encode(texts))


def _vectors(index: RoutedIndex, ids: list[str]) -> np.ndarray:
    return np.stack(index.get_many(ids))


def test_upgrade_regenerates_api_items_catches_late_writes_and_rolls_back(harness):
    b0, b1 = harness.bundles
    v0, v1 = (bundle_version(read_manifest(b)) for b in (b0, b1))
    assert v0 != v1
    old, _ = harness.serving()
    harness.seed(old, b0)
    api = [
        (f"api-{i}", tiny_item_text(100 + i), {"shop": "a" if i % 2 else "b"}) for i in range(10)
    ]
    harness.api_write(api)

    def meanwhile():  # the app keeps writing to the old generation during round 0
        harness.api_write([("late-0", tiny_item_text(300), {"shop": "c"})])
        harness.api_write([("api-1", tiny_item_text(301), {"shop": "z"})])  # an update
        old.delete(["api-2"])

    harness.hook = meanwhile
    report = upgrade(harness.gens(), b1, v1, b0, v0, settle=0)
    alias = load_alias(harness.config)
    assert alias.current == report["upgrade"]["to"] and alias.previous == ""
    new, bundle = harness.serving()
    assert bundle == b1 and report["seeded"] == N_SEEN
    assert [s["name"] for s in report["steps"]][-1] == "final"
    want = {i: (t, m) for i, t, m in api if i != "api-2"}
    want["late-0"] = (tiny_item_text(300), {"shop": "c"})
    want["api-1"] = (tiny_item_text(301), {"shop": "z"})
    got = catalogue(new, GENERATED)
    assert {i: (r["text"], r["metadata"]) for i, r in got.items()} == want
    assert {r["version"] for r in got.values()} == {v1}
    ids = sorted(want)
    np.testing.assert_allclose(
        _vectors(new, ids), _expected(b1, [want[i][0] for i in ids]), atol=1e-5
    )  # regenerated by the new bundle, not copied
    assert int(new.count()) == N_SEEN + len(want)  # the new bundle's trained items + API items
    with pytest.raises(GenerationSealed):  # the old generation refuses writes
        old.upsert(["x"], np.zeros((1, harness.dim), np.float32), None)

    # after the switch the app writes to the new generation; rollback brings them back
    harness.api_write([("after-0", tiny_item_text(400), {})])
    new.delete(["api-3"])
    back = rollback(harness.gens(), settle=0)
    alias = load_alias(harness.config)
    assert alias.current == "" and alias.previous == report["upgrade"]["to"]
    restored, bundle = harness.serving()
    assert restored is old and bundle == b0
    got = catalogue(old, GENERATED)
    want["after-0"] = (tiny_item_text(400), {})
    del want["api-3"]
    assert {i: (r["text"], r["metadata"]) for i, r in got.items()} == want
    assert {r["version"] for r in got.values()} == {v0}
    ids = sorted(want)
    np.testing.assert_allclose(
        _vectors(old, ids), _expected(b0, [want[i][0] for i in ids]), atol=1e-5
    )
    assert back["rollback"] == {"from": report["upgrade"]["to"], "to": ""}
    with pytest.raises(GenerationSealed):
        new.delete(["after-0"])
    harness.api_write([("after-1", tiny_item_text(401), {})])  # the old one takes writes again

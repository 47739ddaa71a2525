from __future__ import annotations

import numpy as np
import pytest

from irene.oracle.base import OracleError, OracleStats, p_yes_from_logprobs
from irene.oracle.cache import CachedOracle, OracleCache, pair_key
from tests.oracle.fakes import KeywordOracle


class FailingOracle:
    identity = "fake-keyword-oracle"

    def __init__(self, values=None) -> None:
        self.stats = OracleStats()
        self.values = values

    def score(self, pairs):
        if self.values is None:
            raise OracleError("backend down")
        return np.asarray(self.values[: len(pairs)], dtype=np.float32)


def test_hit_miss_and_persistence(tmp_path):
    path = str(tmp_path / "sub" / "cache.sqlite")
    inner = KeywordOracle()
    oracle = CachedOracle(inner, OracleCache(path))
    first = oracle.score([("w1 w2", "w1"), ("w3", "w1 w9")])
    assert first.tolist() == [1.0, 0.0]
    assert inner.stats.pairs == 2 and inner.stats.cached_pairs == 0
    second = oracle.score([("w3", "w1 w9"), ("w4", "w4"), ("w1 w2", "w1")])
    assert second.tolist() == [0.0, 1.0, 1.0]
    assert inner.stats.pairs == 3 and inner.stats.cached_pairs == 2  # only ("w4","w4") was new
    # a new process / rerun: a fresh cache object on the same file answers everything
    again = KeywordOracle()
    assert CachedOracle(again, OracleCache(path)).score([("w4", "w4")]).tolist() == [1.0]
    assert again.stats.pairs == 0 and again.stats.cached_pairs == 1


def test_keys_depend_on_model_prompt_and_pair():
    base = pair_key("m|p", "doc", "label")
    assert base != pair_key("m2|p", "doc", "label")
    assert base != pair_key("m|p2", "doc", "label")
    assert base != pair_key("m|p", "doc", "label2")
    assert base == pair_key("m|p", "doc", "label")


def test_failures_are_not_cached(tmp_path):
    cache = OracleCache(str(tmp_path / "c.sqlite"))
    with pytest.raises(OracleError, match="backend down"):
        CachedOracle(FailingOracle(), cache).score([("a", "b")])
    assert len(cache) == 0
    for bad in ([np.nan], [1.5], [-0.1]):
        with pytest.raises(OracleError, match="invalid relevances"):
            CachedOracle(FailingOracle(bad), cache).score([("a", "b")])
    assert len(cache) == 0
    with pytest.raises(ValueError):
        cache.put_many({"k": 2.0})
    assert len(cache) == 0


def test_cache_rejects_remote_paths():
    with pytest.raises(ValueError, match="local file path"):
        OracleCache("s3://bucket/cache.sqlite")


def test_p_yes_from_logprobs():
    assert p_yes_from_logprobs({"Yes": np.log(0.3), "No": np.log(0.1)}) == pytest.approx(0.75)
    pooled = p_yes_from_logprobs({"Yes": np.log(0.2), " yes": np.log(0.2), "No": np.log(0.4)})
    assert pooled == pytest.approx(0.5)
    assert p_yes_from_logprobs({"Maybe": -0.1}) is None

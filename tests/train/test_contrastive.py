"""Contrastive objective: masking, hard negatives, batching, and that hard negatives train."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from irene.config import EncoderConfig
from irene.model.encoder import TextEncoder
from irene.train.contrastive import ContrastiveObjective, collate_text_pairs
from tests.helpers import make_tiny_encoder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = make_tiny_encoder(str(tmp_path_factory.mktemp("enc") / "e"))
    return TextEncoder.from_config(EncoderConfig(model=path, max_length=8))


def _emb(enc, texts):
    t = enc.tokenize(texts)
    return enc(t["input_ids"], t["attention_mask"])


def test_loss_matches_manual_infonce_with_masks_and_hard_negatives(encoder):
    q = ["w1 w2", "w1 w2", "w5"]  # rows 0 and 1 share the anchor
    d = ["w3", "w4", "w3"]  # rows 0 and 2 share the candidate
    negs = [["w7", "w8"], ["w9", ""], ["", ""]]  # row 1 has one hard negative, row 2 none
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    tq, td = encoder.tokenize(q), encoder.tokenize(d)
    tn = encoder.tokenize([t for row in negs for t in row])  # (B*H, T)
    batch = {
        "q_input_ids": tq["input_ids"],
        "q_attention_mask": tq["attention_mask"],
        "d_input_ids": td["input_ids"],
        "d_attention_mask": td["attention_mask"],
        "q_group": torch.tensor([0, 0, 1]),
        "d_group": torch.tensor([0, 1, 0]),
        "n_input_ids": tn["input_ids"].view(3, 2, -1),
        "n_attention_mask": tn["attention_mask"].view(3, 2, -1),
        "n_valid": valid,
        "weight": torch.tensor([1.0, 0.5, 2.0]),
    }
    obj = ContrastiveObjective(encoder, temperature=0.1)
    with torch.no_grad():
        loss = obj(batch)
        qe, de = _emb(encoder, q), _emb(encoder, d)  # (3, dim)
        ne = _emb(encoder, ["w7", "w8", "w9"])  # (3, dim)
        M = -1e4
        logits = torch.tensor(
            [
                # row 0: column 1 shares its anchor, column 2 its candidate -> masked
                [qe[0] @ de[0], M, M, qe[0] @ ne[0], qe[0] @ ne[1]],
                [M, qe[1] @ de[1], qe[1] @ de[2], qe[1] @ ne[2], M],
                [M, qe[2] @ de[1], qe[2] @ de[2], M, M],
            ]
        )
        logits = torch.where(logits == M, logits, logits / 0.1)
        per_row = F.cross_entropy(logits, torch.arange(3), reduction="none")
        manual = (per_row * batch["weight"]).sum() / batch["weight"].sum()
    torch.testing.assert_close(loss, manual, rtol=1e-4, atol=1e-4)


def test_all_padding_hard_negatives_change_nothing(encoder):
    q, d = ["w1", "w2", "w3"], ["w4", "w5", "w6"]
    plain = collate_text_pairs(encoder, q, d)
    padded = collate_text_pairs(encoder, q, d, None, [[], [], []], 3)
    assert not padded["n_valid"].any()
    obj = ContrastiveObjective(encoder)
    with torch.no_grad():
        torch.testing.assert_close(obj(plain), obj(padded))


def test_hard_negatives_are_sampled_up_to_h_per_row(encoder):
    import numpy as np

    q = [f"w{i}" for i in range(6)]
    d = [f"w{i + 10}" for i in range(6)]
    hard = [[f"w{20 + j}" for j in range(i)] for i in range(6)]  # row i has i negatives
    batch = collate_text_pairs(encoder, q, d, None, hard, 3, np.random.default_rng(1))
    assert batch["n_valid"].sum(1).tolist() == [min(i, 3) for i in range(6)]


def test_hard_negatives_separate_confusable_candidates(encoder, tmp_path):
    """Training with hard negatives (through the executor's fit, the ``encoder`` train_func)
    widens the positive-vs-hard-negative margin more than in-batch negatives alone (the hard
    negatives never appear in-batch)."""
    from irene.config import Config
    from irene.executor import LocalExecutor, fit_encoder

    q = [f"w{i} w{i + 1}" for i in range(0, 24, 2)]
    d = [f"w{i + 1} w{i + 2}" for i in range(0, 24, 2)]
    hard = [[f"w{i + 1} w{i + 60}"] for i in range(0, 24, 2)]  # shares a word with the anchor

    def margin(enc):
        with torch.no_grad():
            a, p = _emb(enc, q), _emb(enc, d)
            n = _emb(enc, [h[0] for h in hard])
        return float(((a * p).sum(1) - (a * n).sum(1)).mean())

    ex = LocalExecutor(Config(), show_progress=False)
    params = dict(epochs=6, batch_size=6, lr=3e-3, temperature=0.05, seed=0)
    table = {"anchor": q, "candidate": d, "hard": hard}
    tuned = {}
    for name, h in (("without", 0), ("with_hard", 1)):
        cfg, run = fit_encoder(
            ex, encoder.cfg, table, {**params, "hard_negatives": h}, str(tmp_path / name)
        )
        assert [e["epoch"] for e in run.history] == list(range(6))
        tuned[name] = TextEncoder.from_config(cfg)
    assert margin(tuned["with_hard"]) > margin(tuned["without"]) + 0.05
    assert margin(tuned["with_hard"]) > margin(encoder)

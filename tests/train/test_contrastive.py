"""Contrastive objective: masking, hard negatives, batching, and that hard negatives train."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from irene.config import EncoderConfig
from irene.model.encoder import TextEncoder
from irene.train.contrastive import ContrastiveObjective, TextPairBatches, contrastive_finetune
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
    plain = next(iter(TextPairBatches(encoder, q, d, 3)))
    padded = next(
        iter(TextPairBatches(encoder, q, d, 3, hard_negatives=[[], [], []], num_hard_negatives=3))
    )
    assert not padded["n_valid"].any()
    obj = ContrastiveObjective(encoder)
    with torch.no_grad():
        torch.testing.assert_close(obj(plain), obj(padded))


def test_hard_negatives_are_sampled_up_to_h_per_row(encoder):
    q = [f"w{i}" for i in range(6)]
    d = [f"w{i + 10}" for i in range(6)]
    hard = [[f"w{20 + j}" for j in range(i)] for i in range(6)]  # row i has i negatives
    b = TextPairBatches(encoder, q, d, 6, hard_negatives=hard, num_hard_negatives=3, seed=1)
    batch = next(iter(b))
    counts = batch["n_valid"].sum(1)  # (B,)
    anchors = [q[int(g)] for g in batch["q_group"]]  # q sorted == q here
    assert counts.tolist() == [min(int(a[1:]), 3) for a in anchors]
    with pytest.raises(ValueError):
        TextPairBatches(encoder, q, d, 6, hard_negatives=hard[:2], num_hard_negatives=1)


def test_hard_negatives_separate_confusable_candidates(encoder):
    """Training with hard negatives widens the positive-vs-hard-negative margin more than
    in-batch negatives alone (the hard negatives never appear in-batch)."""
    q = [f"w{i} w{i + 1}" for i in range(0, 24, 2)]
    d = [f"w{i + 1} w{i + 2}" for i in range(0, 24, 2)]
    hard = [[f"w{i + 1} w{i + 60}"] for i in range(0, 24, 2)]  # shares a word with the anchor

    def margin(enc):
        with torch.no_grad():
            a, p = _emb(enc, q), _emb(enc, d)
            n = _emb(enc, [h[0] for h in hard])
        return float(((a * p).sum(1) - (a * n).sum(1)).mean())

    base = margin(encoder)
    without, with_hard = copy.deepcopy(encoder), copy.deepcopy(encoder)
    kw = dict(epochs=6, batch_size=6, lr=3e-3, seed=0)
    contrastive_finetune(without, q, d, **kw)
    contrastive_finetune(with_hard, q, d, hard_negatives=hard, num_hard_negatives=1, **kw)
    assert margin(with_hard) > margin(without) + 0.05
    assert margin(with_hard) > base

"""The shared loss, the DDP gather (N ranks == one process on the whole batch), batching."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from irene.config import ClassifierConfig, GeneratorConfig
from irene.model.classifiers import OVAClassifiers
from irene.model.generator import IreneGenerator
from irene.train.batches import (
    TableBatches,
    item_columns,
    item_rows,
    pair_columns,
    sample_slots,
    to_tensors,
)
from irene.train.objectives import (
    ClassifierObjective,
    GeneratorContext,
    GeneratorObjective,
    ranking_loss,
)
from irene.train.stages import leave_one_out_neighbours

S, D = 12, 8


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    q = F.normalize(torch.randn(n, D, generator=torch.Generator().manual_seed(seed)), dim=-1)
    Y = sp.random(n, S, density=0.25, format="csr", random_state=seed, dtype=np.float32)
    Y.data[:] = 1
    keep = np.diff(Y.indptr) > 0
    Y, q = Y[keep], q.numpy()[keep]
    neg = rng.integers(0, S, size=(Y.shape[0], 4))
    return q, Y, neg


def test_ranking_loss_is_softmax_ce_with_other_positives_masked():
    q = F.normalize(torch.randn(3, D), dim=-1)
    vecs = F.normalize(torch.randn(4, D), dim=-1)
    cand = torch.tensor([2, 5, 7, 9])
    pos = torch.tensor([5, 9, 2])
    q_pos = torch.tensor([[5, 7], [9, -1], [2, 5]])  # row 0 also likes 7, row 2 also likes 5
    got = ranking_loss(q, pos, q_pos, cand, vecs, scale=10.0)
    logits = 10.0 * q @ vecs.T
    manual = []
    for r, (target, masked) in enumerate([(1, [2]), (3, []), (0, [1])]):
        keep = [j for j in range(4) if j not in masked]
        row = logits[r, keep]
        manual.append(-(row[keep.index(target)] - torch.logsumexp(row, 0)))
    torch.testing.assert_close(got, torch.stack(manual).mean())


class TwoRankGather:
    """What ``all_gather`` returns on rank ``rank`` of two: both ranks' ids, in rank order
    (each rank passes the positives of its rows, as both objectives do here)."""

    def __init__(self, rank: int, other_ids: torch.Tensor) -> None:
        self.rank, self.other = rank, other_ids

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, self.other] if self.rank == 0 else [self.other, t])


def _grads(obj, batch):
    obj.zero_grad()
    obj(batch).backward()
    return [p.grad.clone() for p in obj.parameters() if p.grad is not None]


def assert_two_ranks_equal_one_process(make_objective, batch):
    """DDP averages the ranks' gradients: with the gather, that average must equal the
    gradient of one process on the whole batch."""
    half = len(batch["pos"]) // 2
    parts = [{k: v[:half] for k, v in batch.items()}, {k: v[half:] for k, v in batch.items()}]
    whole = _grads(make_objective(lambda t: t), batch)
    per_rank = [
        _grads(make_objective(TwoRankGather(r, parts[1 - r]["pos"])), parts[r]) for r in (0, 1)
    ]
    assert len(whole) == len(per_rank[0]) > 0
    for w, a, b in zip(whole, *per_rank, strict=True):
        torch.testing.assert_close(w, (a + b) / 2, rtol=1e-4, atol=1e-6)


def test_classifier_objective_on_two_ranks_equals_one_process():
    q, Y, neg = _data()
    batch = to_tensors(pair_columns(q, Y, neg))
    n = len(batch["pos"]) // 2 * 2
    batch = {k: v[:n] for k, v in batch.items()}
    cfg = ClassifierConfig(hard_negatives=0, mined_negatives=4)
    base = F.normalize(torch.randn(S, D), dim=-1)

    def make(gather):
        clf = OVAClassifiers(base)
        with torch.no_grad():
            clf.delta.copy_(0.1 * torch.randn(S, D, generator=torch.Generator().manual_seed(1)))
        return ClassifierObjective(clf, cfg, gather)

    assert_two_ranks_equal_one_process(make, batch)


def test_generator_objective_on_two_ranks_equals_one_process():
    q, Y, _ = _data()
    emb = F.normalize(torch.randn(S, D), dim=-1).numpy()
    W = F.normalize(torch.randn(S, D), dim=-1).numpy()
    batch = to_tensors(item_rows(item_columns(q, Y, 8, 16), 2, 0, 0))
    cfg = GeneratorConfig(num_heads=2, dropout=0.0, cosine_weight=1.0)
    nbr_idx, nbr_b = leave_one_out_neighbours(emb, 3)

    def make(gather):
        torch.manual_seed(0)
        gen = IreneGenerator(D, cfg)
        for p in gen.parameters():  # off the zero init, so every weight gets a gradient
            torch.nn.init.normal_(p, std=0.05)
        return GeneratorObjective(gen, GeneratorContext(emb, W, nbr_idx, nbr_b), cfg, gather)

    assert_two_ranks_equal_one_process(make, batch)


def test_table_batches_ranks_cover_the_global_batches():
    cols = {"x": np.arange(23)}
    t = TableBatches(cols, seed=3)
    one = [b["x"] for b in t.epoch(1, 8)]
    assert sorted(np.concatenate(one).tolist()) == list(range(23))  # the last batch is kept
    two = [[b["x"] for b in t.epoch(1, 8, rank=r, world=2)] for r in (0, 1)]
    assert len(two[0]) == len(two[1]) == 2  # the partial last global batch is dropped
    for g, (a, b) in enumerate(zip(*two, strict=True)):
        assert np.concatenate([a, b]).tolist() == one[g].tolist()
    assert [b["x"].tolist() for b in t.epoch(1, 8)] == [x.tolist() for x in one]  # seeded
    assert [b["x"].tolist() for b in t.epoch(2, 8)] != [x.tolist() for x in one]


def test_item_rows_sample_per_item_without_replacement_and_deterministically():
    a = sample_slots(item=5, n_q=10, k=4, seed=0, epoch=1)
    assert len(set(a.tolist())) == 4 and a.tolist() == sample_slots(5, 10, 4, 0, 1).tolist()
    assert a.tolist() != sample_slots(5, 10, 4, 0, 2).tolist()  # another epoch, other queries
    small = sample_slots(item=1, n_q=3, k=5, seed=0, epoch=0)
    assert sorted(set(small.tolist())) == [0, 1, 2] and len(small) == 5  # cycled
    q, Y, _ = _data()
    items = item_columns(q, Y, 8, 16)
    rows = item_rows(items, 3, 0, 0)
    assert len(rows["pos"]) == 3 * len(items["item"])
    Yd = Y.toarray()
    for qe, p, qp in zip(rows["q_emb"], rows["pos"], rows["q_pos"], strict=True):
        r = int(np.flatnonzero((q == qe).all(1))[0])  # the sampled query is a positive of p
        assert Yd[r, p] == 1 and set(qp[qp >= 0].tolist()) == set(np.flatnonzero(Yd[r]).tolist())

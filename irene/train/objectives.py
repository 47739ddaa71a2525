"""Training objectives: modules whose ``forward(batch)`` returns the scalar loss.

Both learned stages use one loss on the pair table (:mod:`irene.train.batches`): every row's
query is scored against the batch's candidate items and a softmax cross-entropy pushes its
positive above the rest (the query's other positives are masked, so they are never negatives).
Only the candidates' vectors differ: the classifier stage scores trained classifiers of the
batch's positives plus mined hard negatives; the generator stage scores classifiers
*generated* for the batch's positives from their leave-one-out neighbours.

``gather`` (identity in one process) concatenates a tensor over DDP ranks: the candidates are
the union over the global batch, so N ranks train exactly as one process on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from irene.config import ClassifierConfig, GeneratorConfig
from irene.model.classifiers import OVAClassifiers
from irene.model.generator import IreneGenerator

MASKED = -1e4  # logit of a candidate that must not act as a negative
Gather = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def candidates(local: torch.Tensor, gather: Gather = _identity) -> torch.Tensor:
    """(n,) sorted unique non-negative item ids of the global batch."""
    ids = gather(local.reshape(-1))
    return torch.unique(ids[ids >= 0])


def ranking_loss(
    q_emb: torch.Tensor,  # (B, d) queries
    pos: torch.Tensor,  # (B,) each row's positive item id
    q_pos: torch.Tensor,  # (B, P) all positives of each row's query, -1 = padding
    cand: torch.Tensor,  # (n,) sorted candidate item ids (contains every pos)
    vecs: torch.Tensor,  # (n, d) the candidates' vectors
    scale: float,
) -> torch.Tensor:
    """Mean softmax cross-entropy of each row's positive among the candidates."""
    target = torch.searchsorted(cand, pos)  # (B,)
    logits = scale * q_emb @ vecs.T  # (B, n)
    other = (q_pos.unsqueeze(-1) == cand.view(1, 1, -1)).any(1)  # (B, n) the query's positives
    other[torch.arange(len(pos), device=pos.device), target] = False
    return F.cross_entropy(logits.masked_fill(other, MASKED), target)


class ClassifierObjective(nn.Module):
    """Seen-item classifiers on frozen query embeddings: each row's positive against the
    global batch's positives and ``cfg.hard_negatives`` sampled mined negatives per row."""

    def __init__(
        self, classifiers: OVAClassifiers, cfg: ClassifierConfig, gather: Gather = _identity
    ) -> None:
        super().__init__()
        self.classifiers = classifiers
        self.cfg = cfg
        self.gather = gather

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        neg = batch["neg"]  # (B, m)
        h = min(self.cfg.hard_negatives, neg.shape[1])
        if h > 0:
            cols = torch.rand(neg.shape, device=neg.device).argsort(1)[:, :h]  # (B, h)
            neg = neg.gather(1, cols)
        else:
            neg = neg[:, :0]
        cand = candidates(torch.cat([batch["pos"], neg.reshape(-1)]), self.gather)  # (n,)
        return ranking_loss(
            batch["q_emb"],
            batch["pos"],
            batch["q_pos"],
            cand,
            self.classifiers(cand),
            self.cfg.logit_scale,
        )


class GeneratorContext(nn.Module):
    """Frozen tensors the generator needs per seen item (non-persistent buffers)."""

    def __init__(
        self,
        item_emb: np.ndarray,
        classifiers: np.ndarray,
        nbr_idx: np.ndarray,
        nbr_bucket: np.ndarray,
    ) -> None:
        super().__init__()
        buffers = {
            "item_emb": torch.tensor(item_emb, dtype=torch.float32),  # (S, d)
            "clf": torch.tensor(classifiers, dtype=torch.float32),  # (S, d)
            "nbr_idx": torch.tensor(nbr_idx, dtype=torch.long),  # (S, K), -1 = none
            "nbr_bucket": torch.tensor(nbr_bucket, dtype=torch.long),  # (S, K)
        }
        for name, t in buffers.items():
            self.register_buffer(name, t, persistent=False)

    def inputs(self, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Generator inputs for seen items ``items`` (their leave-one-out neighbours)."""
        idx = self.nbr_idx[items]  # (n, K)
        nbr = self.clf[idx.clamp(min=0)]  # (n, K, d)
        return self.item_emb[items], nbr, self.nbr_bucket[items], idx >= 0


class GeneratorObjective(nn.Module):
    """Leave-one-out training of the generator: every seen item of the batch plays a novel
    item whose classifier is generated from its neighbours'; each row's query must rank its
    positive's generated classifier first among the batch's (+ an optional cosine pull of
    each generated classifier toward the item's own trained one)."""

    def __init__(
        self,
        generator: IreneGenerator,
        context: GeneratorContext,
        cfg: GeneratorConfig,
        gather: Gather = _identity,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.context = context
        self.cfg = cfg
        self.gather = gather

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cand = candidates(batch["pos"], self.gather)  # (n,)
        u = self.generator(*self.context.inputs(cand))  # (n, d) generated classifiers
        loss = ranking_loss(
            batch["q_emb"], batch["pos"], batch["q_pos"], cand, u, self.cfg.logit_scale
        )
        if self.cfg.cosine_weight > 0:
            own = self.context.clf[cand]  # (n, d) the items' own trained classifiers
            cos = F.cosine_similarity(u, own, dim=-1)
            loss = loss + self.cfg.cosine_weight * (1 - cos).mean()
        return loss

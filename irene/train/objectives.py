"""Training objectives: modules whose ``forward(batch)`` returns the scalar loss.

Both share the batch schema of :mod:`irene.train.pairs` and score each query against the
batch's items (positives of every pair + the queries' mined hard negatives).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from irene.config import ClassifierConfig, GeneratorConfig
from irene.model.classifiers import OVAClassifiers
from irene.model.generator import IreneGenerator
from irene.train.pairs import batch_labels


class ClassifierObjective(nn.Module):
    """One-vs-all BCE of seen-item classifiers on frozen query embeddings."""

    def __init__(self, classifiers: OVAClassifiers, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.classifiers = classifiers
        self.scale = cfg.logit_scale
        self.bias = nn.Parameter(torch.zeros(()))  # shared; never affects a ranking

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels, target = batch_labels(batch)  # (n,), (B, n)
        w = self.classifiers(labels)  # (n, d)
        logits = self.scale * batch["q_emb"] @ w.T + self.bias  # (B, n)
        return F.binary_cross_entropy_with_logits(logits, target)


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
        self.register_buffer(
            "item_emb", torch.as_tensor(item_emb, dtype=torch.float32), persistent=False
        )  # (S, d)
        self.register_buffer(
            "clf", torch.as_tensor(classifiers, dtype=torch.float32), persistent=False
        )  # (S, d)
        self.register_buffer(
            "nbr_idx", torch.as_tensor(nbr_idx, dtype=torch.long), persistent=False
        )  # (S, K), -1 = none
        self.register_buffer(
            "nbr_bucket", torch.as_tensor(nbr_bucket, dtype=torch.long), persistent=False
        )  # (S, K)

    def inputs(self, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Generator inputs for seen items ``items`` (leave-one-out neighbours)."""
        idx = self.nbr_idx[items]  # (n, K)
        valid = idx >= 0
        nbr = self.clf[idx.clamp(min=0)]  # (n, K, d)
        return self.item_emb[items], nbr, self.nbr_bucket[items], valid


class GeneratorObjective(nn.Module):
    """Leave-one-out weighted one-vs-all BCE (+ cosine pull to the item's own classifier)."""

    def __init__(
        self, generator: IreneGenerator, context: GeneratorContext, cfg: GeneratorConfig
    ) -> None:
        super().__init__()
        self.generator = generator
        self.context = context
        self.cfg = cfg
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("pos_weight", torch.tensor(float(cfg.pos_weight)), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        neg = batch["neg"]  # (B, m): generating every mined negative is the cost; sample a few
        n_neg = min(self.cfg.negatives_per_query, neg.shape[1])
        cols = torch.randperm(neg.shape[1], device=neg.device)[:n_neg]
        labels, target = batch_labels({**batch, "neg": neg[:, cols]})  # (n,), (B, n)
        u = self.generator(*self.context.inputs(labels))  # (n, d) generated classifiers
        logits = self.cfg.logit_scale * batch["q_emb"] @ u.T + self.bias  # (B, n)
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)
        if self.cfg.cosine_weight > 0:
            own = self.context.clf[labels]  # (n, d) the items' own trained classifiers
            loss = loss + self.cfg.cosine_weight * (1 - (u * own).sum(-1)).mean()
        return loss

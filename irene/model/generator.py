"""IRENE generator: one Transformer layer synthesising a classifier for a novel item.

Input sequence per item (length K+1):
    slot 0   : the item's own text embedding       + type[ENC] + score[SELF]
    slot 1..K: classifiers of its K nearest seen items + type[CLF] + score[bucket(cos)]
The layer's output at slot 0 (or the masked mean over slots, ``pooling="mean"`` as in the
paper's released code), L2-normalised, is the generated classifier.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from irene.config import GeneratorConfig, from_dict
from irene.model.selector import NUM_SCORE_BUCKETS
from irene.model.serialization import load_part, save_part

TYPE_ENC, TYPE_CLF = 0, 1
SELF_SCORE_TOKEN = NUM_SCORE_BUCKETS  # a fixed score token for the item's own slot (11)


class IreneGenerator(nn.Module):
    def __init__(self, dim: int, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.dim, self.cfg = dim, cfg
        self.type_emb = nn.Embedding(2, dim)
        self.score_emb = nn.Embedding(NUM_SCORE_BUCKETS + 1, dim)
        nn.init.zeros_(self.type_emb.weight)  # start from the raw vectors
        nn.init.zeros_(self.score_emb.weight)
        self.layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=cfg.num_heads,
            dim_feedforward=cfg.ff_mult * dim,
            dropout=cfg.dropout,
            batch_first=True,
        )

    def forward(
        self,
        item_emb: torch.Tensor,  # (B, d) L2-normalised item text embeddings
        nbr_clf: torch.Tensor,  # (B, K, d) classifiers of the K selected seen items
        nbr_bucket: torch.Tensor,  # (B, K) int64 cosine buckets 0..10
        nbr_valid: torch.Tensor | None = None,  # (B, K) bool, False for padding
    ) -> torch.Tensor:
        B, K, _ = nbr_clf.shape
        x = torch.cat([item_emb.unsqueeze(1), nbr_clf], dim=1)  # (B, K+1, d)
        types = torch.full((B, K + 1), TYPE_CLF, dtype=torch.long, device=x.device)
        types[:, 0] = TYPE_ENC
        scores = torch.cat(
            [torch.full((B, 1), SELF_SCORE_TOKEN, dtype=torch.long, device=x.device), nbr_bucket], 1
        )  # (B, K+1)
        x = x + self.type_emb(types) + self.score_emb(scores)
        valid = torch.ones((B, K + 1), dtype=torch.bool, device=x.device)
        if nbr_valid is not None:
            valid[:, 1:] = nbr_valid
        h = self.layer(x, src_key_padding_mask=~valid)  # (B, K+1, d)
        if self.cfg.pooling == "mean":
            m = valid.unsqueeze(-1).to(h.dtype)
            out = (h * m).sum(1) / m.sum(1)
        else:
            out = h[:, 0]
        return F.normalize(out, dim=-1)  # (B, d)

    def save(self, path: str) -> None:
        save_part(path, "generator", self.state_dict(), {"dim": self.dim, **asdict(self.cfg)})

    @classmethod
    def load(cls, path: str) -> IreneGenerator:
        state, cfg = load_part(path, "generator")
        dim = cfg.pop("dim")
        model = cls(dim, from_dict(GeneratorConfig, cfg))
        model.load_state_dict(state)
        return model.eval()

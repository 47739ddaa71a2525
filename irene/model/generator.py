"""IRENE generator: one Transformer layer synthesising a classifier for a novel item.

Input sequence per item (length K+1):
    slot 0   : the item's own text embedding           + type[ENC] + score[SELF]
    slot 1..K: classifiers of its K nearest seen items + type[CLF] + score[bucket(cos)]
One pre-norm Transformer encoder layer runs over the sequence; the output is the mean over the
item slot and the valid neighbour slots, L2-normalised (the released IRENE code pools the same
way). Both residual branches start at zero, so an untrained generator returns
``normalize(e + sum of neighbour classifiers)`` (the ``mean_synthesis_self`` arm) and training
learns from there how to weigh and correct the neighbours.
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
    """A single pre-norm Transformer encoder layer (as ``nn.TransformerEncoderLayer`` with
    ``norm_first=True``) followed by masked mean pooling over the K+1 slots."""

    def __init__(self, dim: int, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.dim, self.cfg = dim, cfg
        self.type_emb = nn.Embedding(2, dim)
        self.score_emb = nn.Embedding(NUM_SCORE_BUCKETS + 1, dim)
        nn.init.zeros_(self.type_emb.weight)  # start from the raw vectors
        nn.init.zeros_(self.score_emb.weight)
        self.attn = nn.MultiheadAttention(dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.ff = nn.Sequential(
            nn.Linear(dim, cfg.ff_mult * dim),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ff_mult * dim, dim),
        )
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)
        for lin in (self.attn.out_proj, self.ff[3]):  # zero-init residual branches
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self,
        item_emb: torch.Tensor,  # (B, d) L2-normalised item text embeddings
        nbr_clf: torch.Tensor,  # (B, K, d) classifiers of the K selected seen items
        nbr_bucket: torch.Tensor,  # (B, K) int64 cosine buckets 0..10
        nbr_valid: torch.Tensor | None = None,  # (B, K) bool, False for padding
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Generated classifiers (B, d); with ``return_attention`` also (B, K+1): the
        attention each slot (0: the item itself, 1..K: the neighbours) receives, averaged
        over the heads and over the valid slots the output pools (rows sum to 1)."""
        B, K, _ = nbr_clf.shape
        dev = nbr_clf.device
        types = torch.full((B, K + 1), TYPE_CLF, dtype=torch.long, device=dev)
        types[:, 0] = TYPE_ENC
        self_tok = torch.full((B, 1), SELF_SCORE_TOKEN, dtype=torch.long, device=dev)
        scores = torch.cat([self_tok, nbr_bucket], 1)  # (B, K+1)
        x = torch.cat([item_emb.unsqueeze(1), nbr_clf], dim=1)  # (B, K+1, d)
        x = x + self.type_emb(types) + self.score_emb(scores)
        valid = torch.ones((B, K + 1), dtype=torch.bool, device=dev)
        if nbr_valid is not None:
            valid[:, 1:] = nbr_valid
        h = self.norm1(x)
        a, att = self.attn(
            h, h, h, key_padding_mask=~valid, need_weights=return_attention
        )  # (B, K+1, d), (B, K+1, K+1) averaged over heads
        x = x + self.drop1(a)
        x = x + self.drop2(self.ff(self.norm2(x)))  # (B, K+1, d)
        w = valid.unsqueeze(-1).to(x.dtype)  # (B, K+1, 1)
        pooled = (x * w).sum(1) / w.sum(1)  # (B, d) mean over the valid slots
        out = F.normalize(pooled, dim=-1)
        if not return_attention:
            return out
        received = (att * w).sum(1) / w.sum(1)  # (B, K+1): mean over the pooled query slots
        return out, received

    def save(self, path: str) -> None:
        save_part(path, "generator", self.state_dict(), {"dim": self.dim, **asdict(self.cfg)})

    @classmethod
    def load(cls, path: str) -> IreneGenerator:
        state, cfg = load_part(path, "generator")
        dim = cfg.pop("dim")
        model = cls(dim, from_dict(GeneratorConfig, cfg))
        model.load_state_dict(state)
        return model.eval()

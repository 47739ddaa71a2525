"""IRENE generator: one Transformer layer synthesising a classifier for a novel item.

Input sequence per item (length K+1):
    slot 0   : the item's own text embedding       + type[ENC] + score[SELF]
    slot 1..K: classifiers of its K nearest seen items + type[CLF] + score[bucket(cos)]
The layer's output at slot 0, L2-normalised, is the generated classifier. (The paper's
released code mean-pools the slots instead; the item-slot output is what our design card
specifies and lets the layer compute a single query.)
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
    """A single post-norm Transformer encoder layer (as ``nn.TransformerEncoderLayer``), but
    only the item slot is computed as a query: keys/values come from all K+1 tokens, and the
    feed-forward runs on one token. Same output at slot 0, about half the FLOPs."""

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
        # Zero-init both residual branches: an untrained generator returns the item's own
        # embedding (the encoder baseline) and learns from there how to use the neighbours.
        for lin in (self.attn.out_proj, self.ff[3]):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self,
        item_emb: torch.Tensor,  # (B, d) L2-normalised item text embeddings
        nbr_clf: torch.Tensor,  # (B, K, d) classifiers of the K selected seen items
        nbr_bucket: torch.Tensor,  # (B, K) int64 cosine buckets 0..10
        nbr_valid: torch.Tensor | None = None,  # (B, K) bool, False for padding
    ) -> torch.Tensor:
        B, K, _ = nbr_clf.shape
        dev = nbr_clf.device
        types = torch.full((B, K + 1), TYPE_CLF, dtype=torch.long, device=dev)
        types[:, 0] = TYPE_ENC
        self_tok = torch.full((B, 1), SELF_SCORE_TOKEN, dtype=torch.long, device=dev)
        scores = torch.cat([self_tok, nbr_bucket], 1)  # (B, K+1)
        x = torch.cat([item_emb.unsqueeze(1), nbr_clf], dim=1)  # (B, K+1, d)
        x = x + self.type_emb(types) + self.score_emb(scores)
        pad = torch.zeros((B, K + 1), dtype=torch.bool, device=dev)
        if nbr_valid is not None:
            pad[:, 1:] = ~nbr_valid
        q = x[:, :1]  # (B, 1, d) the item slot is the only query
        a, _ = self.attn(q, x, x, key_padding_mask=pad, need_weights=False)  # (B, 1, d)
        h = self.norm1(q + self.drop1(a))
        h = self.norm2(h + self.drop2(self.ff(h)))  # (B, 1, d)
        return F.normalize(h[:, 0], dim=-1)  # (B, d)

    def save(self, path: str) -> None:
        save_part(path, "generator", self.state_dict(), {"dim": self.dim, **asdict(self.cfg)})

    @classmethod
    def load(cls, path: str) -> IreneGenerator:
        state, cfg = load_part(path, "generator")
        dim = cfg.pop("dim")
        model = cls(dim, from_dict(GeneratorConfig, cfg))
        model.load_state_dict(state)
        return model.eval()

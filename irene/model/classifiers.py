"""Per-item one-vs-all classifiers for seen items (NGAME/DEXA-style).

Each classifier is ``w_l = normalize(e_l + delta_l)``: the item's frozen text embedding plus a
learned offset, so an untrained classifier already equals the encoder's item embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from irene.model.serialization import load_part, save_part


class OVAClassifiers(nn.Module):
    def __init__(self, item_emb: torch.Tensor) -> None:
        super().__init__()
        # item_emb: (S, d) frozen, L2-normalised embeddings of the S seen items
        self.register_buffer("base", item_emb.detach().float().clone())
        self.delta = nn.Parameter(torch.zeros_like(self.base))  # (S, d)

    @property
    def num_items(self) -> int:
        return int(self.base.shape[0])

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    def forward(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised classifiers for item positions ``idx`` (all if None): (n, d)."""
        if idx is None:
            return F.normalize(self.base + self.delta, dim=-1)
        return F.normalize(self.base[idx] + self.delta[idx], dim=-1)

    @torch.no_grad()
    def weights(self) -> torch.Tensor:
        return self().detach()

    def save(self, path: str) -> None:
        save_part(
            path,
            "classifiers",
            {"base": self.base, "delta": self.delta},
            {"num_items": self.num_items, "dim": self.dim},
        )

    @classmethod
    def load(cls, path: str) -> OVAClassifiers:
        tensors, _ = load_part(path, "classifiers")
        model = cls(tensors["base"])
        with torch.no_grad():
            model.delta.copy_(tensors["delta"])
        return model

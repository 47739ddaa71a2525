"""The contrastive objective of encoder fine-tuning (in-batch + hard negatives, pair weights).

Used by the optional NGAME-style fine-tuning on train pairs and by the LLM-oracle distillation
(oracle relevance as pair weights, oracle-rejected shortlist labels as hard negatives); the
``encoder`` train_func of :mod:`irene.train.stages` runs it on the shared loop.

Orientation: row ``i`` is an *anchor* text (``q``) whose positive is candidate ``i`` (``d``); the
softmax runs over candidates: the batch's other candidates plus the row's own hard negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from irene.model.encoder import TextEncoder

MASKED = -1e4  # logit of a column that must not act as a negative


class ContrastiveObjective(nn.Module):
    """InfoNCE over a batch of (anchor, candidate) pairs; row i's positive is column i.

    Batch keys: q_input_ids, q_attention_mask, d_input_ids, d_attention_mask (B, T).
    Optional: ``weight`` (B,) per-pair weights (e.g. oracle relevance); ``q_group`` /
    ``d_group`` (B,) ids of the anchor / candidate texts: column j is not a negative of row i
    when pair j shares row i's anchor (another positive of it) or its candidate (a duplicate of
    the positive); ``n_input_ids``, ``n_attention_mask`` (B, H, T) and ``n_valid`` (B, H) bool:
    up to H hard-negative candidates per row, appended to that row's logits.
    """

    def __init__(self, encoder: TextEncoder, temperature: float = 0.05) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        q = self.encoder(batch["q_input_ids"], batch["q_attention_mask"])  # (B, d)
        d = self.encoder(batch["d_input_ids"], batch["d_attention_mask"])  # (B, d)
        logits = q @ d.T / self.temperature  # (B, B)
        B = logits.shape[0]
        same = torch.zeros(B, B, dtype=torch.bool, device=logits.device)
        for key in ("q_group", "d_group"):
            if key in batch:
                same |= batch[key].view(-1, 1) == batch[key].view(1, -1)  # (B, B)
        same &= ~torch.eye(B, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same, MASKED)
        if "n_input_ids" in batch:
            logits = torch.cat([logits, self._hard_negative_logits(q, batch)], dim=1)  # (B, B+H)
        loss = F.cross_entropy(
            logits, torch.arange(B, device=logits.device), reduction="none"
        )  # (B,)
        if "weight" in batch:
            w = batch["weight"].float()
            return (loss * w).sum() / w.sum().clamp(min=1e-6)
        return loss.mean()

    def _hard_negative_logits(self, q: torch.Tensor, batch: dict[str, torch.Tensor]):
        valid = batch["n_valid"].bool()  # (B, H)
        B, H = valid.shape
        n = q.new_zeros(B, H, q.shape[1])  # (B, H, d)
        if valid.any():  # encode only the real negatives, not the padding
            n[valid] = self.encoder(batch["n_input_ids"][valid], batch["n_attention_mask"][valid])
        n_logits = torch.einsum("bd,bhd->bh", q, n) / self.temperature  # (B, H)
        return n_logits.masked_fill(~valid, MASKED)


def collate_text_pairs(
    encoder: TextEncoder,
    anchors: Sequence[str],
    candidates: Sequence[str],
    weights: np.ndarray | None = None,
    hard_negatives: Sequence[Sequence[str]] | None = None,
    num_hard_negatives: int = 0,
    rng: np.random.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One tokenised ``ContrastiveObjective`` batch from B text pairs.

    Group ids come from text equality within the batch (all the objective's masking needs);
    up to ``num_hard_negatives`` of ``hard_negatives[i]`` are sampled for row i.
    """
    q = encoder.tokenize(list(anchors))
    d = encoder.tokenize(list(candidates))
    batch = {
        "q_input_ids": q["input_ids"],
        "q_attention_mask": q["attention_mask"],
        "d_input_ids": d["input_ids"],
        "d_attention_mask": d["attention_mask"],
        "q_group": torch.from_numpy(np.unique(list(anchors), return_inverse=True)[1]),
        "d_group": torch.from_numpy(np.unique(list(candidates), return_inverse=True)[1]),
    }
    if weights is not None:
        batch["weight"] = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    if hard_negatives is not None and num_hard_negatives > 0:
        rng = rng or np.random.default_rng(0)
        H, B = num_hard_negatives, len(anchors)
        texts, valid = [], np.zeros((B, H), dtype=bool)  # (B, H)
        for r, pool in enumerate(hard_negatives):
            pool = list(pool)
            pick = rng.permutation(len(pool))[:H] if len(pool) > H else range(len(pool))
            chosen = [pool[j] for j in pick]
            valid[r, : len(chosen)] = True
            texts += chosen + [""] * (H - len(chosen))
        n = encoder.tokenize(texts)  # (B*H, T)
        T = n["input_ids"].shape[1]
        batch["n_input_ids"] = n["input_ids"].view(B, H, T)
        batch["n_attention_mask"] = n["attention_mask"].view(B, H, T)
        batch["n_valid"] = torch.from_numpy(valid)
    return batch

"""Contrastive fine-tuning of the text encoder (in-batch negatives, optional pair weights).

Used for optional encoder fine-tuning on train pairs and by the LLM-oracle distillation
(oracle relevance as pair weights). Runs on the shared loop in :mod:`irene.train.loop`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from irene.model.encoder import TextEncoder
from irene.train.loop import EpochStats, fit


class ContrastiveObjective(nn.Module):
    """InfoNCE over a batch of (query, document) pairs; row i's positive is column i.

    Batch keys: q_input_ids, q_attention_mask, d_input_ids, d_attention_mask (B, T) and
    optionally ``weight`` (B,) per-pair weights (e.g. oracle relevance) and ``group`` (B,)
    document ids so duplicate documents in a batch are not used as each other's negatives.
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
        eye = torch.eye(B, dtype=torch.bool, device=logits.device)
        if "group" in batch:
            same = batch["group"].view(-1, 1) == batch["group"].view(1, -1)  # (B, B)
            logits = logits.masked_fill(same & ~eye, -1e4)
        loss = F.cross_entropy(
            logits, torch.arange(B, device=logits.device), reduction="none"
        )  # (B,)
        if "weight" in batch:
            w = batch["weight"].float()
            return (loss * w).sum() / w.sum().clamp(min=1e-6)
        return loss.mean()


class TextPairBatches:
    """Shuffled, tokenised batches of (query, document) text pairs."""

    def __init__(
        self,
        encoder: TextEncoder,
        queries: Sequence[str],
        docs: Sequence[str],
        batch_size: int,
        weights: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        if len(queries) != len(docs) or (weights is not None and len(weights) != len(docs)):
            raise ValueError("queries, docs (and weights) must have the same length")
        self.encoder, self.queries, self.docs = encoder, list(queries), list(docs)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        _, self.groups = np.unique(self.docs, return_inverse=True)
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def for_epoch(self, epoch: int) -> TextPairBatches:
        """Reshuffle for ``epoch`` and return self (the ``epoch_batches`` callable of ``fit``)."""
        self.set_epoch(epoch)
        return self

    def __len__(self) -> int:
        return -(-len(self.queries) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        perm = np.random.default_rng(self.seed * 100_003 + self.epoch).permutation(
            len(self.queries)
        )
        for s in range(0, len(perm), self.batch_size):
            idx = perm[s : s + self.batch_size]
            if len(idx) < 2:
                continue
            q = self.encoder.tokenize([self.queries[i] for i in idx])
            d = self.encoder.tokenize([self.docs[i] for i in idx])
            batch = {
                "q_input_ids": q["input_ids"],
                "q_attention_mask": q["attention_mask"],
                "d_input_ids": d["input_ids"],
                "d_attention_mask": d["attention_mask"],
                "group": torch.from_numpy(self.groups[idx]),
            }
            if self.weights is not None:
                batch["weight"] = torch.from_numpy(self.weights[idx])
            yield batch


def contrastive_finetune(
    encoder: TextEncoder,
    queries: Sequence[str],
    docs: Sequence[str],
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 2e-5,
    temperature: float = 0.05,
    weights: Sequence[float] | None = None,
    seed: int = 0,
) -> list[EpochStats]:
    """Fine-tune ``encoder`` in place on positive pairs ``(queries[i], docs[i])``."""
    torch.manual_seed(seed)
    obj = ContrastiveObjective(encoder, temperature)
    batches = TextPairBatches(encoder, queries, docs, batch_size, weights, seed)
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr)

    history = fit(obj, batches.for_epoch, opt, epochs, device=encoder.device)
    encoder.eval()
    return history

"""Classifiers for items that have no training data: IRENE generation and the baselines."""

from __future__ import annotations

import numpy as np
import torch

from irene.model.generator import IreneGenerator
from irene.model.selector import Selector, score_buckets


@torch.no_grad()
def generate(
    generator: IreneGenerator,
    item_emb: np.ndarray,  # (n, d) novel items' text embeddings
    nbr_idx: np.ndarray,  # (n, K) seen-item positions, -1 = none
    nbr_scores: np.ndarray,  # (n, K) cosine scores
    classifiers: np.ndarray | torch.Tensor,  # (S, d) seen items' classifiers
    batch_size: int = 4096,
) -> np.ndarray:
    """Generated classifiers (n, d) float32, L2-normalised. Neighbours with cosine <= 0 are
    masked out (as in training: :func:`irene.train.stages.leave_one_out_neighbours`)."""
    generator.eval()
    device = next(generator.parameters()).device
    W = torch.as_tensor(classifiers, dtype=torch.float32, device=device)
    out = np.empty((len(item_emb), generator.dim), dtype=np.float32)
    buckets = score_buckets(nbr_scores)
    for s in range(0, len(item_emb), batch_size):
        sl = slice(s, s + batch_size)
        idx = torch.as_tensor(nbr_idx[sl], device=device)
        u = generator(
            torch.as_tensor(item_emb[sl], dtype=torch.float32, device=device),
            W[idx.clamp(min=0)],
            torch.as_tensor(buckets[sl], device=device),
            (idx >= 0) & torch.as_tensor(nbr_scores[sl] > 0, device=device),
        )
        out[sl] = u.cpu().numpy()
    return out


def synthesize(
    generator: IreneGenerator,
    selector: Selector,
    classifiers: np.ndarray,  # (S, d) seen items' classifiers, selector order
    item_emb: np.ndarray,  # (n, d) text embeddings of items without training data
    k: int,
) -> np.ndarray:
    """IRENE: the K nearest seen items by embedding, then the generator -> (n, d) float32."""
    idx, scores = selector.search(item_emb, k)
    return generate(generator, item_emb, idx, scores, classifiers)


@torch.no_grad()
def explain(
    generator: IreneGenerator,
    selector: Selector,
    classifiers: np.ndarray,  # (S, d) seen items' classifiers, selector order
    item_emb: np.ndarray,  # (n, d) text embeddings
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`synthesize` does for each item, shown: ``(classifiers (n, d), neighbour
    positions (n, K) (-1: none), their cosine (n, K), attention (n, K+1))`` -- attention
    column 0 is the item's own embedding, columns 1..K its neighbours (0 where masked)."""
    idx, scores = selector.search(item_emb, k)
    generator.eval()
    device = next(generator.parameters()).device
    W = torch.as_tensor(classifiers, dtype=torch.float32, device=device)
    t_idx = torch.as_tensor(idx, device=device)
    out, att = generator(
        torch.as_tensor(item_emb, dtype=torch.float32, device=device),
        W[t_idx.clamp(min=0)],
        torch.as_tensor(score_buckets(scores), device=device),
        (t_idx >= 0) & torch.as_tensor(scores > 0, device=device),
        return_attention=True,
    )
    return out.cpu().numpy(), idx, scores, att.cpu().numpy()


def mean_synthesis(
    classifiers: np.ndarray, nbr_idx: np.ndarray, item_emb: np.ndarray | None = None
) -> np.ndarray:
    """Normalised mean of the K neighbours' classifiers (plus the item's own embedding)."""
    valid = (nbr_idx >= 0)[..., None].astype(np.float32)  # (n, K, 1)
    total = (classifiers[np.maximum(nbr_idx, 0)] * valid).sum(1)  # (n, d)
    if item_emb is not None:
        total = total + item_emb
    norm = np.linalg.norm(total, axis=1, keepdims=True)
    return (total / np.maximum(norm, 1e-12)).astype(np.float32)

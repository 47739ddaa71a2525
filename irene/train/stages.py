"""In-process training stages built on the shared loop (``irene benchmark``, tests).

The Ray Train pipelines build the very same objectives and call the very same ``fit``; only
the batch source (Ray Data shards instead of :class:`PairBatches`) and the DDP wrap differ.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch

from irene.config import ClassifierConfig, GeneratorConfig
from irene.model.classifiers import OVAClassifiers
from irene.model.generator import IreneGenerator
from irene.model.selector import Selector, score_buckets
from irene.train.loop import EpochStats, fit
from irene.train.objectives import ClassifierObjective, GeneratorContext, GeneratorObjective
from irene.train.pairs import PairBatches

log = logging.getLogger(__name__)


def classifier_objective(item_emb: np.ndarray, cfg: ClassifierConfig) -> ClassifierObjective:
    return ClassifierObjective(OVAClassifiers(torch.as_tensor(item_emb)), cfg)


def classifier_optimizer(obj: torch.nn.Module, cfg: ClassifierConfig) -> torch.optim.Optimizer:
    # Sparse-ish updates: only the batch's rows of delta get gradient; Adam handles that well.
    return torch.optim.Adam(obj.parameters(), lr=cfg.lr)


def leave_one_out_neighbours(
    item_emb: np.ndarray, k: int, selector: Selector | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(nbr_idx (S, k), buckets (S, k)) for every seen item, itself excluded."""
    selector = selector or Selector(item_emb)
    idx, scores = selector.search(item_emb, k, exclude=np.arange(len(item_emb)))
    return idx, score_buckets(scores)


def generator_objective(
    item_emb: np.ndarray,
    classifiers: np.ndarray,
    nbr_idx: np.ndarray,
    nbr_bucket: np.ndarray,
    cfg: GeneratorConfig,
) -> GeneratorObjective:
    torch.manual_seed(cfg.seed)
    gen = IreneGenerator(item_emb.shape[1], cfg)
    return GeneratorObjective(
        gen, GeneratorContext(item_emb, classifiers, nbr_idx, nbr_bucket), cfg
    )


def generator_optimizer(obj: torch.nn.Module, cfg: GeneratorConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(obj.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_classifiers(
    query_emb: np.ndarray,
    Y: sp.csr_matrix,
    item_emb: np.ndarray,
    hard_neg: np.ndarray,
    cfg: ClassifierConfig,
    show_progress: bool = False,
) -> tuple[OVAClassifiers, list[EpochStats]]:
    """Train seen-item classifiers. Y: (n, S) positives over seen-item positions."""
    torch.manual_seed(cfg.seed)
    batches = PairBatches(query_emb, Y, hard_neg, cfg.batch_size, cfg.max_positives, cfg.seed)
    obj = classifier_objective(item_emb, cfg)
    opt = classifier_optimizer(obj, cfg)

    history = fit(obj, batches.for_epoch, opt, cfg.epochs, show_progress=show_progress)
    return obj.classifiers.eval(), history


def train_generator(
    query_emb: np.ndarray,
    Y: sp.csr_matrix,
    item_emb: np.ndarray,
    classifiers: np.ndarray,
    hard_neg: np.ndarray,
    cfg: GeneratorConfig,
    max_positives: int = 64,
    show_progress: bool = False,
) -> tuple[IreneGenerator, list[EpochStats]]:
    nbr_idx, nbr_bucket = leave_one_out_neighbours(item_emb, cfg.num_neighbors)
    obj = generator_objective(item_emb, classifiers, nbr_idx, nbr_bucket, cfg)
    batches = PairBatches(query_emb, Y, hard_neg, cfg.batch_size, max_positives, cfg.seed)
    opt = generator_optimizer(obj, cfg)

    history = fit(obj, batches.for_epoch, opt, cfg.epochs, show_progress=show_progress)
    return obj.generator.eval(), history

"""The ``train_func`` of every learned stage, written once for every executor.

Each takes ``(config, ctx)``: ``config`` a plain dict (``train``: the TrainConfig dict,
``work_dir``: the prepared artifacts, plus stage extras) and ``ctx`` a
:class:`~irene.train.loop.TrainContext`. The local executor calls them in this process; the Ray
executor calls them on every Ray Train worker. They read their frozen inputs from ``work_dir``
and leave the trained weights in the context's final checkpoint (``state["model"]``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from irene import io
from irene.config import EncoderConfig, TrainConfig, from_dict
from irene.model.classifiers import OVAClassifiers
from irene.model.encoder import TextEncoder
from irene.model.generator import IreneGenerator
from irene.model.selector import Selector, score_buckets
from irene.train import artifacts
from irene.train.batches import group_rows, item_rows, to_tensors
from irene.train.contrastive import ContrastiveObjective, collate_text_pairs
from irene.train.loop import TrainContext, run_stage
from irene.train.objectives import (
    ClassifierObjective,
    GeneratorContext,
    GeneratorObjective,
)

log = logging.getLogger(__name__)


def leave_one_out_neighbours(item_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(nbr_idx (S, k), buckets (S, k)) for every seen item, itself excluded; neighbours with
    cosine <= 0 are dropped (-1), as the released IRENE code does."""
    idx, scores = Selector(item_emb).search(item_emb, k, exclude=np.arange(len(item_emb)))
    idx = np.where(scores > 0, idx, -1)
    return idx, score_buckets(scores)


def train_classifiers(config: dict[str, Any], ctx: TrainContext) -> None:
    """Seen-item classifiers ``normalize(e + delta)``, delta = 0 at the start. With
    ``cluster_size`` > 0 the table rows are clusters of pairs (batches of whole clusters)."""
    cfg = from_dict(TrainConfig, config["train"]).classifiers
    _, seen_emb = artifacts.read_seen_items(config["work_dir"])  # (S, d)
    torch.manual_seed(cfg.seed)
    clf = OVAClassifiers(torch.from_numpy(seen_emb))
    g = cfg.cluster_size
    run_stage(
        ClassifierObjective(clf, cfg, ctx.gather),
        ctx,
        lambda m: torch.optim.Adam(m.parameters(), lr=cfg.lr),
        cfg.epochs,
        max(1, cfg.batch_size // g) if g else cfg.batch_size,  # table rows per global batch
        checkpoint_every=int(config.get("checkpoint_every", 1)),
        collate=(lambda b, epoch: to_tensors(group_rows(b))) if g else None,
    )


def train_generator(config: dict[str, Any], ctx: TrainContext) -> None:
    """The IRENE generator on frozen embeddings and classifiers (leave-one-out neighbours),
    over the item table: batches of seen items, ``queries_per_item`` sampled queries each."""
    cfg = from_dict(TrainConfig, config["train"]).generator
    work_dir = config["work_dir"]
    _, seen_emb = artifacts.read_seen_items(work_dir)  # (S, d)
    clf = artifacts.load_dir(io.join(work_dir, artifacts.CLASSIFIERS_DIR), OVAClassifiers.load)
    nbr_idx, nbr_bucket = artifacts.read_neighbours(io.join(work_dir, artifacts.NEIGHBOURS))
    torch.manual_seed(cfg.seed)
    gen = IreneGenerator(seen_emb.shape[1], cfg)
    context = GeneratorContext(seen_emb, clf.weights().numpy(), nbr_idx, nbr_bucket)
    run_stage(
        GeneratorObjective(gen, context, cfg, ctx.gather),
        ctx,
        lambda m: torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        cfg.epochs,
        cfg.batch_size,
        warmup_steps=cfg.warmup_steps,
        checkpoint_every=int(config.get("checkpoint_every", 1)),
        collate=lambda b, epoch: to_tensors(item_rows(b, cfg.queries_per_item, cfg.seed, epoch)),
    )


def train_encoder(config: dict[str, Any], ctx: TrainContext) -> None:
    """Contrastive fine-tuning of the text encoder on a text-pair table (``anchor``,
    ``candidate``, optional ``weight`` and ``hard``: a list of hard-negative texts per row).

    ``config``: ``encoder`` (EncoderConfig dict), optional ``encoder_dir`` (start from these
    weights: a saved encoder directory, local or s3://), and ``contrastive``: epochs,
    batch_size, lr, temperature, seed, hard_negatives.
    """
    c = config["contrastive"]
    enc_cfg = from_dict(EncoderConfig, {**config["encoder"], "device": "cpu"})
    if config.get("encoder_dir"):
        encoder = artifacts.load_dir(config["encoder_dir"], lambda p: TextEncoder.load(p, "cpu"))
    else:
        encoder = TextEncoder.from_config(enc_cfg)
    torch.manual_seed(c["seed"])
    rngs: dict[int, np.random.Generator] = {}

    def collate(b: dict[str, Any], epoch: int) -> dict[str, torch.Tensor]:
        rng = rngs.setdefault(0, np.random.default_rng([c["seed"], ctx.rank]))
        hard = b.get("hard")
        return collate_text_pairs(
            encoder,
            [str(t) for t in b["anchor"]],
            [str(t) for t in b["candidate"]],
            None if "weight" not in b else np.asarray(b["weight"], dtype=np.float32),
            None if hard is None else [list(h) for h in hard],
            int(c.get("hard_negatives", 0)),
            rng,
        )

    run_stage(
        ContrastiveObjective(encoder, c["temperature"]),
        ctx,
        lambda m: torch.optim.AdamW(m.parameters(), lr=c["lr"]),
        c["epochs"],
        c["batch_size"],
        collate=collate,
        ddp_kwargs={"find_unused_parameters": True},  # e.g. the HF pooler is never used
    )


TRAIN_FUNCS = {
    "classifiers": train_classifiers,
    "generator": train_generator,
    "encoder": train_encoder,
}

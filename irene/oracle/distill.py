"""Oracle distillation and the pseudo-label baseline for label spaces without training data.

Flow (no query-label pairs anywhere): shortlist the top-m labels of every training document
with the current encoder, score the (document, label) pairs with an oracle, keep the pairs
with relevance >= ``threshold`` (plus each document's ``min_positives`` best-scored labels,
so a badly calibrated oracle still contributes its ranking) as positives weighted by the
relevance, and fine-tune the encoder with the executor's ``fit`` (the ``encoder`` train_func:
the same loop in-process or on Ray Train workers; scoring is the executor's ``score``: the
oracle in-process or Ray Data oracle actors).

Pair orientation and negatives: the document is the anchor and its label the candidate, the
direction the model is used in (rank labels for a document). Per document, the softmax runs over
the batch's other labels (in-batch negatives; a label that is another positive of the same
document, or the same label as the positive, is masked out) plus up to ``hard_negatives``
shortlisted labels the oracle *rejected* for this document: the labels the current encoder
confuses with the right ones, exactly the errors the oracle can correct. The pseudo-label
baseline uses the same orientation (document anchor, pseudo-query candidate) without them.

A fine-tuned encoder is written as a normal bundle: every label is a "seen" item whose
classifier is its fine-tuned text embedding (``OVAClassifiers`` with zero delta), the
selector indexes the same embeddings, and the generator is untrained (there is nothing to
train it on). The Serve app loads it unchanged.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from irene import io
from irene.config import Config, DistillConfig, EncoderConfig, PseudoLabelConfig, TrainConfig
from irene.eval.protocol import rank
from irene.executor import Executor, fit_encoder, make_executor
from irene.model.encoder import TextEncoder

log = logging.getLogger(__name__)


def sample_docs(n: int, max_docs: int, seed: int) -> np.ndarray:
    """Sorted, seeded subset of ``range(n)`` of size ``max_docs`` (all when 0).

    A prefix of one seeded permutation, so a larger ``max_docs`` contains a smaller one's
    documents (growing a run reuses the cached oracle answers).
    """
    if max_docs <= 0 or max_docs >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_docs])


def shortlist(
    doc_emb: np.ndarray, label_emb: np.ndarray, m: int, batch: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(n, m) top-m label ids and cosine scores per document; embeddings L2-normalised."""
    return rank(doc_emb, label_emb, min(m, len(label_emb)), batch=batch)


def oracle_training_pairs(
    doc_ids: np.ndarray,
    label_ids: np.ndarray,
    relevance: np.ndarray,
    threshold: float,
    min_positives: int,
) -> np.ndarray:
    """Positive pair mask over flat (document, label, relevance) arrays (n,)."""
    keep = relevance >= threshold
    if min_positives > 0:
        order = np.lexsort((-relevance, doc_ids))  # by doc, then relevance descending
        sd = doc_ids[order]
        first = np.r_[0, np.flatnonzero(np.diff(sd)) + 1]
        rank_in_doc = np.arange(len(sd)) - np.repeat(first, np.diff(np.r_[first, len(sd)]))
        keep[order[rank_in_doc < min_positives]] = True
    return keep


def oracle_pairs(
    docs: Sequence[str],
    labels: Sequence[str],
    doc_ids: np.ndarray,
    label_ids: np.ndarray,
    relevance: np.ndarray,
    cfg: DistillConfig,
) -> tuple[dict[str, Any], int]:
    """The text-pair table of oracle-weighted positives (document anchor, label candidate,
    relevance weight, oracle-rejected shortlist labels as hard negatives); (table, n_pos)."""
    keep = oracle_training_pairs(doc_ids, label_ids, relevance, cfg.threshold, cfg.min_positives)
    rejected = rejected_labels(doc_ids, label_ids, keep)
    log.info(
        "oracle distillation: %d positive pairs of %d scored, %d rejected as hard negatives",
        int(keep.sum()),
        len(keep),
        int((~keep).sum()),
    )
    table = {
        "anchor": [docs[i] for i in doc_ids[keep]],
        "candidate": [labels[i] for i in label_ids[keep]],
        "weight": np.clip(relevance[keep], 1e-3, 1.0).astype(np.float32),
        "hard": [[labels[j] for j in rejected.get(i, ())] for i in doc_ids[keep].tolist()],
    }
    return table, int(keep.sum())


def rejected_labels(
    doc_ids: np.ndarray, label_ids: np.ndarray, keep: np.ndarray
) -> dict[int, list[int]]:
    """Per document, its shortlisted labels that are not positives (in shortlist order)."""
    out: dict[int, list[int]] = {}
    for i, j in zip(doc_ids[~keep].tolist(), label_ids[~keep].tolist(), strict=True):
        out.setdefault(i, []).append(j)
    return out


_TITLE_SEP = re.compile(r"^(.{3,120}?)(?::\s|\.\s|\s[-–|]\s)(.+)$")


def pseudo_pairs(docs: Sequence[str], cfg: PseudoLabelConfig) -> tuple[list[str], list[str]]:
    """Self-supervised (pseudo-query, document) pairs derived from the documents alone.

    Per document: (title, rest) when it has a title-like prefix ("title: text", first
    sentence, "title - text"), and ``spans_per_doc`` random word spans of
    ``min_span_words..max_span_words`` words paired with the whole document (ICT-style).
    """
    rng = np.random.default_rng(cfg.seed)
    qs, ds = [], []
    for doc in docs:
        m = _TITLE_SEP.match(doc.strip())
        if m:
            qs.append(m.group(1))
            ds.append(doc)
        words = doc.split()
        if len(words) < cfg.min_span_words:
            continue
        for _ in range(cfg.spans_per_doc):
            n = int(rng.integers(cfg.min_span_words, min(cfg.max_span_words, len(words)) + 1))
            s = int(rng.integers(0, len(words) - n + 1))
            qs.append(" ".join(words[s : s + n]))
            ds.append(doc)
    return qs, ds


def save_novel_bundle(
    uri: str,
    encoder: TextEncoder,
    labels: Sequence[str],
    config: TrainConfig,
    label_ids: Sequence[str] | None = None,
    metrics: dict | None = None,
) -> dict:
    """Write a Serve-loadable bundle for a label space without training data (see module doc)."""
    from irene.bundle import save_bundle
    from irene.model.classifiers import OVAClassifiers
    from irene.model.generator import IreneGenerator
    from irene.model.selector import Selector

    t0 = time.perf_counter()
    emb = encoder.encode(list(labels))  # (L, d)
    ids = list(label_ids) if label_ids is not None else [str(i) for i in range(len(labels))]
    gen = IreneGenerator(emb.shape[1], config.generator).eval()  # untrained: no seen data
    manifest = save_bundle(
        uri,
        encoder,
        OVAClassifiers(torch.from_numpy(emb)),
        gen,
        Selector(emb),
        ids,
        config,
        {**(metrics or {}), "generator": "untrained (label space without training data)"},
    )
    log.info("novel-label bundle (%d labels) written in %.1fs", len(ids), time.perf_counter() - t0)
    return manifest


def contrastive_params(c: DistillConfig | PseudoLabelConfig, hard_negatives: int = 0) -> dict:
    return {
        "epochs": c.epochs,
        "batch_size": c.batch_size,
        "lr": c.lr,
        "temperature": c.temperature,
        "seed": c.seed,
        "hard_negatives": hard_negatives,
    }


@dataclass
class DistillResult:
    encoder: EncoderConfig  # the fine-tuned encoder (a saved directory)
    doc_ids: np.ndarray  # (P,) index into the training documents used
    label_ids: np.ndarray  # (P,) label index
    shortlist_scores: np.ndarray  # (P,) encoder cosine
    relevance: np.ndarray  # (P,) oracle relevance
    n_positives: int
    history: list[dict]
    oracle_stats: dict
    seconds: dict


def distill(
    ex: Executor,
    encoder: EncoderConfig,
    docs: Sequence[str],
    labels: Sequence[str],
    cfg: DistillConfig,
    out_dir: str,
    name: str = "llm_oracle",
    score: Callable[[list[tuple[str, str]]], tuple[np.ndarray, dict]] | None = None,
) -> DistillResult:
    """Shortlist -> oracle scores -> oracle-weighted contrastive fine-tuning.

    ``ex`` is an executor (:mod:`irene.executor`): its ``encode`` embeds, its ``score``
    judges (unless ``score`` is given, e.g. the gold judge), its ``fit`` fine-tunes; the
    fine-tuned encoder is saved under ``out_dir/name`` and returned as an EncoderConfig.
    """
    secs = {}
    t0 = time.perf_counter()
    doc_emb = ex.encode(list(docs), encoder)  # (n, d)
    lab_emb = ex.encode(list(labels), encoder)  # (L, d)
    top, vals = shortlist(doc_emb, lab_emb, cfg.shortlist)  # (n, m)
    secs["shortlist_s"] = round(time.perf_counter() - t0, 3)
    doc_ids = np.repeat(np.arange(len(docs)), top.shape[1])  # (P,)
    label_ids, sl_scores = top.reshape(-1), vals.reshape(-1)
    pairs = [
        (docs[i], labels[j]) for i, j in zip(doc_ids.tolist(), label_ids.tolist(), strict=True)
    ]
    t0 = time.perf_counter()
    relevance, stats = (score or ex.score)(pairs)
    secs["oracle_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    table, n_pos = oracle_pairs(docs, labels, doc_ids, label_ids, relevance, cfg)
    tuned, history = encoder, []
    if n_pos >= 2:
        params = contrastive_params(cfg, cfg.hard_negatives)
        tuned, run = fit_encoder(ex, encoder, table, params, io.join(out_dir, name))
        history = run.history
    secs["finetune_s"] = round(time.perf_counter() - t0, 3)
    return DistillResult(
        tuned, doc_ids, label_ids, sl_scores, relevance, n_pos, history, stats, secs
    )


def finetune_on_pseudo_labels(
    ex: Executor, encoder: EncoderConfig, docs: Sequence[str], cfg: PseudoLabelConfig, out_dir: str
) -> tuple[EncoderConfig, list[dict], int]:
    """The pseudo-label baseline: (document anchor, pseudo-query candidate) pairs."""
    q, d = pseudo_pairs(docs, cfg)
    if len(q) < 2:
        return encoder, [], len(q)
    table = {"anchor": d, "candidate": q}
    tuned, run = fit_encoder(
        ex, encoder, table, contrastive_params(cfg), io.join(out_dir, "pseudo_labels")
    )
    return tuned, run.history, len(q)


def run_distill(cfg: Config, out_dir: str, executor: Executor | None = None) -> dict:
    """``irene oracle distill``: the whole flow; writes ``OUT/bundle``, the oracle scores and
    ``OUT/summary.json``; returns the summary."""
    import json

    import pandas as pd

    from irene.config import replace, to_dict
    from irene.data.xc import read_xc

    cfg = replace(cfg, work_dir=cfg.work_dir or out_dir)  # Ray Train storage: OUT/ray_results
    ex = executor or make_executor(cfg)
    t_start = time.perf_counter()
    ds = read_xc(cfg.data)
    rows = sample_docs(len(ds.trn_X), cfg.distill.max_docs, cfg.distill.seed)
    docs = [ds.trn_X[i] for i in rows]
    io.makedirs(out_dir)
    res = distill(ex, cfg.train.encoder, docs, ds.Y, cfg.distill, out_dir)
    scores = pd.DataFrame(
        {
            "doc_row": rows[res.doc_ids],
            "label": res.label_ids,
            "encoder_score": res.shortlist_scores,
            "relevance": res.relevance,
        }
    )
    with io.open_output(io.join(out_dir, "oracle_scores.parquet")) as f:
        scores.to_parquet(f, index=False)
    summary = {
        "dataset": ds.name,
        "documents": len(docs),
        "pairs_scored": len(res.relevance),
        "positives": res.n_positives,
        "relevance_mean": float(res.relevance.mean()) if len(res.relevance) else None,
        "oracle": res.oracle_stats,
        "finetune": res.history,
        "timings": res.seconds,
        "config": to_dict(cfg),
    }
    manifest = save_novel_bundle(
        io.join(out_dir, "bundle"),
        TextEncoder.from_config(res.encoder),
        ds.Y,
        cfg.train,
        metrics={
            "oracle_distill": {k: summary[k] for k in ("documents", "pairs_scored", "positives")}
        },
    )
    summary["bundle"] = {"uri": io.join(out_dir, "bundle"), "num_items": manifest["num_seen_items"]}
    summary["timings"]["total_s"] = round(time.perf_counter() - t_start, 3)
    io.write_text(io.join(out_dir, "summary.json"), json.dumps(summary, indent=2))
    log.info("oracle distillation done: %s", {k: summary[k] for k in ("pairs_scored", "positives")})
    return summary

"""Oracle distillation and the pseudo-label baseline for label spaces without training data.

Flow (no query-label pairs anywhere): shortlist the top-m labels of every training document
with the current encoder, score the (document, label) pairs with an oracle, keep the pairs
with relevance >= ``threshold`` (plus each document's ``min_positives`` best-scored labels,
so a badly calibrated oracle still contributes its ranking) as positives weighted by the
relevance, and fine-tune the encoder with :func:`irene.train.contrastive.contrastive_finetune`.

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
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from irene.config import TrainConfig
from irene.eval.metrics import RankingAccumulator
from irene.model.encoder import TextEncoder
from irene.oracle.base import Oracle, OracleConfig, OracleStats
from irene.train.contrastive import contrastive_finetune
from irene.train.loop import EpochStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    shortlist: int = 10  # m labels per document scored by the oracle
    threshold: float = 0.5  # relevance >= threshold -> positive
    min_positives: int = 1  # plus each document's best-scored labels (0 = threshold only)
    hard_negatives: int = 4  # oracle-rejected shortlist labels per positive pair (0 = none)
    max_docs: int = 0  # seeded subset of training documents (0 = all)
    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-5
    temperature: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class PseudoLabelConfig:
    spans_per_doc: int = 1  # random spans per document (in addition to the title pair)
    min_span_words: int = 2
    max_span_words: int = 6
    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-5
    temperature: float = 0.05
    seed: int = 0


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
    acc = RankingAccumulator(min(m, len(label_emb)))
    lab = torch.from_numpy(np.ascontiguousarray(label_emb))  # (L, d)
    for s in range(0, len(doc_emb), batch):
        acc.add((torch.from_numpy(doc_emb[s : s + batch]) @ lab.T).numpy())
    return acc.pred, acc.vals


def score_pairs(
    oracle: Oracle,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
    desc: str = "oracle",
    on_progress: Callable[[int, OracleStats], None] | None = None,
) -> np.ndarray:
    """Score pairs in-process in batches with a progress bar (pairs, cost so far, ETA)."""
    out = np.empty(len(pairs), dtype=np.float32)  # (n,)
    with tqdm(total=len(pairs), desc=desc, unit="pair", mininterval=2.0) as bar:
        for s in range(0, len(pairs), batch_size):
            out[s : s + batch_size] = oracle.score(pairs[s : s + batch_size])
            bar.update(min(batch_size, len(pairs) - s))
            st = oracle.stats
            bar.set_postfix(calls=st.calls, cached=st.cached_pairs, usd=f"{st.cost_usd:.4f}")
            if on_progress is not None:
                on_progress(s + batch_size, st)
    log.info("oracle scored %d pairs: %s", len(pairs), oracle.stats.as_dict())
    return out


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


# (encoder, anchors, candidates, weights (P,), hard negatives per pair, cfg) -> history; fine-tunes
# the encoder in place. In-process: ``in_process_finetune``; on Ray Train: the pipeline's.
Finetuner = Callable[
    [TextEncoder, list[str], list[str], np.ndarray, list[list[str]], "DistillConfig"],
    list[EpochStats],
]


def in_process_finetune(
    encoder: TextEncoder,
    anchors: list[str],
    candidates: list[str],
    weights: np.ndarray,
    hard: list[list[str]],
    cfg: DistillConfig,
) -> list[EpochStats]:
    return contrastive_finetune(
        encoder,
        anchors,
        candidates,
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.temperature,
        weights,
        cfg.seed,
        hard_negatives=hard,
        num_hard_negatives=cfg.hard_negatives,
    )


def finetune_on_oracle(
    encoder: TextEncoder,
    docs: Sequence[str],
    labels: Sequence[str],
    doc_ids: np.ndarray,
    label_ids: np.ndarray,
    relevance: np.ndarray,
    cfg: DistillConfig,
    finetune: Finetuner | None = None,
) -> tuple[list[EpochStats], int]:
    """Fine-tune ``encoder`` in place on oracle-weighted positives; returns (history, n_pos)."""
    keep = oracle_training_pairs(doc_ids, label_ids, relevance, cfg.threshold, cfg.min_positives)
    anchors = [docs[i] for i in doc_ids[keep]]
    cands = [labels[i] for i in label_ids[keep]]
    w = np.clip(relevance[keep], 1e-3, 1.0)
    rejected = rejected_labels(doc_ids, label_ids, keep)
    hard = [[labels[j] for j in rejected.get(i, ())] for i in doc_ids[keep].tolist()]
    log.info(
        "oracle distillation: %d positive pairs of %d scored, %d rejected as hard negatives",
        int(keep.sum()),
        len(keep),
        int((~keep).sum()),
    )
    if int(keep.sum()) < 2:
        return [], int(keep.sum())
    hist = (finetune or in_process_finetune)(encoder, anchors, cands, w, hard, cfg)
    return hist, int(keep.sum())


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


def finetune_on_pseudo_labels(
    encoder: TextEncoder, docs: Sequence[str], cfg: PseudoLabelConfig
) -> tuple[list[EpochStats], int]:
    q, d = pseudo_pairs(docs, cfg)
    if len(q) < 2:
        return [], len(q)
    # same orientation as the oracle arm: document anchor, (pseudo-)label candidate
    hist = contrastive_finetune(
        encoder, d, q, cfg.epochs, cfg.batch_size, cfg.lr, cfg.temperature, None, cfg.seed
    )
    return hist, len(q)


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


@dataclass(frozen=True)
class OracleDistillConfig:
    """Config of ``irene oracle distill`` and the oracle arms of ``--setting ezxmc``."""

    train: TrainConfig = field(default_factory=TrainConfig)  # encoder (+ generator shape)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    use_ray: bool = False  # Ray Data scoring + Ray Train fine-tuning (pipeline CLI: on)
    oracle_actors: int = 1  # Ray Data actor-pool size (oracle replicas)
    actor_cpus: float = 1.0  # CPUs reserved per oracle actor
    train_workers: int = 2  # Ray Train DDP workers of the fine-tuning
    resources_per_worker: dict = field(default_factory=lambda: {"CPU": 0.5})
    use_gpu: str = "auto"  # auto | true | false


@dataclass
class DistillResult:
    doc_ids: np.ndarray  # (P,) index into the training documents used
    label_ids: np.ndarray  # (P,) label index
    shortlist_scores: np.ndarray  # (P,) encoder cosine
    relevance: np.ndarray  # (P,) oracle relevance
    n_positives: int
    history: list[EpochStats]
    oracle_stats: dict
    seconds: dict


def distill(
    encoder: TextEncoder,
    docs: Sequence[str],
    labels: Sequence[str],
    scorer: Callable[[list[tuple[str, str]]], tuple[np.ndarray, dict]],
    cfg: DistillConfig,
    finetune: Finetuner | None = None,
) -> DistillResult:
    """Shortlist -> oracle scores -> oracle-weighted contrastive fine-tuning (in place).

    ``scorer(pairs)`` returns ``(relevance (P,), oracle stats dict)``: in-process
    (:func:`in_process_scorer`) or the Ray Data stage of ``pipelines.oracle_distill``;
    ``finetune`` runs the fine-tuning (in-process by default; Ray Train in the pipeline).
    """
    secs = {}
    t0 = time.perf_counter()
    doc_emb = encoder.encode(list(docs), show_progress=True)  # (n, d)
    lab_emb = encoder.encode(list(labels), show_progress=True)  # (L, d)
    top, vals = shortlist(doc_emb, lab_emb, cfg.shortlist)  # (n, m)
    secs["shortlist_s"] = round(time.perf_counter() - t0, 3)
    doc_ids = np.repeat(np.arange(len(docs)), top.shape[1])  # (P,)
    label_ids, sl_scores = top.reshape(-1), vals.reshape(-1)
    pairs = [
        (docs[i], labels[j]) for i, j in zip(doc_ids.tolist(), label_ids.tolist(), strict=True)
    ]
    t0 = time.perf_counter()
    relevance, stats = scorer(pairs)
    secs["oracle_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    hist, n_pos = finetune_on_oracle(
        encoder, docs, labels, doc_ids, label_ids, relevance, cfg, finetune
    )
    secs["finetune_s"] = round(time.perf_counter() - t0, 3)
    return DistillResult(doc_ids, label_ids, sl_scores, relevance, n_pos, hist, stats, secs)


def in_process_scorer(oracle: Oracle, batch_size: int = 64):
    """A ``distill`` scorer that calls ``oracle`` in this process."""

    def scorer(pairs: list[tuple[str, str]]) -> tuple[np.ndarray, dict]:
        return score_pairs(oracle, pairs, batch_size), oracle.stats.as_dict()

    return scorer

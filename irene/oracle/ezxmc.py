"""``irene benchmark --setting ezxmc``: extreme zero-shot XMC, no training labels at all.

Every label is novel: the training documents are used *without* their labels (only a seeded
subset of ``distill.max_docs`` of them), and the ground truth is used only to evaluate the
test queries (and for PSP propensities, an evaluation-only quantity). Arms, each ranking all
labels by cosine between the test query and the label text embeddings of its own encoder:

    encoder        the base encoder, untouched
    pseudo_labels  fine-tuned on document-derived pseudo pairs (title / random spans)
    llm_oracle     fine-tuned on oracle-judged shortlists (irene.oracle.distill)
    gold_oracle    optional diagnostic (``gold_oracle: true``): the llm_oracle path with the
                   training labels as the judge -- an upper bound, not a zero-shot method

Both fine-tuned arms start from the same base encoder and use the same
``contrastive_finetune`` loop; the oracle's cost (calls, seconds, tokens, pairs/s) is reported.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from irene import io
from irene.benchmark import EVAL_KS, REPORT_METRICS, Timer, peak_memory_mb, rank
from irene.config import to_dict
from irene.data.xc import XCDataset, read_xc
from irene.device import set_threads
from irene.eval.metrics import evaluate, filter_mask, inverse_propensity, remove_pairs
from irene.model.encoder import TextEncoder
from irene.oracle.distill import (
    OracleDistillConfig,
    distill,
    finetune_on_pseudo_labels,
    in_process_scorer,
    sample_docs,
)

log = logging.getLogger(__name__)

EZXMC_ARMS = ("encoder", "pseudo_labels", "llm_oracle")


@dataclass(frozen=True)
class EzxmcConfig:
    distill: OracleDistillConfig = field(default_factory=lambda: OracleDistillConfig(use_ray=False))
    gold_oracle: bool = False  # add the diagnostic gold_oracle arm (judge = training labels)
    eval_batch: int = 2048
    psp_a: float = 0.55
    psp_b: float = 1.5


def evaluate_encoder(encoder: TextEncoder, ds: XCDataset, cfg: EzxmcConfig) -> dict:
    """Rank all labels for every test query with >= 1 (unfiltered) positive."""
    L = ds.num_labels
    mask = filter_mask(ds.filter_test, len(ds.tst_X), L)  # (n_tst, L)
    Y = remove_pairs(ds.tst_X_Y, mask)
    rows = np.flatnonzero(np.diff(Y.indptr) > 0)
    q = encoder.encode([ds.tst_X[i] for i in rows])  # (n, d)
    lab = encoder.encode(ds.Y)  # (L, d)
    k = max(EVAL_KS)
    pred = rank(q, lab, np.arange(L), mask[rows], k, cfg.eval_batch)  # (n, k)
    inv_prop = inverse_propensity(ds.trn_X_Y, cfg.psp_a, cfg.psp_b)
    return evaluate(pred, Y[rows], inv_prop, EVAL_KS)


def run_ezxmc(
    data_dir: str,
    out_dir: str,
    cfg: EzxmcConfig | None = None,
    encoder: TextEncoder | None = None,
    oracle_factory=None,
) -> dict:
    """Run the three arms; write ``results.json`` and ``results.md`` to ``out_dir``."""
    cfg = cfg or EzxmcConfig()
    dc = cfg.distill
    set_threads()
    timer = Timer()
    t_start = time.perf_counter()
    ds = timer("read_s", read_xc, data_dir)
    base = encoder or timer("load_encoder_s", TextEncoder.from_config, dc.train.encoder)
    rows = sample_docs(len(ds.trn_X), dc.distill.max_docs, dc.distill.seed)
    docs = [ds.trn_X[i] for i in rows]  # labels of these documents are never read
    arms, training = {}, {}

    arms["encoder"] = {"ezxmc": timer("eval_encoder_s", evaluate_encoder, base, ds, cfg)}

    enc = copy.deepcopy(base)
    hist, n_pairs = timer("train_pseudo_labels_s", finetune_on_pseudo_labels, enc, docs, dc.pseudo)
    training["pseudo_labels"] = {"pairs": n_pairs, "epochs": [h.as_dict() for h in hist]}
    arms["pseudo_labels"] = {"ezxmc": timer("eval_pseudo_labels_s", evaluate_encoder, enc, ds, cfg)}

    enc = copy.deepcopy(base)
    scorer = _scorer(dc, oracle_factory)
    res = timer("train_llm_oracle_s", distill, enc, docs, ds.Y, scorer, dc.distill)
    training["llm_oracle"] = {
        "pairs_scored": len(res.relevance),
        "positives": res.n_positives,
        "relevance_mean": float(res.relevance.mean()) if len(res.relevance) else None,
        "oracle_vs_shortlist_spearman": _spearman(res.relevance, res.shortlist_scores),
        # evaluation-only diagnostics (training labels are never used to train this arm): how
        # well the judge and the encoder separate true from false shortlisted pairs
        **_judge_quality(ds, rows, res),
        "seconds": res.seconds,
        "epochs": [h.as_dict() for h in res.history],
    }
    arms["llm_oracle"] = {"ezxmc": timer("eval_llm_oracle_s", evaluate_encoder, enc, ds, cfg)}

    if cfg.gold_oracle:  # the same path with a perfect judge: the ceiling of distillation
        from irene.oracle.gold import GoldOracle

        gold = GoldOracle(
            (ds.trn_X[i], ds.Y[j])
            for i in rows.tolist()
            for j in ds.trn_X_Y.indices[ds.trn_X_Y.indptr[i] : ds.trn_X_Y.indptr[i + 1]].tolist()
        )
        enc = copy.deepcopy(base)
        g = timer(
            "train_gold_oracle_s", distill, enc, docs, ds.Y, in_process_scorer(gold), dc.distill
        )
        training["gold_oracle"] = {
            "positives": g.n_positives,
            "epochs": [h.as_dict() for h in g.history],
        }
        arms["gold_oracle"] = {"ezxmc": timer("eval_gold_oracle_s", evaluate_encoder, enc, ds, cfg)}

    timer.t["total_s"] = round(time.perf_counter() - t_start, 3)
    timer.t["peak_rss_mb"] = peak_memory_mb()
    results = {
        "dataset": ds.name,
        "setting": "ezxmc",
        "stats": {**ds.stats(), "n_docs_used": len(docs), "n_labels_novel": ds.num_labels},
        "config": to_dict(cfg),
        "arms": arms,
        "oracle": res.oracle_stats,
        "timings": timer.t,
        "training": training,
    }
    io.makedirs(out_dir)
    io.write_text(io.join(out_dir, "results.json"), json.dumps(results, indent=2))
    io.write_text(io.join(out_dir, "results.md"), ezxmc_markdown(results))
    return results


def _scorer(dc: OracleDistillConfig, oracle_factory):
    if dc.use_ray:
        from pipelines.oracle_distill import ray_scorer

        return ray_scorer(
            dc.oracle, oracle_factory, dc.oracle_actors, dc.oracle.batch_size, dc.actor_cpus
        )
    from irene.oracle import make_oracle

    oracle = oracle_factory() if oracle_factory is not None else make_oracle(dc.oracle)
    return in_process_scorer(oracle, dc.oracle.batch_size)


def _judge_quality(ds: XCDataset, rows: np.ndarray, res) -> dict:
    Y = ds.trn_X_Y.tocsr()
    truth = np.asarray(Y[rows[res.doc_ids], res.label_ids]).reshape(-1) != 0  # (P,)
    return {
        "shortlist_true_pair_share": round(float(truth.mean()), 4) if len(truth) else None,
        "oracle_auc_vs_training_labels": _auc(res.relevance, truth),
        "encoder_auc_vs_training_labels": _auc(res.shortlist_scores, truth),
    }


def _auc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """ROC AUC (Mann-Whitney, ties averaged); None without both classes."""
    from scipy.stats import rankdata

    pos, n = int(truth.sum()), len(truth)
    if pos == 0 or pos == n:
        return None
    ranks = rankdata(scores)  # average ranks of ties
    auc = (ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * (n - pos))
    return round(float(auc), 4)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2:
        return None
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    c = np.corrcoef(ra, rb)[0, 1]
    return None if not np.isfinite(c) else round(float(c), 4)


def ezxmc_markdown(results: dict) -> str:
    cols = list(REPORT_METRICS)
    lines = [
        f"# irene benchmark (ezxmc, all labels novel): {results['dataset']}",
        "",
        f"{results['stats']['n_docs_used']} unlabeled training documents, "
        f"{results['stats']['n_labels_novel']} labels, all ranked.",
        "",
        "## ezxmc",
        "",
        "| arm | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for arm, res in results["arms"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{res['ezxmc'][c]:.2f}" for c in cols) + " |")
    lines += ["", "## oracle cost", "", "| what | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in results["oracle"].items()]
    lines += ["", "## timings", "", "| what | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in results["timings"].items()]
    return "\n".join(lines) + "\n"

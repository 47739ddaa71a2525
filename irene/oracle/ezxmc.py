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

import json
import logging
import time

import numpy as np

from irene import io
from irene.config import Config, EncoderConfig, to_dict
from irene.data.xc import XCDataset, read_xc
from irene.device import set_threads
from irene.eval.metrics import evaluate, filter_mask, inverse_propensity, remove_pairs
from irene.eval.protocol import EVAL_KS, REPORT_METRICS, rank
from irene.executor import Executor, make_executor
from irene.oracle.distill import distill, finetune_on_pseudo_labels, sample_docs

log = logging.getLogger(__name__)

EZXMC_ARMS = ("encoder", "pseudo_labels", "llm_oracle")


def evaluate_encoder(ex, encoder: EncoderConfig, ds: XCDataset, cfg: Config) -> dict:
    """Rank all labels for every test query with >= 1 (unfiltered) positive."""
    L = ds.num_labels
    mask = filter_mask(ds.filter_test, len(ds.tst_X), L)  # (n_tst, L)
    Y = remove_pairs(ds.tst_X_Y, mask)
    rows = np.flatnonzero(np.diff(Y.indptr) > 0)
    q = ex.encode([ds.tst_X[i] for i in rows], encoder)  # (n, d)
    lab = ex.encode(ds.Y, encoder)  # (L, d)
    pred, _ = rank(q, lab, max(EVAL_KS), exclude=mask[rows], batch=cfg.eval.batch)  # (n, k)
    inv_prop = inverse_propensity(ds.trn_X_Y, cfg.eval.psp_a, cfg.eval.psp_b)
    return evaluate(pred, Y[rows], inv_prop, EVAL_KS)


def run_ezxmc(cfg: Config, out_dir: str, executor: Executor | None = None) -> dict:
    """Run the arms; write ``results.json`` and ``results.md`` to ``out_dir``."""
    ex = executor or make_executor(cfg)
    set_threads()
    timings: dict[str, float] = {}

    def timed(name, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        timings[name] = round(time.perf_counter() - t0, 3)
        return out

    t_start = time.perf_counter()
    ds = timed("read_s", read_xc, cfg.data)
    base = cfg.train.encoder
    dc = cfg.distill
    rows = sample_docs(len(ds.trn_X), dc.max_docs, dc.seed)
    docs = [ds.trn_X[i] for i in rows]  # labels of these documents are never read
    arms, training = {}, {}
    io.makedirs(out_dir)

    arms["encoder"] = {"ezxmc": timed("eval_encoder_s", evaluate_encoder, ex, base, ds, cfg)}

    enc, hist, n_pairs = timed(
        "train_pseudo_labels_s", finetune_on_pseudo_labels, ex, base, docs, cfg.pseudo, out_dir
    )
    training["pseudo_labels"] = {"pairs": n_pairs, "epochs": hist}
    arms["pseudo_labels"] = {
        "ezxmc": timed("eval_pseudo_labels_s", evaluate_encoder, ex, enc, ds, cfg)
    }

    res = timed("train_llm_oracle_s", distill, ex, base, docs, ds.Y, dc, out_dir)
    training["llm_oracle"] = {
        "pairs_scored": len(res.relevance),
        "positives": res.n_positives,
        "relevance_mean": float(res.relevance.mean()) if len(res.relevance) else None,
        "oracle_vs_shortlist_spearman": _spearman(res.relevance, res.shortlist_scores),
        # evaluation-only diagnostics (training labels are never used to train this arm): how
        # well the judge and the encoder separate true from false shortlisted pairs
        **_judge_quality(ds, rows, res),
        "seconds": res.seconds,
        "epochs": res.history,
    }
    arms["llm_oracle"] = {
        "ezxmc": timed("eval_llm_oracle_s", evaluate_encoder, ex, res.encoder, ds, cfg)
    }

    if dc.gold_oracle:  # the same path with a perfect judge: the ceiling of distillation
        from irene.oracle.gold import GoldOracle

        gold = GoldOracle(
            (ds.trn_X[i], ds.Y[j])
            for i in rows.tolist()
            for j in ds.trn_X_Y.indices[ds.trn_X_Y.indptr[i] : ds.trn_X_Y.indptr[i + 1]].tolist()
        )

        def judge(pairs):
            return gold.score(pairs), gold.stats.as_dict()

        g = timed(
            "train_gold_oracle_s", distill, ex, base, docs, ds.Y, dc, out_dir, "gold_oracle", judge
        )
        training["gold_oracle"] = {"positives": g.n_positives, "epochs": g.history}
        arms["gold_oracle"] = {
            "ezxmc": timed("eval_gold_oracle_s", evaluate_encoder, ex, g.encoder, ds, cfg)
        }

    from irene.benchmark import peak_memory_mb

    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    timings["peak_rss_mb"] = peak_memory_mb()
    results = {
        "dataset": ds.name,
        "setting": "ezxmc",
        "stats": {**ds.stats(), "n_docs_used": len(docs), "n_labels_novel": ds.num_labels},
        "config": to_dict(cfg),
        "arms": arms,
        "oracle": res.oracle_stats,
        "timings": timings,
        "training": training,
    }
    io.write_text(io.join(out_dir, "results.json"), json.dumps(results, indent=2))
    io.write_text(io.join(out_dir, "results.md"), ezxmc_markdown(results))
    return results


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

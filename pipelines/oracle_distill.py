"""Pipeline ``oracle_distill``: LLM-oracle distillation into the bi-encoder, as a Ray job.

    python -m pipelines.oracle_distill DATA_DIR OUT_DIR [--config CONFIG.yaml]
    irene oracle distill DATA_DIR --out OUT_DIR [options]
    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m pipelines.oracle_distill DATA_DIR s3://bucket/run --config oracle.yaml

Stages: shortlist the top-m labels of every training document with the current encoder, score
the pairs with the oracle as a Ray Data stage (``map_batches`` over an actor pool of
``oracle_actors`` :class:`OracleScorer` replicas, each with its own model or HTTP client and a
shared on-disk cache), fine-tune the encoder on oracle-weighted positives with the oracle-rejected
shortlist labels as hard negatives, on Ray Train DDP workers running the one training loop
(:func:`irene.train.ray_train.fit_contrastive`; checkpoints under ``OUT_DIR/ray_results``), write a bundle the Serve app loads unchanged
(``OUT_DIR/bundle``) plus ``OUT_DIR/oracle_scores.parquet`` and ``OUT_DIR/summary.json``.

Why not ``ray.data.llm``: the installed Ray ships ``ray.data.llm`` (vLLM/SGLang engine
processors and ``HttpRequestProcessorConfig``), but the engine processors need vLLM/SGLang and a
GPU, and the HTTP processor posts raw payloads without our Yes/No logprob parsing, Retry-After
handling, call budget or answer cache. One class-based UDF covers both backends
(``OracleConfig.backend = local | http``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable

import numpy as np

from irene.oracle.base import STAT_FIELDS, Oracle, OracleConfig, OracleStats

log = logging.getLogger(__name__)


class OracleScorer:
    """Ray Data actor UDF: batch {doc, label} -> adds ``relevance`` and per-batch cost deltas.

    Cost columns (``oracle_<stat>``) carry the batch's stat increments on its first row (zeros
    elsewhere), so the driver can sum them while streaming for progress and cost.
    """

    def __init__(
        self,
        oracle_cfg: OracleConfig | None = None,
        oracle_factory: Callable[[], Oracle] | None = None,
    ) -> None:
        from irene.oracle import make_oracle

        self.oracle = oracle_factory() if oracle_factory is not None else make_oracle(oracle_cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        before = self.oracle.stats.as_dict()
        pairs = list(zip(batch["doc"].tolist(), batch["label"].tolist(), strict=True))
        rel = self.oracle.score(pairs)  # (B,)
        after = self.oracle.stats.as_dict()
        out = dict(batch)
        out["relevance"] = np.asarray(rel, dtype=np.float32)
        for k in STAT_FIELDS:
            col = np.zeros(len(pairs), dtype=np.float64)
            col[0] = after[k] - before[k]
            out[f"oracle_{k}"] = col
        return out


def ray_scorer(
    oracle_cfg: OracleConfig | None = None,
    oracle_factory: Callable[[], Oracle] | None = None,
    actors: int = 1,
    batch_size: int = 16,
    num_cpus: float = 1.0,
):
    """A :func:`irene.oracle.distill.distill` scorer running the oracle as a Ray Data stage."""

    def scorer(pairs: list[tuple[str, str]]) -> tuple[np.ndarray, dict]:
        import pandas as pd
        import ray.data
        from tqdm.auto import tqdm

        df = pd.DataFrame(
            {
                "pair": np.arange(len(pairs)),
                "doc": [d for d, _ in pairs],
                "label": [lab for _, lab in pairs],
            }
        )
        n_blocks = max(1, min(-(-len(pairs) // batch_size), 8 * actors))
        # several in-memory blocks (no repartition tasks that would compete with the actors)
        bounds = np.linspace(0, len(df), n_blocks + 1).astype(int)
        ds = ray.data.from_pandas(
            [df.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        )
        ds = ds.map_batches(
            OracleScorer,
            fn_constructor_kwargs={"oracle_cfg": oracle_cfg, "oracle_factory": oracle_factory},
            batch_size=batch_size,
            concurrency=actors,
            num_cpus=num_cpus,
        )
        rel = np.full(len(pairs), np.nan, dtype=np.float32)  # (P,)
        stats = OracleStats()
        with tqdm(total=len(pairs), desc="oracle (ray)", unit="pair", mininterval=2.0) as bar:
            for b in ds.iter_batches(batch_format="numpy", batch_size=None):
                rel[b["pair"]] = b["relevance"]
                stats.merge({k: float(b[f"oracle_{k}"].sum()) for k in STAT_FIELDS})
                bar.update(len(b["pair"]))
                bar.set_postfix(
                    calls=stats.calls, cached=stats.cached_pairs, usd=f"{stats.cost_usd:.4f}"
                )
        if np.isnan(rel).any():
            raise RuntimeError("Ray Data oracle stage lost pairs")
        out = stats.as_dict()
        out["note"] = "seconds summed over actors"
        return rel, out

    return scorer


def ray_finetuner(cfg, storage: str):
    """A ``distill`` finetuner that runs the contrastive loop on Ray Train DDP workers
    (``irene.train.ray_train.fit_contrastive``) and loads the result into the encoder."""
    from irene.config import to_dict
    from irene.train.loop import EpochStats
    from irene.train.ray_train import TrainerSettings, fit_contrastive, sub_state

    def finetune(encoder, anchors, candidates, weights, hard, dcfg):
        params = {
            k: getattr(dcfg, k) for k in ("epochs", "batch_size", "lr", "temperature", "seed")
        }
        params["num_hard_negatives"] = dcfg.hard_negatives
        digest = hashlib.sha256(
            json.dumps([to_dict(dcfg), len(anchors), anchors[:50], candidates[:50]]).encode()
        ).hexdigest()[:10]
        settings = TrainerSettings(
            num_workers=cfg.train_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=dict(cfg.resources_per_worker),
            storage=storage,
            run_name=f"irene-contrastive-{digest}",
        )
        run = fit_contrastive(anchors, candidates, weights, hard, encoder, params, settings)
        encoder.load_state_dict(sub_state(run.state["model"], "encoder"))
        encoder.eval()
        return [EpochStats(h["epoch"], h["loss"], h["pairs"], h["seconds"]) for h in run.history]

    return finetune


def run(
    data_dir: str,
    out_dir: str,
    cfg=None,
    oracle_factory: Callable[[], Oracle] | None = None,
    encoder=None,
) -> dict:
    """The whole pipeline; returns the summary written to ``OUT_DIR/summary.json``."""
    import pandas as pd

    from irene import io
    from irene.config import to_dict
    from irene.data.xc import read_xc
    from irene.model.encoder import TextEncoder
    from irene.oracle import make_oracle
    from irene.oracle.distill import (
        OracleDistillConfig,
        distill,
        in_process_scorer,
        sample_docs,
        save_novel_bundle,
    )

    cfg = cfg or OracleDistillConfig()
    t_start = time.perf_counter()
    ds = read_xc(data_dir)
    rows = sample_docs(len(ds.trn_X), cfg.distill.max_docs, cfg.distill.seed)
    docs = [ds.trn_X[i] for i in rows]
    encoder = encoder or TextEncoder.from_config(cfg.train.encoder)
    if cfg.use_ray:
        scorer = ray_scorer(cfg.oracle, oracle_factory, cfg.oracle_actors, cfg.oracle.batch_size)
    else:
        oracle = oracle_factory() if oracle_factory is not None else make_oracle(cfg.oracle)
        scorer = in_process_scorer(oracle, cfg.oracle.batch_size)
    finetune = ray_finetuner(cfg, io.join(out_dir, "ray_results")) if cfg.use_ray else None
    res = distill(encoder, docs, ds.Y, scorer, cfg.distill, finetune)
    io.makedirs(out_dir)
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
        "finetune": [h.as_dict() for h in res.history],
        "timings": res.seconds,
        "config": to_dict(cfg),
    }
    manifest = save_novel_bundle(
        io.join(out_dir, "bundle"),
        encoder,
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


def main(argv: list[str] | None = None) -> int:
    from irene.config import load_yaml
    from irene.oracle.distill import OracleDistillConfig

    p = argparse.ArgumentParser(prog="python -m pipelines.oracle_distill")
    p.add_argument("data_dir")
    p.add_argument("out_dir")
    p.add_argument("--config", help="YAML OracleDistillConfig (local path or s3://)")
    p.add_argument("--no-ray", action="store_true", help="score in-process, not with Ray Data")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = load_yaml(OracleDistillConfig, a.config) if a.config else OracleDistillConfig()
    cfg = dataclasses.replace(cfg, use_ray=not a.no_ray)
    summary = run(a.data_dir, a.out_dir, cfg)
    print(json.dumps({k: summary[k] for k in ("pairs_scored", "positives", "oracle")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

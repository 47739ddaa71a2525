"""Generator training throughput (pairs/s): in-memory tensors vs Ray Data streaming, 1 vs N workers.

Every row runs the same objective (``irene.train.stages.generator_objective``) and the same loop
(``irene.train.loop.fit``); only the batch source and the process layout differ:

    in-memory            PairBatches (torch tensors) in this process
    ray-data stream      ray.data.read_parquet(pairs).iter_torch_batches in this process
    TorchTrainer xN      the pipeline's train_generator_per_worker, N DDP workers, Ray Data shards

Synthetic data: random L2-normalised embeddings (default d=384), ~``--pairs`` query-item pairs.
Usage::

    python bench/train_throughput.py --pairs 20000 --dim 384 --epochs 3 --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import faiss  # noqa: F401,I001  (before torch)
import numpy as np
import scipy.sparse as sp
import torch

from irene import io
from irene.config import ClassifierConfig, GeneratorConfig, TrainConfig
from irene.model.classifiers import OVAClassifiers
from irene.pipeline_config import PipelineConfig
from irene.train import artifacts
from irene.train.loop import fit
from irene.train.pairs import PairBatches, mine_hard_negatives
from irene.train.ray_train import BATCH_DTYPES, fit_stage, pairs_dataset
from irene.train.stages import generator_objective, generator_optimizer, leave_one_out_neighbours


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n_pairs: int, n_items: int, dim: int, seed: int = 0):
    """Queries near 1-3 of their positive items; returns (query_emb, Y (n, S), item_emb)."""
    rng = np.random.default_rng(seed)
    item_emb = _normalise(rng.normal(size=(n_items, dim)))  # (S, d)
    n_q = n_pairs // 2
    k = rng.integers(1, 4, size=n_q)
    rows = np.repeat(np.arange(n_q), k)
    cols = rng.integers(0, n_items, size=len(rows))
    Y = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_q, n_items))
    Y.sum_duplicates()
    Y.data[:] = 1.0
    q = _normalise(Y @ item_emb + 0.5 * rng.normal(size=(n_q, dim)) / np.sqrt(dim))  # (n, d)
    return q, Y, item_emb


def write_work_dir(work: str, q, Y, item_emb, cfg: TrainConfig, rows_per_file: int) -> PairBatches:
    hard_neg = mine_hard_negatives(q, item_emb, cfg.classifiers.num_hard_negatives)
    batches = PairBatches(q, Y, hard_neg, cfg.generator.batch_size, cfg.classifiers.max_positives)
    artifacts.write_pairs(io.join(work, artifacts.PAIRS_DIR), batches.to_columns(), rows_per_file)
    artifacts.write_items(io.join(work, artifacts.ITEMS), item_emb, np.arange(len(item_emb)))
    nbr_idx, nbr_bucket = leave_one_out_neighbours(item_emb, cfg.generator.num_neighbors)
    artifacts.write_neighbours(io.join(work, artifacts.NEIGHBOURS), nbr_idx, nbr_bucket)
    clf = OVAClassifiers(torch.from_numpy(item_emb))
    with torch.no_grad():
        clf.delta.normal_(std=0.02)
    artifacts.save_dir(io.join(work, artifacts.CLASSIFIERS_DIR), clf.save)
    artifacts.write_json(io.join(work, artifacts.PREPARE_META), {"dim": item_emb.shape[1]})
    return batches


def in_process(work: str, cfg: GeneratorConfig, batches, stream: bool, threads: int) -> list:
    torch.set_num_threads(threads)
    _, seen_emb = artifacts.read_seen_items(work)
    W = artifacts.load_dir(io.join(work, artifacts.CLASSIFIERS_DIR), OVAClassifiers.load)
    nbr_idx, nbr_bucket = artifacts.read_neighbours(io.join(work, artifacts.NEIGHBOURS))
    obj = generator_objective(seen_emb, W.weights().numpy(), nbr_idx, nbr_bucket, cfg)
    opt = generator_optimizer(obj, cfg)
    if stream:
        ds = pairs_dataset(work)

        def epoch_batches(e):
            return ds.iter_torch_batches(
                batch_size=cfg.batch_size, dtypes=BATCH_DTYPES, local_shuffle_buffer_size=4096
            )
    else:

        def epoch_batches(e):
            batches.set_epoch(e)
            return batches

    return [s.as_dict() for s in fit(obj, epoch_batches, opt, cfg.epochs)]


def summarise(name: str, history: list[dict], wall: float) -> dict:
    rates = [h["pairs_per_s"] for h in history]
    steady = rates[1:] or rates
    return {
        "setup": name,
        "epoch0": rates[0],
        "steady": float(np.mean(steady)),
        "pairs": history[-1]["pairs"],
        "loss_last": history[-1]["loss"],
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=20_000)
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hard-negatives", type=int, default=20)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads in-process (Ray: 1/worker)"
    )
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    train = TrainConfig(
        classifiers=ClassifierConfig(num_hard_negatives=args.hard_negatives),
        generator=GeneratorConfig(epochs=args.epochs, batch_size=args.batch_size, dropout=0.1),
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="irene-bench-") as work:
        q, Y, item_emb = synthetic(args.pairs, args.items, args.dim)
        batches = write_work_dir(work, q, Y, item_emb, train, rows_per_file=2_000)
        print(f"{batches.num_pairs} pairs, {args.items} items, d={args.dim}, {args.epochs} epochs")
        for name, stream in (("in-memory (PairBatches)", False), ("ray-data stream", True)):
            t0 = time.perf_counter()
            hist = in_process(work, train.generator, batches, stream, args.threads)
            rows.append(summarise(f"{name}, 1 process", hist, time.perf_counter() - t0))
        for n in args.workers:
            cfg = PipelineConfig(
                work_dir=work, train=train, num_workers=n, run_name=f"bench-{n}", max_failures=0
            )
            t0 = time.perf_counter()
            run = fit_stage("generator", cfg)
            rows.append(
                summarise(f"TorchTrainer x{n} + Ray Data", run.history, time.perf_counter() - t0)
            )
    ray.shutdown()
    print()
    print(
        "| setup | epoch 0 pairs/s | steady pairs/s (epochs 1+) | pairs/epoch | last loss | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['setup']} | {r['epoch0']:.0f} | {r['steady']:.0f} | {r['pairs']} "
            f"| {r['loss_last']:.3f} | {r['wall_s']:.1f} |"
        )


if __name__ == "__main__":
    main()

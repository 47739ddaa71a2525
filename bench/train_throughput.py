"""Generator training throughput (pairs/s): the local executor vs the Ray executor, 1 vs N workers.

Every row runs the same train_func (``irene.train.stages.train_generator``) through an
executor's ``fit`` over the same item table; only the batch source and the process layout differ:

    local            the table in memory, this process
    ray xN           Ray Train, N DDP workers, each streaming its Ray Data shard

Synthetic data: random L2-normalised embeddings (default d=384), ~``--pairs`` query-item pairs.
Usage::

    python bench/train_throughput.py --pairs 20000 --dim 384 --epochs 3 --workers 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import faiss  # noqa: F401,I001  (before torch)
import numpy as np
import scipy.sparse as sp
import torch

from irene import io
from irene.config import Config, load_config, replace, to_dict
from irene.model.classifiers import OVAClassifiers
from irene.pipeline import ITEMS_PER_FILE, LocalExecutor
from irene.train import artifacts
from irene.train.batches import item_columns
from irene.train.stages import leave_one_out_neighbours


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


def write_work_dir(work: str, q, Y, item_emb, cfg: Config) -> int:
    """The generator stage's inputs (item table, items, neighbours, classifiers); pairs."""
    g = cfg.train.generator
    artifacts.write_table_parts(
        io.join(work, artifacts.ITEM_QUERIES_DIR), item_columns(q, Y), ITEMS_PER_FILE
    )
    artifacts.write_items(io.join(work, artifacts.ITEMS), item_emb, np.arange(len(item_emb)))
    nbr_idx, nbr_bucket = leave_one_out_neighbours(item_emb, g.num_neighbors)
    artifacts.write_neighbours(io.join(work, artifacts.NEIGHBOURS), nbr_idx, nbr_bucket)
    clf = OVAClassifiers(torch.from_numpy(item_emb))
    with torch.no_grad():
        clf.delta.normal_(std=0.02)
    artifacts.save_dir(io.join(work, artifacts.CLASSIFIERS_DIR), clf.save)
    return int(Y.nnz)


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
    p.add_argument("--batch-size", type=int, default=256, help="items per global batch")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads locally (Ray: 1/worker)")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows = []
    with tempfile.TemporaryDirectory(prefix="irene-bench-") as work:
        cfg = load_config(
            None,
            [
                f"train.generator.epochs={args.epochs}",
                f"train.generator.batch_size={args.batch_size}",
            ],
            work_dir=work,
        )
        q, Y, item_emb = synthetic(args.pairs, args.items, args.dim)
        n_pairs = write_work_dir(work, q, Y, item_emb, cfg)
        print(f"{n_pairs} pairs, {args.items} items, d={args.dim}, {args.epochs} epochs")
        loop = {"stage": "generator", "work_dir": work, "train": to_dict(cfg.train), "seed": 0}
        table = io.join(work, artifacts.ITEM_QUERIES_DIR)
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        run = LocalExecutor(cfg, show_progress=False).fit("generator", loop, table, "local")
        rows.append(summarise("local, 1 process", run.history, time.perf_counter() - t0))
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        from irene.ray.executor import RayExecutor

        for n in args.workers:
            c = replace(
                cfg, executor="ray", ray=dataclasses.replace(cfg.ray, num_workers=n, max_failures=0)
            )
            t0 = time.perf_counter()
            run = RayExecutor(c).fit("generator", loop, table, f"bench-{n}-{time.time_ns()}")
            rows.append(
                summarise(f"ray x{n} (Ray Train + Ray Data)", run.history, time.perf_counter() - t0)
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

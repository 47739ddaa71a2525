"""Same data, same seed: metrics of the in-process ``irene benchmark`` vs the Ray pipeline bundle.

    python bench/ray_vs_benchmark.py DATA_DIR [--config PIPELINE.yaml] [--workers 2]

The Ray path (prepare -> train_classifiers -> train_generator -> build_bundle with N DDP
workers) evaluates its bundle with the benchmark's own functions, so the two tables are
directly comparable; differences come from batch order (Ray Data shuffle vs randperm) and DDP.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from irene.benchmark import BenchmarkConfig, run_benchmark
from irene.pipeline import run_all
from irene.pipeline_config import load_pipeline_config, replace

METRICS = ("P@1", "P@5", "nDCG@5", "R@10")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data")
    p.add_argument("--config", help="PipelineConfig YAML (its `train` is used by both paths)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--arms", nargs="+", default=["encoder", "mean_synthesis", "irene"])
    args = p.parse_args()

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = load_pipeline_config(args.config, data=args.data, num_workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="irene-cmp-") as tmp:
        t0 = time.perf_counter()
        local = run_benchmark(
            args.data, os.path.join(tmp, "bench"), BenchmarkConfig(train=cfg.train)
        )
        t_local = time.perf_counter() - t0
        cfg = replace(cfg, work_dir=os.path.join(tmp, "work"), bundle=os.path.join(tmp, "bundle"))
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        manifest = run_all(cfg)
        t_ray = time.perf_counter() - t0
        ray.shutdown()
    remote = manifest["metrics"]["eval"]["arms"]
    print(f"\nin-process: {t_local:.0f} s; Ray ({args.workers} workers): {t_ray:.0f} s\n")
    print("| arm | setting | metric | in-process | Ray pipeline |")
    print("|---|---|---|---:|---:|")
    for arm in args.arms:
        for setting in ("zero_shot", "full"):
            for m in METRICS:
                a, b = local["arms"][arm][setting][m], remote[arm][setting][m]
                print(f"| {arm} | {setting} | {m} | {a:.2f} | {b:.2f} |")
    for stage in ("classifiers", "generator"):
        a = local["training"][stage][-1]["loss"]
        b = manifest["metrics"]["training"][stage]["epochs"][-1]["loss"]
        print(f"final {stage} loss: in-process {a:.4f}, Ray {b:.4f}")


if __name__ == "__main__":
    main()

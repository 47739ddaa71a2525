"""Same data, same seed: the pipeline on the local executor vs the Ray executor (N DDP workers).

    python bench/ray_vs_benchmark.py DATA_DIR [--config CONFIG.yaml] [--workers 2] [--set k=v]

Both runs are ``irene.pipeline.run`` with the same Config; only ``executor`` differs, so the
tables are directly comparable. Differences come from batch order (Ray Data's stored order
plus a local shuffle buffer vs a full reshuffle per epoch) and the dropped last partial batch
with more than one worker.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from irene.config import load_config, replace
from irene.pipeline import run

METRICS = ("P@1", "P@5", "nDCG@5", "R@10")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data")
    p.add_argument("--config", help="Config YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--arms", nargs="+", default=["encoder", "mean_synthesis", "irene"])
    p.add_argument("--out", help="write both runs' metrics here (JSON)")
    args = p.parse_args()

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    overrides = [*args.overrides, f"ray.num_workers={args.workers}"]
    cfg = load_config(args.config, overrides, data=args.data)
    out, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="irene-cmp-") as tmp:
        for name in ("local", "ray"):
            if name == "ray":
                ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
            c = replace(cfg, executor=name, work_dir=os.path.join(tmp, name))
            t0 = time.perf_counter()
            out[name] = run(c)["metrics"]
            seconds[name] = time.perf_counter() - t0
        ray.shutdown()
    print(
        f"\nlocal: {seconds['local']:.0f} s; Ray ({args.workers} workers): {seconds['ray']:.0f} s\n"
    )
    print("| arm | setting | metric | local | Ray | Ray - local |")
    print("|---|---|---|---:|---:|---:|")
    for arm in args.arms:
        for setting in ("zero_shot", "full"):
            for m in METRICS:
                a = out["local"]["eval"]["arms"][arm][setting][m]
                b = out["ray"]["eval"]["arms"][arm][setting][m]
                print(f"| {arm} | {setting} | {m} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    for stage in ("classifiers", "generator"):
        a = out["local"]["training"][stage]["epochs"][-1]["loss"]
        b = out["ray"]["training"][stage]["epochs"][-1]["loss"]
        print(f"final {stage} loss: local {a:.4f}, Ray {b:.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"seconds": seconds, **out}, f, indent=2)


if __name__ == "__main__":
    main()

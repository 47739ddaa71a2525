"""Pipeline ``oracle_distill``: LLM-oracle distillation into the bi-encoder, as a Ray job.

    python -m pipelines.oracle_distill --data DATA_DIR --out OUT_DIR [--config CONFIG.yaml]
    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m pipelines.oracle_distill --data DATA_DIR --out s3://bucket/run --config oracle.yaml

The flow is ``irene.oracle.distill.run_distill`` on the Ray executor: the oracle scores the
shortlists as a Ray Data stage (``ray.oracle_actors`` replicas), the encoder is fine-tuned by
Ray Train DDP workers running the shared loop; writes ``OUT_DIR/bundle``,
``OUT_DIR/oracle_scores.parquet`` and ``OUT_DIR/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from irene.config import ConfigError, load_config
    from irene.oracle.distill import run_distill

    p = argparse.ArgumentParser(prog="python -m pipelines.oracle_distill")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", help="Config YAML (local path or s3://)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    p.add_argument("--executor", choices=("ray", "local"), default="ray")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(a.config, a.overrides, data=a.data, executor=a.executor)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = run_distill(cfg, a.out)
    print(json.dumps({k: summary[k] for k in ("pairs_scored", "positives", "oracle")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Model upgrade / rollback of a running app's index as a Ray job (see irene.upgrade).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m pipelines.upgrade serve_app/configs/cluster.yaml --bundle s3://b/bundle-v2
    ray job submit ... -- python -m pipelines.upgrade CONFIG --rollback

Resubmitting a failed upgrade resumes it (each sync round redoes only what differs).
"""

import argparse
import json
import logging
import sys

from irene.ray.upgrade import rollback_app, upgrade_app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pipelines.upgrade", description=__doc__.splitlines()[0])
    p.add_argument("config", help="the app's Serve config YAML")
    p.add_argument("--bundle", help="the retrained bundle (upgrade)")
    p.add_argument("--rollback", action="store_true", help="serve the previous generation")
    p.add_argument("--executor", choices=("local", "ray"), default="ray")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.rollback == bool(args.bundle):
        p.error("give --bundle (upgrade) or --rollback")
    if args.rollback:
        report = rollback_app(args.config, args.executor, "auto")
    else:
        report = upgrade_app(args.config, args.bundle, args.executor, "auto")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

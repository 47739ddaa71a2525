"""Bulk ingest of novel items as a Ray job (see irene.ingest and irene.ray.ingest).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m pipelines.ingest --config CONFIG.yaml [--set ingest.items=s3://b/items/]

The config's ``bundle`` and ``ingest`` sections say what to read and which index (the same
shard actors as the Serve app's ``args.index``) to write; ids already in the index are
skipped, so resubmitting a failed job resumes it.
"""

import sys

from irene.ingest import driver_main


def main(argv: list[str] | None = None) -> int:
    return driver_main(argv)


if __name__ == "__main__":
    sys.exit(main())

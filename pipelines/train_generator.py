"""Pipeline stage `train_generator` (see irene.pipeline).

    python -m pipelines.train_generator --config CONFIG.yaml
    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m pipelines.train_generator --config CONFIG.yaml
"""

import sys

from irene.pipeline import driver_main


def main(argv: list[str] | None = None) -> int:
    return driver_main("train_generator", argv)


if __name__ == "__main__":
    sys.exit(main())

"""Pipeline stage `build_bundle` (see irene.pipeline).

    python -m pipelines.build_bundle --config CONFIG.yaml
    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m pipelines.build_bundle --config CONFIG.yaml
"""

import sys

from irene.pipeline import driver_main


def main(argv: list[str] | None = None) -> int:
    return driver_main("build_bundle", argv)


if __name__ == "__main__":
    sys.exit(main())

"""Every Ray-specific piece of irene, in one place: where the cluster starts.

    executor.py  RayExecutor: the pipeline's three seams on a cluster
    encode.py    Ray Data encoder actors (encode)
    train.py     the stages' train_funcs on Ray Train DDP workers (fit)
    oracle.py    Ray Data oracle actors (score)
    index.py     the index actor (a named, detached actor owning the durable index)

Nothing here is imported by the rest of the library at import time, and importing these
modules does not import Ray (each imports it where it is used).
"""

from __future__ import annotations


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or the job's cluster), or start a local Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or None)


def resolve_use_gpu(value: str) -> bool:
    """``auto`` -> whether the cluster has GPUs; ``true``/``false`` as given."""
    import ray

    if value == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return value == "true"

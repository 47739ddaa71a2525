"""Ray Data encoder actors: texts -> (n, d) embeddings with ``map_batches`` on an actor pool."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from irene.config import EncoderConfig, from_dict, to_dict

log = logging.getLogger(__name__)


class EncodeBatch:
    """Ray Data UDF (one encoder per actor): {"i", "text"} -> {"i", "emb" (B, d)}."""

    def __init__(self, encoder: dict[str, Any], batch_size: int) -> None:
        from irene.model.encoder import TextEncoder

        self.encoder = TextEncoder.from_config(from_dict(EncoderConfig, encoder))
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb = self.encoder.encode([str(t) for t in batch["text"]], batch_size=self.batch_size)
        return {"i": batch["i"], "emb": emb}


def auto_actors(use_gpu: bool) -> int:
    """One encoder actor per GPU of the cluster, else per CPU (each actor runs 1 torch thread:
    Ray sets OMP_NUM_THREADS to the actor's num_cpus, so a single actor would use one core)."""
    import ray

    res = ray.cluster_resources()
    return max(1, int(res.get("GPU" if use_gpu else "CPU", 1)))


def encode_texts(
    texts: list[str], encoder: EncoderConfig, actors: int, batch_size: int, use_gpu: bool
) -> np.ndarray:
    """(n, d) embeddings of ``texts`` (order kept) from an actor pool of ``actors`` encoders
    (0 = :func:`auto_actors`)."""
    import pyarrow as pa
    import ray.data

    n = len(texts)
    chunk = batch_size * 4
    # length-sorted globally (rows keep their index "i"), so each actor batch pads to similar
    # lengths, as TextEncoder.encode does in-process; sorting only within a batch pads far more
    order = np.argsort([-len(t) for t in texts], kind="stable").astype(np.int64)
    tables = [
        pa.table({"i": order[s : s + chunk], "text": [texts[i] for i in order[s : s + chunk]]})
        for s in range(0, n, chunk)
    ]
    enc = to_dict(encoder)
    enc["device"] = "cuda" if use_gpu else "cpu"
    actors = actors or auto_actors(use_gpu)
    log.info("encoding %d texts with %d encoder actor(s)", n, actors)
    ds = ray.data.from_arrow(tables).map_batches(
        EncodeBatch,
        fn_constructor_kwargs={"encoder": enc, "batch_size": batch_size},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        num_gpus=1 if use_gpu else 0,
    )
    out: np.ndarray | None = None
    seen = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if out is None:
            out = np.empty((n, batch["emb"].shape[1]), dtype=np.float32)
        out[batch["i"]] = batch["emb"]
        seen += len(batch["i"])
    if out is None or seen != n:
        raise RuntimeError(f"encoding returned {seen} of {n} embeddings")
    return out

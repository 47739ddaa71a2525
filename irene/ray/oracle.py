"""Ray Data oracle actors: (document, label) pairs -> relevance, with cost accounting.

Why not ``ray.data.llm``: the installed Ray ships ``ray.data.llm`` (vLLM/SGLang engine
processors and ``HttpRequestProcessorConfig``), but the engine processors need vLLM/SGLang and a
GPU, and the HTTP processor posts raw payloads without our Yes/No logprob parsing, Retry-After
handling, call budget or answer cache. One class-based UDF covers both backends.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from irene.config import OracleConfig
from irene.oracle.base import STAT_FIELDS, Oracle, OracleStats


class OracleScorer:
    """Ray Data actor UDF: batch {doc, label} -> adds ``relevance`` and per-batch cost deltas.

    Cost columns (``oracle_<stat>``) carry the batch's stat increments on its first row (zeros
    elsewhere), so the driver can sum them while streaming for progress and cost.
    """

    def __init__(
        self,
        oracle_cfg: OracleConfig | None = None,
        oracle_factory: Callable[[], Oracle] | None = None,
    ) -> None:
        from irene.oracle import make_oracle

        self.oracle = oracle_factory() if oracle_factory is not None else make_oracle(oracle_cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        before = self.oracle.stats.as_dict()
        pairs = list(zip(batch["doc"].tolist(), batch["label"].tolist(), strict=True))
        rel = self.oracle.score(pairs)  # (B,)
        after = self.oracle.stats.as_dict()
        out = dict(batch)
        out["relevance"] = np.asarray(rel, dtype=np.float32)
        for k in STAT_FIELDS:
            col = np.zeros(len(pairs), dtype=np.float64)
            col[0] = after[k] - before[k]
            out[f"oracle_{k}"] = col
        return out


def score_pairs(
    pairs: list[tuple[str, str]],
    oracle_cfg: OracleConfig | None = None,
    oracle_factory: Callable[[], Oracle] | None = None,
    actors: int = 1,
    batch_size: int = 16,
    num_cpus: float = 1.0,
) -> tuple[np.ndarray, dict]:
    """(relevance (P,), summed oracle stats) from a Ray Data stage of ``actors`` scorers."""
    import pandas as pd
    import ray.data
    from tqdm.auto import tqdm

    df = pd.DataFrame(
        {
            "pair": np.arange(len(pairs)),
            "doc": [d for d, _ in pairs],
            "label": [lab for _, lab in pairs],
        }
    )
    n_blocks = max(1, min(-(-len(pairs) // batch_size), 8 * actors))
    # several in-memory blocks (no repartition tasks that would compete with the actors)
    bounds = np.linspace(0, len(df), n_blocks + 1).astype(int)
    ds = ray.data.from_pandas(
        [df.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    )
    ds = ds.map_batches(
        OracleScorer,
        fn_constructor_kwargs={"oracle_cfg": oracle_cfg, "oracle_factory": oracle_factory},
        batch_size=batch_size,
        concurrency=actors,
        num_cpus=num_cpus,
    )
    rel = np.full(len(pairs), np.nan, dtype=np.float32)  # (P,)
    stats = OracleStats()
    with tqdm(total=len(pairs), desc="oracle (ray)", unit="pair", mininterval=2.0) as bar:
        for b in ds.iter_batches(batch_format="numpy", batch_size=None):
            rel[b["pair"]] = b["relevance"]
            stats.merge({k: float(b[f"oracle_{k}"].sum()) for k in STAT_FIELDS})
            bar.update(len(b["pair"]))
            bar.set_postfix(
                calls=stats.calls, cached=stats.cached_pairs, usd=f"{stats.cost_usd:.4f}"
            )
    if np.isnan(rel).any():
        raise RuntimeError("Ray Data oracle stage lost pairs")
    out = stats.as_dict()
    out["note"] = "seconds summed over actors"
    return rel, out

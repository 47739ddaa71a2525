"""LLM relevance oracles (training-time only) and oracle distillation into the bi-encoder."""

from __future__ import annotations

from irene.oracle.base import (
    BudgetExceeded,
    Oracle,
    OracleConfig,
    OracleError,
    OracleStats,
)


def make_oracle(cfg: OracleConfig) -> Oracle:
    """Build the configured backend, wrapped in the on-disk cache when ``cache_path`` is set."""
    if cfg.backend == "local":
        from irene.oracle.local import LocalOracle

        oracle = LocalOracle(cfg)
    elif cfg.backend == "http":
        from irene.oracle.http import HttpOracle

        oracle = HttpOracle(cfg)
    else:
        raise ValueError(f"oracle backend must be 'local' or 'http', got {cfg.backend!r}")
    if cfg.cache_path:
        from irene.oracle.cache import CachedOracle, OracleCache

        return CachedOracle(oracle, OracleCache(cfg.cache_path))
    return oracle


__all__ = [
    "BudgetExceeded",
    "Oracle",
    "OracleConfig",
    "OracleError",
    "OracleStats",
    "make_oracle",
]

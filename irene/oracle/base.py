"""The relevance-oracle interface: score (document, label) pairs with a relevance in [0, 1].

An oracle answers a yes/no prompt per pair; the relevance is P("Yes") renormalised over the
"Yes" and "No" answers, read from next-token logits (local model) or top logprobs (HTTP).
Oracles are used at training time only (distillation into the bi-encoder); never at serving.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from irene.config import (  # noqa: F401  (re-exported: the oracle modules' names)
    DEFAULT_PROMPT,
    DEFAULT_SYSTEM_PROMPT,
    PACKAGED_SMOLLM2,
    OracleConfig,
)

log = logging.getLogger(__name__)

YES_TOKENS = ("yes",)  # compared after strip() + lower()
NO_TOKENS = ("no",)


class OracleError(RuntimeError):
    """An oracle could not produce a relevance (after retries); nothing was cached."""


class BudgetExceeded(OracleError):
    """The configured call budget (``max_calls``) would be exceeded."""


@dataclass
class OracleStats:
    """Running cost counters of one oracle (thread-safe ``add``)."""

    calls: int = 0  # forward passes (local) / HTTP requests incl. retries (http)
    pairs: int = 0  # pairs scored by the model (cache hits excluded)
    cached_pairs: int = 0  # pairs answered from the cache
    seconds: float = 0.0  # wall time spent scoring
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)

    def merge(self, other: OracleStats | Mapping[str, float]) -> None:
        d = other.as_dict() if isinstance(other, OracleStats) else other
        self.add(**{k: d[k] for k in STAT_FIELDS if k in d})

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        d = {k: getattr(self, k) for k in STAT_FIELDS}
        d["seconds"] = round(d["seconds"], 3)
        d["pairs_per_s"] = round(self.pairs_per_s, 3)
        return d


STAT_FIELDS = (
    "calls",
    "pairs",
    "cached_pairs",
    "seconds",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
)


@runtime_checkable
class Oracle(Protocol):
    """Scores (document, label) pairs: relevance in [0, 1] per pair, (n,) float32."""

    stats: OracleStats

    @property
    def identity(self) -> str:  # model + prompt, for cache keys
        ...

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...


def clip_text(text: str, max_chars: int) -> str:
    return text if max_chars <= 0 or len(text) <= max_chars else text[:max_chars].rstrip() + "…"


def format_prompt(template: str, document: str, label: str, max_chars: int = 0) -> str:
    return template.format(
        document=clip_text(document, max_chars), label=clip_text(label, max_chars)
    )


def chat_messages(cfg: OracleConfig, document: str, label: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    msgs.append(
        {"role": "user", "content": format_prompt(cfg.prompt, document, label, cfg.max_chars)}
    )
    return msgs


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def p_yes_from_logprobs(top: Mapping[str, float]) -> float | None:
    """P(Yes) renormalised over Yes/No from a {token: logprob} map of top alternatives.

    Token variants ("Yes", " yes", ...) are pooled. If only one side appears among the top
    alternatives, the other side is given the smallest listed logprob (an upper bound of its
    true logprob, so the estimate is conservative). None if neither appears.
    """
    yes = [lp for t, lp in top.items() if t.strip().lower() in YES_TOKENS]
    no = [lp for t, lp in top.items() if t.strip().lower() in NO_TOKENS]
    if not yes and not no:
        return None
    floor = min(top.values())
    ly = _logsumexp(yes) if yes else floor
    ln = _logsumexp(no) if no else floor
    return 1.0 / (1.0 + math.exp(ln - ly))


def check_relevance(values: np.ndarray, n: int) -> np.ndarray:
    """Validate an oracle's output: (n,) finite float32 in [0, 1], else OracleError."""
    out = np.asarray(values, dtype=np.float32).reshape(-1)
    if out.shape != (n,) or not np.isfinite(out).all() or (out < 0).any() or (out > 1).any():
        raise OracleError(f"oracle returned invalid relevances (expected {n} values in [0, 1])")
    return out


class Timed:
    """Context manager adding elapsed wall time to ``stats.seconds``."""

    def __init__(self, stats: OracleStats) -> None:
        self.stats = stats

    def __enter__(self) -> Timed:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.stats.add(seconds=time.perf_counter() - self.t0)


def score_pairs(
    oracle: Oracle,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
    desc: str = "oracle",
    on_progress: Callable[[int, OracleStats], None] | None = None,
) -> np.ndarray:
    """Score pairs in-process in batches with a progress bar (pairs, cost so far, ETA)."""
    from tqdm.auto import tqdm

    out = np.empty(len(pairs), dtype=np.float32)  # (n,)
    with tqdm(total=len(pairs), desc=desc, unit="pair", mininterval=2.0) as bar:
        for s in range(0, len(pairs), batch_size):
            out[s : s + batch_size] = oracle.score(pairs[s : s + batch_size])
            bar.update(min(batch_size, len(pairs) - s))
            st = oracle.stats
            bar.set_postfix(calls=st.calls, cached=st.cached_pairs, usd=f"{st.cost_usd:.4f}")
            if on_progress is not None:
                on_progress(s + batch_size, st)
    log.info("oracle scored %d pairs: %s", len(pairs), oracle.stats.as_dict())
    return out

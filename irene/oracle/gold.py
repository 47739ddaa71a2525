"""A diagnostic "oracle" that answers from ground-truth labels: the ceiling of distillation.

Not a zero-shot method (it reads training labels). ``irene benchmark --setting ezxmc --set
distill.gold_oracle=true`` adds it as an extra arm run through the very same shortlist -> judge ->
fine-tune path, so the gap between ``llm_oracle`` and ``gold_oracle`` measures how much the
judge limits the result, separately from the distillation machinery.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from irene.oracle.base import OracleStats


class GoldOracle:
    """Relevance 1.0 for known (document, label) text pairs, 0.0 otherwise."""

    identity = "gold-labels"

    def __init__(self, relevant_pairs: Iterable[tuple[str, str]]) -> None:
        self.relevant = set(relevant_pairs)
        self.stats = OracleStats()

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.stats.add(calls=1, pairs=len(pairs))
        return np.asarray([float(p in self.relevant) for p in pairs], dtype=np.float32)

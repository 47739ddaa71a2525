"""Item records: the payload stored with every vector (text, metadata, source, bundle version).

:class:`Records` is one batch of them, column by column and aligned with a batch of ids; it
travels with the vectors through the write-ahead log, snapshots, the change feed and Ray
calls. Only the HTTP edge turns records into per-item dicts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SOURCES = ("trained", "generated")
FIELDS = ("text", "metadata", "source", "version")


@dataclass(frozen=True)
class Records:
    """Columns of item records, row i belongs to id i of the batch it travels with.

    ``metadata`` values are JSON-serialisable dicts (keyword, int, float, bool, list of
    keywords); ``source`` is ``"trained"`` (a classifier learned from interactions) or
    ``"generated"`` (IRENE); ``version`` is the bundle version that made the vector."""

    text: list[str]
    metadata: list[dict[str, Any]]
    source: list[str]
    version: list[str]

    def __post_init__(self) -> None:
        n = len(self.text)
        for name in FIELDS[1:]:
            if len(getattr(self, name)) != n:
                raise ValueError(f"records: {name} has {len(getattr(self, name))} rows, text {n}")
        for i, s in enumerate(self.source):
            if s not in SOURCES:
                raise ValueError(f"records: source[{i}] must be one of {SOURCES}, got {s!r}")

    def __len__(self) -> int:
        return len(self.text)

    @classmethod
    def of(
        cls,
        texts: Sequence[str],
        metadata: Sequence[dict[str, Any] | None] | None = None,
        source: str | Sequence[str] = "generated",
        version: str | Sequence[str] = "",
    ) -> Records:
        """Records for ``texts``; a single ``source`` / ``version`` applies to every row."""
        n = len(texts)
        meta = [dict(m or {}) for m in metadata] if metadata is not None else [{} for _ in texts]
        src = [source] * n if isinstance(source, str) else list(source)
        ver = [version] * n if isinstance(version, str) else list(version)
        return cls(list(texts), meta, src, ver)

    def take(self, rows: Sequence[int]) -> Records:
        """The records of ``rows`` (positions in this batch), in that order."""
        rows = list(rows)
        return Records(*([getattr(self, f)[i] for i in rows] for f in FIELDS))

    def row(self, i: int) -> dict[str, Any]:
        return {f: getattr(self, f)[i] for f in FIELDS}

    def to_json(self) -> dict[str, list]:
        """Plain columns (for a JSON log header)."""
        return {f: list(getattr(self, f)) for f in FIELDS}

    @classmethod
    def from_json(cls, cols: dict[str, list]) -> Records:
        return cls(*(list(cols[f]) for f in FIELDS))

    @staticmethod
    def metadata_json(meta: dict[str, Any]) -> str:
        """Canonical JSON of one metadata dict (sorted keys, no NaN)."""
        return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False)

"""Item metadata: the one validator of the user's per-item metadata (HTTP ingest, bulk ingest).

Metadata is a flat JSON object: keys are non-empty strings, values are a string, an integer
(int64), a finite float, a bool or a list of strings. Nothing nested, no nulls: what filters
will later compare must have one obvious type. Errors name the bad field the way the caller
wrote it (``items[3].metadata.price``) so a user can fix the row.
"""

from __future__ import annotations

import math
from typing import Any

from irene.index.records import Records

MAX_KEY_CHARS = 128
MAX_METADATA_BYTES = 4096  # canonical JSON of one item's metadata (ServeLimits' default)
INT64 = 1 << 63


class MetadataError(ValueError):
    """Metadata that breaks the rules; the message starts with the bad field's path."""


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list | tuple):
        return "a list"
    return type(v).__name__


def _check_value(v: Any, where: str) -> Any:
    if isinstance(v, bool | str):
        return v
    if isinstance(v, int):
        if not -INT64 <= v < INT64:
            raise MetadataError(f"{where}: integer out of the int64 range")
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise MetadataError(f"{where}: numbers must be finite, got {v}")
        return v
    if isinstance(v, list | tuple):
        for j, s in enumerate(v):
            if not isinstance(s, str):
                raise MetadataError(f"{where}[{j}]: a list may hold strings only, got {_kind(s)}")
        return list(v)
    raise MetadataError(
        f"{where}: expected a string, number, bool or list of strings, got {_kind(v)}"
    )


def check_metadata(
    meta: Any, where: str = "metadata", max_bytes: int | None = None
) -> dict[str, Any]:
    """The metadata as a plain dict (``None`` -> ``{}``), or :class:`MetadataError` naming
    the first bad field (``<where>.<key>``). ``max_bytes``: limit of its canonical JSON."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise MetadataError(f"{where}: expected an object, got {_kind(meta)}")
    out: dict[str, Any] = {}
    for key, v in meta.items():
        if not isinstance(key, str) or not key:
            raise MetadataError(f"{where}: keys must be non-empty strings, got {key!r}")
        if len(key) > MAX_KEY_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in key):
            raise MetadataError(
                f"{where}: key {key[:40]!r} is longer than {MAX_KEY_CHARS} characters or "
                "holds control characters"
            )
        out[key] = _check_value(v, f"{where}.{key}")
    if max_bytes is not None:
        size = metadata_bytes(out)
        if size > max_bytes:
            raise MetadataError(
                f"{where}: {size} bytes of JSON, more than max_metadata_bytes={max_bytes}"
            )
    return out


def metadata_bytes(meta: dict[str, Any]) -> int:
    """Bytes of the canonical JSON of ``meta`` (what the size limit counts)."""
    return len(Records.metadata_json(meta).encode("utf-8"))

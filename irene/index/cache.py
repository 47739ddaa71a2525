"""A small thread-safe LRU of filtered-search work, bounded in bytes and tied to a write version.

Filters repeat in the workloads a filtered query serves ("in stock", "this advertiser"), and
on an index that holds a million vectors the costly parts of such a query are the same on
every call: evaluating the filter over every record, and then gathering the matching vectors
from random places in memory or building an ``IDSelectorBatch`` of them. ``ShardedIndex``
keeps the matching ids of recent filters and each ``Shard`` what its plan prepared (gathered
vectors or selector), here, under the filter's canonical JSON. An entry is
valid only for the write ``version`` it was made at (every write bumps the version), so a
hit is exactly what recomputing would give; nothing is ever served after a write.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class VersionedLRU:
    """``key -> value`` entries of ``nbytes`` each, dropped least recently used first once
    their sum exceeds ``max_bytes`` (0 disables the cache), valid for one ``version``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, tuple[int, Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, version: int, check: Callable[[Any], bool] | None = None) -> Any | None:
        """The value kept under ``key`` at ``version`` (and passing ``check``), else None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != version or (check is not None and not check(entry[1])):
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, key: str, version: int, value: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._entries[key] = (version, value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, (_, _, size) = self._entries.popitem(last=False)
                self._bytes -= size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

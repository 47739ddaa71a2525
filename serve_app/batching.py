"""Compute-level micro-batching behind ``@serve.batch``.

Ray Serve closes a batch when ``batch_wait_timeout_s`` expires even while the previous batch
is still computing, so under load it queues many tiny batches instead of one large one (the
README's serving section has the measurement). :class:`Coalescer` batches where it matters:
``process(items)`` runs one call at a time, and everything submitted while a call runs is
merged into the next call (up to ``max_items``). An idle replica starts at once (no wait); a
busy one forms batches as large as the load, and with ``linger_s`` waits that long at most
for a call serving as many callers as its last one (closed-loop clients otherwise settle into
two half-size calls in flight; README: Batching). The deployments keep ``@serve.batch`` in
front (wait 0, many concurrent batches) and hand each of its batches to a Coalescer.

A lone caller is answered by ``process_here(items)`` in the caller's thread when one is given:
a batch of one without the hand-off to a compute thread (None from it: the usual path). Lone
means: the Coalescer idle, its last call served one submission (not under load), and after
yielding once to the event loop -- so that requests which arrived together with this one get
as far as counting themselves -- ``alone()`` is still true (e.g. no other request in flight).
Running in place blocks the event loop for that call, hence all three conditions: under load
the usual path keeps batching.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class Coalescer:
    """Merges concurrent ``submit(items)`` calls into sequential ``process(all items)`` calls."""

    def __init__(
        self,
        process: Callable[[list], Awaitable[list]],
        max_items: int,
        linger_s: float = 0.0,
        process_here: Callable[[list], list | None] | None = None,
        alone: Callable[[], bool] | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        if linger_s < 0:
            raise ValueError("linger_s must be >= 0")
        if (process_here is None) != (alone is None):
            raise ValueError("give both process_here and alone, or neither")
        self._process = process
        self._process_here = process_here
        self._alone = alone
        self.max_items = max_items
        self.linger_s = linger_s
        self._pending: list[tuple[list, asyncio.Future]] = []
        self._arrived: asyncio.Event | None = None
        self._last = 0  # submissions the last call served
        self._running = False
        self.calls = 0  # process() calls so far
        self.items = 0  # items processed so far

    async def submit(self, items: list) -> list:
        """Results for ``items`` (one per item, in order; a slice of what ``process`` returned,
        e.g. rows of an array), computed with other callers' items."""
        if not items:
            return []
        if self._process_here is not None and self._last <= 1 and self._idle():
            await asyncio.sleep(0)  # requests that arrived with this one count themselves
            out = self._process_here(list(items)) if self._idle() and self._alone() else None
            if out is not None:
                self._count(len(items), 1)
                return out
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((list(items), fut))
        if self._arrived is not None:
            self._arrived.set()
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    def _idle(self) -> bool:
        return not self._running and not self._pending

    def _take(self) -> list[tuple[list, asyncio.Future]]:
        """Whole submissions, oldest first, up to max_items (at least one)."""
        taken, n = [], 0
        while self._pending and (not taken or n + len(self._pending[0][0]) <= self.max_items):
            sub = self._pending.pop(0)
            taken.append(sub)
            n += len(sub[0])
        return taken

    async def _linger(self) -> None:
        """Under load -- the last call served more submissions than are pending now -- wait up
        to ``linger_s`` for as many (or ``max_items``): the callers of that call are sending
        their next requests, and one call for all of them costs less than two (README:
        Batching). A lone caller never waits."""
        if not self.linger_s or self._last <= 1:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger_s
        if self._arrived is None:
            self._arrived = asyncio.Event()
        while (
            len(self._pending) < self._last
            and sum(len(items) for items, _ in self._pending) < self.max_items
        ):
            left = deadline - loop.time()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    async def _drain(self) -> None:
        try:
            while self._pending:
                await self._linger()
                taken = self._take()
                flat: list[Any] = [x for items, _ in taken for x in items]
                try:
                    out = await self._process(flat)
                    if len(out) != len(flat):
                        raise RuntimeError(f"process returned {len(out)} results for {len(flat)}")
                except Exception as e:  # fail this call's submissions, keep serving
                    for _, fut in taken:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                self._count(len(flat), len(taken))
                start = 0
                for items, fut in taken:
                    if not fut.done():
                        fut.set_result(out[start : start + len(items)])
                    start += len(items)
        finally:
            self._running = False

    def _count(self, items: int, submissions: int) -> None:
        self.calls += 1
        self.items += items
        self._last = submissions

    def stats(self) -> dict:
        return {
            "calls": self.calls,
            "mean_items": round(self.items / self.calls, 2) if self.calls else 0.0,
        }

"""Index copies in a Serve replica: each follows one shard actor's change feed.

:class:`CopyFollower` keeps an :class:`~irene.index.feed.IndexCopy` of one shard actor
current: a background task long-polls the actor's feed and applies what it gets in the
replica's compute thread (so changes are ordered with the searches of that thread).
:func:`copies_view` gives a replica the read path over its copies
(:class:`irene.index.view.CopiesView`, falling back to the shard actors while a copy may be
stale). Used by every replica that answers from copies: an ``Ingress`` that copies every
shard (``index.read_replica``) or a ``ShardReader`` that copies one (``index.shard_readers``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from irene.index.feed import IndexCopy
from irene.index.view import CopiesView, IndexView
from irene.ray.index import FEED_GROUP

log = logging.getLogger("irene.serve")


class CopyFollower:
    """Keeps ``copy`` (an :class:`IndexCopy`) following one shard actor's change feed.

    ``handle()`` returns the shard actor's handle (looked up lazily; a restarted actor gets a
    new one); ``pool`` is the thread that searches the copy (changes are applied there too).
    """

    def __init__(self, handle: Callable[[], Any], pool: Executor) -> None:
        self.copy = IndexCopy()
        self._handle = handle
        self._pool = pool
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start (or restart, if it ended) following the feed; needs a running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        rep = self.copy
        failures = 0
        while True:
            try:
                timeout = rep.poll_timeout_s()
                ch = await (
                    self._handle()
                    .poll.options(concurrency_group=FEED_GROUP)
                    .remote(*rep.poll_args(), timeout)
                )
                if ch.state is not None or ch.records:  # ordered with searches
                    await loop.run_in_executor(self._pool, rep.apply, ch)
                else:
                    rep.apply(ch)  # a heartbeat: lease and freshness only
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # actor restarting or gone: queries go to the actor meanwhile
                rep.lost_contact()
                failures += 1
                log.warning("index copy %s: poll failed (%s); retrying", rep.name, e)
                await asyncio.sleep(min(2.0, 0.1 * failures))

    async def aclose(self) -> None:
        """Stop following; tell the actor, so its writes stop waiting for this copy."""
        if self._task is None:
            return
        self._task.cancel()
        self._task = None
        try:
            await self._handle().leave.remote(self.copy.name)
        except Exception as e:  # the actor may be gone too; it expels us after the lease
            log.warning("index copy %s: could not leave the feed (%s)", self.copy.name, e)


def copies_view(
    handles: list[Callable[[], Any]],
    pool: Executor,
    fallback: IndexView,
    observe: Callable[[str, float], None] | None = None,
) -> tuple[CopiesView, list[CopyFollower]]:
    """A view over copies of the shard actors ``handles`` (in owner order; each a function
    returning the actor's current handle), answered by ``fallback`` while any copy may be
    stale (``observe``: see :class:`CopiesView`); returns the view and the followers (start
    them in the event loop)."""
    followers = [CopyFollower(h, pool) for h in handles]
    return CopiesView([f.copy for f in followers], pool, fallback, observe), followers

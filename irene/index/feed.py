"""Index copies: a shard actor's change feed, and the followers' copies it keeps current.

A query that goes to the index actor pays a Ray call per batch (~2-3 ms on the 2-core box,
more than the search itself). A process that answers queries (an Ingress or Encoder replica)
can instead keep an :class:`IndexCopy`: a full in-memory copy of the index, searched without
a call, kept current by long-polling the actor's :class:`ChangeFeed`::

    feed.poll(follower, epoch, since, timeout_s) -> Changes

returns the records committed after ``since`` (at once when there are any, else after at most
``timeout_s``), or the whole index state when the follower is new, comes from another actor
incarnation (``epoch``: a restarted actor has a new one) or is further behind than the records
the feed keeps (``max_rows``). A poll with ``since = s`` also confirms that the follower has
applied everything up to ``s``.

**Consistency: a query that starts after a write was acknowledged sees that write, on every
replica.** The actor acknowledges a write only after :meth:`ChangeFeed.wait_followers`: every
registered follower has confirmed it, or has been expelled (and, for ``expel_after_s`` after the
feed starts, not before followers of a previous actor incarnation -- which this feed does not
know -- have seen their leases run out). A follower is expelled when
``expel_after_s`` has passed since its latest poll *arrived* without it confirming; a follower
answers from its copy only while the latest poll whose answer it has applied was *sent* less
than ``lease_s`` ago, and ``lease_s < expel_after_s``. So a follower that is cut off, stuck or
dead has stopped answering from its copy before any write it missed is acknowledged (a poll
sent later arrives after the expulsion, and its answer holds that write); meanwhile its
queries go to the actor (``irene.index.view.CopiesView`` falls back while
:meth:`IndexCopy.fresh` is False).
Costs: one copy of the index per replica (memory), and each write waits for one poll round
trip of every follower (a few ms; up to ``expel_after_s`` once when a follower dies).

Records travel as ``LogRecord``s and state dicts like the vectors, so a copy also holds the
items' records (``copy.index.lookup``).

Both classes are plain Python (threads, no Ray): the actor wires the feed to its
``DurableIndex`` (``add_listener``/``export_state``), Serve replicas drive an ``IndexCopy``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from irene.index.log import LogRecord, apply_record
from irene.index.sharded import ShardedIndex

log = logging.getLogger(__name__)


@dataclass
class Changes:
    """One poll's answer: records after the follower's seq, or the whole state (``state``)."""

    epoch: str
    seq: int  # the follower is at this seq once it has applied this answer
    lease_s: float
    records: list[LogRecord] = field(default_factory=list)
    state: dict | None = None  # ShardedIndex.state_dict() as of seq


@dataclass
class _Follower:
    confirmed: int  # applied everything up to this seq (-1: nothing of this epoch)
    arrived: float  # when its latest poll arrived (feed clock)


class ChangeFeed:
    """Committed records for followers, and the bookkeeping that makes writes wait for them.

    ``export()`` returns ``(seq, state_dict)`` consistently (``DurableIndex.export_state``);
    ``publish(record)`` must be called in seq order (``DurableIndex.add_listener``).
    """

    def __init__(
        self,
        export: Callable[[], tuple[int, dict]],
        last_seq: int,
        lease_s: float = 1.5,
        expel_after_s: float | None = None,
        max_rows: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
        grace_s: float | None = None,
    ) -> None:
        self.expel_after_s = 2 * lease_s if expel_after_s is None else expel_after_s
        if not 0 < lease_s < self.expel_after_s:
            raise ValueError("need 0 < lease_s < expel_after_s")
        self.epoch = uuid.uuid4().hex
        self.lease_s = lease_s
        self.max_rows = max_rows
        self._export = export
        self._clock = clock
        self._cond = threading.Condition()
        self._records: deque[LogRecord] = deque()
        self._rows = 0
        self._last = last_seq
        self._followers: dict[str, _Follower] = {}
        self.expelled = 0
        # followers of a previous incarnation (a restarted or re-created actor) are unknown to
        # this feed but may still be within their lease: no write is acknowledged before those
        # leases have run out (they then poll this feed, and are waited for as usual)
        grace = self.expel_after_s if grace_s is None else grace_s
        self._grace_until = clock() + grace

    # ----------------------------------------------------------------- writer side
    def publish(self, rec: LogRecord) -> None:
        with self._cond:
            self._records.append(rec)
            self._rows += len(rec.ids)
            while self._rows > self.max_rows and len(self._records) > 1:
                self._rows -= len(self._records.popleft().ids)
            self._last = rec.seq
            self._cond.notify_all()

    def wait_followers(self, seq: int) -> list[str]:
        """Block until every follower has confirmed ``seq`` or is expelled; returns the
        followers expelled meanwhile. Call after the write is durable and published."""
        expelled = []
        with self._cond:
            while True:
                now = self._clock()
                deadlines = {}
                for name, f in list(self._followers.items()):
                    if f.confirmed >= seq:
                        continue
                    if now >= f.arrived + self.expel_after_s:
                        del self._followers[name]
                        expelled.append(name)
                        self.expelled += 1
                        log.warning("index copy %s expelled: no confirmation of seq %d", name, seq)
                    else:
                        deadlines[name] = f.arrived + self.expel_after_s
                if now < self._grace_until:
                    deadlines[""] = self._grace_until
                if not deadlines:
                    return expelled
                self._cond.wait(min(deadlines.values()) - now)

    # ----------------------------------------------------------------- follower side
    def poll(self, follower: str, epoch: str | None, since: int, timeout_s: float) -> Changes:
        """What ``follower`` (at ``since`` of ``epoch``) is missing; waits up to ``timeout_s``
        for a new record when it is up to date. Confirms ``since`` for this follower."""
        with self._cond:
            current = epoch == self.epoch and since <= self._last
            self._followers[follower] = _Follower(since if current else -1, self._clock())
            self._cond.notify_all()  # writers waiting for this follower
            if current and since == self._last:
                self._cond.wait_for(lambda: self._last > since, timeout_s)
            first_kept = self._records[0].seq if self._records else self._last + 1
            if current and since >= first_kept - 1:
                recs = [r for r in self._records if r.seq > since]
                return Changes(self.epoch, self._last, self.lease_s, recs)
        # the whole state, taken outside the feed's lock (export takes the index's write lock,
        # and publish runs under that lock)
        seq, state = self._export()
        return Changes(self.epoch, seq, self.lease_s, state=state)

    def leave(self, follower: str) -> None:
        """A follower going away (e.g. a replica shutting down): writes stop waiting for it."""
        with self._cond:
            self._followers.pop(follower, None)
            self._cond.notify_all()

    def stats(self) -> dict:
        with self._cond:
            return {
                "epoch": self.epoch,
                "followers": len(self._followers),
                "kept_records": len(self._records),
                "expelled": self.expelled,
            }


class IndexCopy:
    """A follower's copy of one shard actor's index (``index``, a ``ShardedIndex``). Not
    thread-safe by itself: apply changes and search ``index`` from one thread (the Serve
    replicas use their compute thread), and only while :meth:`fresh`
    (``irene.index.view.CopiesView`` does both); ``poll_args`` may be called from another."""

    def __init__(self, name: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.name = name or uuid.uuid4().hex
        self.epoch: str | None = None
        self.seq = -1
        self.lease_s = 0.0  # from the feed
        self.index: ShardedIndex | None = None
        self._clock = clock
        self._sent = float("-inf")  # when the poll of the latest applied answer was sent
        self._in_flight_sent = float("-inf")  # when the poll now in flight was sent

    def poll_args(self) -> tuple[str, str | None, int]:
        """``(follower, epoch, since)`` for the next poll; call it right before sending (one
        poll at a time; its answer goes to :meth:`apply`)."""
        self._in_flight_sent = self._clock()
        return self.name, self.epoch, self.seq

    def poll_timeout_s(self, default: float = 0.5) -> float:
        """Long-poll wait: a third of the lease, so an idle follower stays fresh."""
        return self.lease_s / 3 if self.lease_s else default

    def lost_contact(self) -> None:
        """A poll failed: stop answering from the copy until a poll succeeds again."""
        self._sent = float("-inf")

    def apply(self, ch: Changes) -> None:
        """Apply the answer to the latest poll."""
        self.lease_s = ch.lease_s
        if ch.state is not None:
            index = ShardedIndex.from_state(ch.state, search_threads=1)
            if self.index is not None:
                self.index.close()
            self.index, self.epoch, self.seq = index, ch.epoch, ch.seq
            self._sent = self._in_flight_sent
            log.info("index copy %s loaded %d vectors at seq %d", self.name, index.count, ch.seq)
            return
        if ch.epoch != self.epoch:
            raise ValueError(f"changes of epoch {ch.epoch}, replica is at {self.epoch}")
        for rec in ch.records:
            if rec.seq <= self.seq:
                continue
            if rec.seq != self.seq + 1:  # cannot happen with one poller; resync if it does
                log.error(
                    "index copy %s: seq gap %d -> %d; resyncing", self.name, self.seq, rec.seq
                )
                self.epoch, self.seq = None, -1
                return
            apply_record(self.index, rec)
            self.seq = rec.seq
        self.seq = max(self.seq, ch.seq)
        self._sent = self._in_flight_sent

    def fresh(self) -> bool:
        """May this copy answer queries now (it holds a state, and the poll of the latest
        applied answer was sent within the lease)?"""
        return self.index is not None and self._clock() - self._sent < self.lease_s

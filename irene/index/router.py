"""Routing over index shard *owners* (one process per shard): partition, scatter, gather.

An index spread over ``n`` owners (Ray actors in production, plain ``IndexActor`` objects in
tests and in-process tools) stores id ``s`` in owner ``owner_of(int_id(s), n)``. Each owner
is the single writer of its own durable index (``irene.index.log.DurableIndex``: its own log
and snapshots) and may hold several FAISS shards inside (``ShardedIndex``, which partitions by
``int_id % n_shards``; owners use the *high* 32 bits so the two partitions are independent).

:class:`ShardRouter` turns one logical call into a :class:`Plan`: the calls to make on each
owner plus a ``combine`` that merges their answers (ids back in the caller's order, top-k
merged across owners). The plan is executed by whoever holds the owners -- synchronously
(:func:`run_plan`: in-process objects or ``ray.get``) or concurrently (``irene.ray.index``'s
async router) -- so the routing logic exists once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from irene.index.filters import Filter
from irene.index.records import Records, as_records
from irene.index.sharded import check_str_ids, int_id
from irene.index.topk import merge_topk


def owner_of(iid: int, n_owners: int) -> int:
    """The owner of int id ``iid`` (high 32 bits, independent of ``int_id % n_shards``)."""
    return (iid >> 32) % n_owners


def owner_uri(uri: str, owner: int, n_owners: int) -> str:
    """Where owner ``owner`` keeps its log and snapshots (``uri`` itself when alone)."""
    if n_owners == 1:
        return uri
    return f"{uri.rstrip('/')}/shard-{owner:03d}-of-{n_owners:03d}"


def owner_name(name: str, owner: int, n_owners: int) -> str:
    """The Ray actor name of owner ``owner`` (``name`` itself when alone)."""
    return name if n_owners == 1 else f"{name}-shard-{owner:03d}-of-{n_owners:03d}"


@dataclass
class Plan:
    """``calls``: (owner, method name, args) to make; ``combine(answers)`` merges the answers
    (one per call, in the order of ``calls``) into the logical call's result."""

    calls: list[tuple[int, str, tuple]]
    combine: Callable[[list[Any]], Any]


def _sum_dicts(dicts: list[dict]) -> dict:
    """Per key, the sum over the dicts that have it."""
    out: dict = {}
    for d in dicts:
        for key, n in d.items():
            out[key] = out.get(key, 0) + n
    return out


class ShardRouter:
    """Plans for the index operations over ``n_owners`` owners (see the module docstring)."""

    def __init__(self, n_owners: int) -> None:
        if n_owners < 1:
            raise ValueError("n_owners must be >= 1")
        self.n = int(n_owners)

    def owner(self, id_: str) -> int:
        return owner_of(int_id(id_), self.n)

    def split(self, ids: Sequence[str]) -> dict[int, list[int]]:
        """Positions of ``ids`` per owner (owners without ids are absent)."""
        parts: dict[int, list[int]] = {}
        for pos, s in enumerate(ids):
            parts.setdefault(self.owner(s), []).append(pos)
        return parts

    def _per_id(self, method: str, ids: Sequence[str], default: Any) -> Plan:
        """A call whose answer is one value per id, in the caller's order."""
        ids = check_str_ids(ids)
        parts = self.split(ids)
        owners = sorted(parts)

        def combine(answers: list) -> list:
            out = [default] * len(ids)
            for o, ans in zip(owners, answers, strict=True):
                for pos, v in zip(parts[o], ans, strict=True):
                    out[pos] = v
            return out

        return Plan([(o, method, ([ids[p] for p in parts[o]],)) for o in owners], combine)

    def _everyone(self, method: str, args: tuple, combine: Callable[[list], Any]) -> Plan:
        return Plan([(o, method, args) for o in range(self.n)], combine)

    # ----------------------------------------------------------------- writes
    def add(self, ids: Sequence[str], vecs, records: Records | None = None) -> Plan:
        """Upsert (with each id's record, or none); the answer is the highest log sequence
        number among the owners written (each owner has its own sequence; the write is
        durable on all of them on return)."""
        calls, _ = self._split_write("add", ids, vecs, records)
        return Plan(calls, lambda seqs: max(seqs, default=-1))

    def upsert(self, ids: Sequence[str], vecs, records: Records | None = None) -> Plan:
        """:meth:`add` that also says, per id in the caller's order, whether it was new:
        the answer is ``(seq, created (n,) bool)``."""
        calls, positions = self._split_write("upsert", ids, vecs, records)

        def combine(answers: list) -> tuple[int, np.ndarray]:
            created = np.zeros(len(ids), dtype=bool)
            for pos, (_, flags) in zip(positions, answers, strict=True):
                created[pos] = flags
            return max((seq for seq, _ in answers), default=-1), created

        return Plan(calls, combine)

    def _split_write(self, method: str, ids, vecs, records) -> tuple[list, list]:
        """The calls of one write, one per owner concerned (records split with their ids),
        and each call's positions in the caller's batch; shapes are checked before any
        owner is written."""
        ids = check_str_ids(ids)
        x = np.asarray(vecs, dtype=np.float32)  # (n, d)
        if x.ndim != 2 or len(x) != len(ids):
            raise ValueError(f"{len(ids)} ids but vectors of shape {x.shape}")
        records = as_records(records)  # validated when it was built
        if records is not None and len(records) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(records)} records")
        parts = sorted(self.split(ids).items())
        calls = [
            (
                o,
                method,
                ([ids[p] for p in pos], x[pos], None if records is None else records.take(pos)),
            )
            for o, pos in parts
        ]
        return calls, [pos for _, pos in parts]

    def delete(self, ids: Sequence[str]) -> Plan:
        return self._per_id("delete", ids, False)

    def seal(self, sealed: bool = True) -> Plan:
        """Seal (or unseal) every owner; the answer is each owner's last seq."""
        return self._everyone("seal", (bool(sealed),), list)

    def snapshot(self) -> Plan:
        return self._everyone("snapshot", (), max)

    # ----------------------------------------------------------------- reads
    def contains(self, ids: Sequence[str]) -> Plan:
        return self._per_id("contains", ids, False)

    def get_many(self, ids: Sequence[str]) -> Plan:
        return self._per_id("get_many", ids, None)

    def get_records(self, ids: Sequence[str]) -> Plan:
        """Per id its record dict, or None when absent, in the caller's order."""
        return self._per_id("get_records", ids, None)

    def get(self, id_: str) -> Plan:
        return Plan([(self.owner(id_), "get", (id_,))], lambda a: a[0])

    def search(self, queries, k: int, filter: Filter | None = None) -> Plan:
        """Top-k ``(scores, int64 ids)`` arrays over every owner, merged (of the items
        ``filter`` matches: each owner filters before its top-k)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)  # (m, d)
        args = (q, int(k)) if filter is None else (q, int(k), filter)
        return self._everyone("search", args, lambda parts: merge_topk(parts, int(k)))

    def count_where(self, filter: Filter | None = None) -> Plan:
        return self._everyone("count_where", (filter,), sum)

    def scroll(self, after: int, limit: int, filter: Filter | None = None) -> Plan:
        """The next ``limit`` int64 ids above ``after`` over every owner, ascending."""
        return self._everyone(
            "scroll", (int(after), int(limit), filter), lambda parts: merge_scroll(parts, limit)
        )

    def delete_where(self, filter: Filter) -> Plan:
        return self._everyone("delete_where", (filter,), sum)

    def lookup(self, iids) -> Plan:
        """``(string ids, records)`` of int64 ids (None, None where absent), in the caller's
        order; each id asked of its owner (``owner_of``)."""
        iids = np.asarray(iids, dtype=np.int64).reshape(-1)
        by_owner = (iids >> 32) % self.n
        owners = np.unique(by_owner).tolist()
        pos = {o: np.flatnonzero(by_owner == o) for o in owners}

        def combine(answers: list) -> tuple[list, list]:
            names: list = [None] * len(iids)
            records: list = [None] * len(iids)
            for o, (n, r) in zip(owners, answers, strict=True):
                for p, ni, ri in zip(pos[o].tolist(), n, r, strict=True):
                    names[p], records[p] = ni, ri
            return names, records

        return Plan([(o, "lookup", (iids[pos[o]],)) for o in owners], combine)

    def count(self) -> Plan:
        return self._everyone("count", (), sum)

    def set_search_knobs(self, nprobe: int | None = None, ef_search: int | None = None) -> Plan:
        return self._everyone("set_search_knobs", (nprobe, ef_search), lambda _: None)

    def memory(self) -> Plan:
        return self._everyone("memory", (), list)  # one dict per owner

    def stats(self) -> Plan:
        def combine(per: list[dict]) -> dict:
            first = per[0]
            return {
                "dim": first["dim"],
                "uri": first["uri"] if self.n == 1 else first["uri"].rsplit("/shard-", 1)[0],
                "kind": first["kind"],
                "n_owners": self.n,
                "n_shards": sum(p["n_shards"] for p in per),
                "count": sum(p["count"] for p in per),
                "integrity": _sum_dicts([p["integrity"] for p in per]),
                "records": _sum_dicts([p["records"] for p in per if "records" in p]),
                "versions": _sum_dicts([p.get("versions", {}) for p in per]),
                "last_seq": max(p["last_seq"] for p in per),
                "pid": first["pid"] if self.n == 1 else [p["pid"] for p in per],
                "owners": per,
            }

        return self._everyone("stats", (), combine)


def merge_scroll(parts: list[np.ndarray], limit: int) -> np.ndarray:
    """The first ``limit`` of the owners' ascending id pages, ascending."""
    ids = np.sort(np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]))
    return ids[: int(limit)]


def run_plan(plan: Plan, owners: Sequence[Any], resolve: Callable[[Any], Any] | None = None):
    """Execute ``plan`` on ``owners`` one call after another. ``owners`` are objects with the
    ``IndexActor`` methods; for Ray handles pass ``resolve=ray.get`` (the calls are all
    started first, so they run concurrently on the actors)."""
    if resolve is None:
        return plan.combine([getattr(owners[o], m)(*a) for o, m, a in plan.calls])
    refs = [getattr(owners[o], m).remote(*a) for o, m, a in plan.calls]
    return plan.combine([resolve(r) for r in refs])


class RoutedIndex:
    """One index over its owners, with the calls of one owner (``contains``, ``add``,
    ``search``, ...), each answered through :class:`ShardRouter`. ``owners``: in-process
    objects (tests, ``irene ingest`` without Ray) or Ray actor handles with
    ``resolve=ray.get``."""

    def __init__(self, owners: Sequence[Any], resolve: Callable[[Any], Any] | None = None):
        self.owners = list(owners)
        self.router = ShardRouter(len(self.owners))
        self._resolve = resolve

    def __getattr__(self, method: str):
        if method.startswith("_") or method in ("owners", "router"):
            raise AttributeError(method)
        plan_of = getattr(self.router, method)  # AttributeError for unknown methods
        return lambda *args, **kwargs: run_plan(
            plan_of(*args, **kwargs), self.owners, self._resolve
        )

    def close(self) -> None:
        if self._resolve is None:
            for o in self.owners:
                o.close()

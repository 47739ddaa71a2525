"""The compute-level Coalescer behind @serve.batch: merging, order, limits, failures."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.batching import Coalescer


def _run(coro):
    return asyncio.run(coro)


def test_submissions_made_while_busy_are_merged_into_one_call():
    calls: list[list] = []

    async def main():
        release = asyncio.Event()

        async def process(items):
            calls.append(list(items))
            if len(calls) == 1:
                await release.wait()  # the first call is "computing"
            return [x * 10 for x in items]

        c = Coalescer(process, max_items=100)
        first = asyncio.create_task(c.submit([1]))
        await asyncio.sleep(0)  # first call starts and blocks
        rest = [asyncio.create_task(c.submit([i, i + 1])) for i in (2, 4, 6)]
        await asyncio.sleep(0)
        release.set()
        return await first, [await r for r in rest], c.stats()

    first, rest, stats = _run(main())
    assert first == [10]
    assert rest == [[20, 30], [40, 50], [60, 70]]  # each caller gets its own rows, in order
    assert calls == [[1], [2, 3, 4, 5, 6, 7]]  # three waiting submissions -> one call
    assert stats == {"calls": 2, "mean_items": 3.5}


def test_max_items_splits_but_never_splits_a_submission():
    calls: list[int] = []

    async def main():
        async def process(items):
            calls.append(len(items))
            await asyncio.sleep(0)
            return items

        c = Coalescer(process, max_items=3)
        subs = [[1, 2], [3, 4], [5], [6, 7, 8, 9]]  # the last is larger than max_items
        return await asyncio.gather(*[c.submit(s) for s in subs])

    out = _run(main())
    assert out == [[1, 2], [3, 4], [5], [6, 7, 8, 9]]
    assert calls == [2, 3, 4]  # [1,2] alone (started at once); [3,4]+[5]; [6..9] whole


def test_a_failing_call_fails_only_its_callers_and_the_coalescer_keeps_serving():
    async def main():
        async def process(items):
            await asyncio.sleep(0)
            if "bad" in items:
                raise ValueError("boom")
            return [s.upper() for s in items]

        c = Coalescer(process, max_items=1)
        res = await asyncio.gather(
            c.submit(["a"]), c.submit(["bad"]), c.submit(["c"]), return_exceptions=True
        )
        return res, await c.submit(["d"])

    res, later = _run(main())
    assert res[0] == ["A"] and isinstance(res[1], ValueError) and res[2] == ["C"]
    assert later == ["D"]


def test_wrong_result_count_is_an_error_and_empty_submit_is_free():
    async def main():
        async def process(items):
            return items[:-1]

        c = Coalescer(process, max_items=8)
        with pytest.raises(RuntimeError, match="results for"):
            await c.submit([1, 2])
        return await c.submit([])

    assert _run(main()) == []
    with pytest.raises(ValueError):
        Coalescer(lambda items: items, max_items=0)


def _closed_loop(linger_s: float, clients: int, rounds: int, think_s: float) -> list[int]:
    """``clients`` callers, each submitting again ``think_s`` after its answer (as HTTP
    clients do); the sizes of the calls made."""
    calls: list[int] = []

    async def main():
        async def process(items):
            calls.append(len(items))
            await asyncio.sleep(0.005)  # the compute
            return items

        c = Coalescer(process, max_items=32, linger_s=linger_s)

        async def client(i: int) -> None:
            for r in range(rounds):
                assert await c.submit([(i, r)]) == [(i, r)]
                await asyncio.sleep(think_s * (1 + i % 3) / 3)  # replies come back unevenly

        await asyncio.gather(*[client(i) for i in range(clients)])

    _run(main())
    return calls


def test_linger_waits_under_load_for_a_call_as_large_as_the_last():
    # without it, callers whose replies came back late fall into a later, smaller call
    assert len(_closed_loop(0.0, clients=8, rounds=6, think_s=0.002)) > 6 + 2
    assert _closed_loop(0.03, clients=8, rounds=6, think_s=0.002) == [8] * 6
    # one caller: the last call had 1 item, so nothing is waited for (5 calls, not 5 s)
    t0 = time.monotonic()
    assert _closed_loop(1.0, clients=1, rounds=5, think_s=0.0) == [1] * 5
    assert time.monotonic() - t0 < 0.5


def test_linger_must_not_be_negative():
    with pytest.raises(ValueError, match="linger_s"):
        Coalescer(lambda items: items, max_items=2, linger_s=-1)


def test_linger_counts_callers_not_items():
    # one caller sending a 6-text request, then a 1-text one: the last call served one
    # caller, so the next call does not wait for 6 items
    async def main():
        async def process(items):
            await asyncio.sleep(0)
            return items

        c = Coalescer(process, max_items=32, linger_s=1.0)
        t0 = time.monotonic()
        assert await c.submit(list("abcdef")) == list("abcdef")
        assert await c.submit(["g"]) == ["g"]
        return time.monotonic() - t0

    assert _run(main()) < 0.5


def _here_coalescer(alone: list[bool], here_answers: bool = True):
    """A Coalescer whose batched path and run-here path log what they answered."""
    log: list[tuple[str, list]] = []

    async def process(items):
        log.append(("batched", list(items)))
        await asyncio.sleep(0.01)  # "computing" in another thread
        return [x * 10 for x in items]

    def process_here(items):
        if not here_answers:
            return None  # e.g. the compute thread busy
        log.append(("here", list(items)))
        return [x * 100 for x in items]

    return Coalescer(process, 8, 0.0, process_here, lambda: alone[0]), log


def test_a_lone_caller_is_answered_in_place_when_idle():
    c, log = _here_coalescer([True])
    assert _run(c.submit([1, 2])) == [100, 200]
    assert log == [("here", [1, 2])]
    assert c.stats() == {"calls": 1, "mean_items": 2.0}


def test_not_alone_or_refused_in_place_goes_the_batched_way():
    c, log = _here_coalescer([False])  # another request in flight
    assert _run(c.submit([1])) == [10]
    assert log == [("batched", [1])]

    c, log = _here_coalescer([True], here_answers=False)
    assert _run(c.submit([1])) == [10]
    assert log == [("batched", [1])]


def test_while_a_batch_computes_even_a_lone_caller_joins_the_queue():
    alone = [True]
    c, log = _here_coalescer(alone)

    async def main():
        alone[0] = False
        first = asyncio.create_task(c.submit([1]))  # batched: another request in flight
        while not log:  # until its call is computing
            await asyncio.sleep(0)
        alone[0] = True
        second = await c.submit([2])  # the Coalescer is busy: queued, not run in place
        return await first, second

    assert _run(main()) == ([10], [20])
    assert log == [("batched", [1]), ("batched", [2])]


def test_run_in_place_needs_both_callables():
    async def process(items):
        return items

    with pytest.raises(ValueError, match="process_here and alone"):
        Coalescer(process, 4, 0.0, process_here=lambda items: items)


def test_requests_arriving_together_are_batched_not_run_in_place_one_by_one():
    in_flight = [0]
    log: list[tuple[str, list]] = []

    async def process(items):
        log.append(("batched", list(items)))
        await asyncio.sleep(0.01)
        return items

    def process_here(items):
        log.append(("here", list(items)))
        return items

    c = Coalescer(process, 8, 0.0, process_here, lambda: in_flight[0] <= 1)

    async def request(x):  # counts itself in flight before it reaches the batcher
        in_flight[0] += 1
        try:
            return await c.submit([x])
        finally:
            in_flight[0] -= 1

    async def main():
        burst = await asyncio.gather(*(request(i) for i in range(4)))
        after = await request(9)  # the burst's call served 4 callers: not in place yet
        lone = await request(10)  # the last call served one: in place again
        return burst, after, lone

    assert _run(main()) == ([[0], [1], [2], [3]], [9], [10])
    assert log == [("batched", [0, 1, 2, 3]), ("batched", [9]), ("here", [10])]

"""The fetch engine's bounds: ranges cover a file exactly; the byte budget is fair and exact."""

from __future__ import annotations

import asyncio

import pytest

from crds_job.fetch import ByteBudget, backoff, ranges


@pytest.mark.parametrize("size, part", [(0, 4), (1, 4), (4, 4), (5, 4), (17, 4), (10**9 + 7, 16 * 2**20)])
def test_ranges_cover_the_file_exactly_once(size, part):
    spans = ranges(size, part)
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(a_end == b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    assert all(0 <= end - start <= part for start, end in spans)


def test_backoff_is_jittered_and_capped():
    delays = [backoff(attempt) for attempt in range(2, 40) for _ in range(20)]
    assert min(delays) >= 0 and max(delays) <= 20.0
    assert len({round(d, 6) for d in delays}) > 100, "jitter spreads retries out"


def test_budget_is_first_come_first_served_and_never_overdrawn():
    async def scenario():
        budget = ByteBudget(10)
        order = []

        async def take(label, amount, hold):
            await budget.acquire(amount)
            assert budget.available >= 0
            order.append(label)
            await asyncio.sleep(hold)
            budget.release(amount)

        await budget.acquire(8)
        big = asyncio.ensure_future(take("big", 10, 0))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(take("small", 1, 0))  # fits now, but queues behind big
        await asyncio.sleep(0.01)
        assert order == []
        budget.release(8)
        await asyncio.gather(big, small)
        assert order == ["big", "small"] and budget.available == 10

    asyncio.run(scenario())


def test_a_waiter_cancelled_as_the_budget_is_released_stays_a_cancellation():
    """A signal mid-warm cancels waiters; one dropped by a release in the same turn must not raise anew."""
    async def scenario():
        budget = ByteBudget(10)
        await budget.acquire(10)
        first = asyncio.ensure_future(budget.acquire(5))
        second = asyncio.ensure_future(budget.acquire(5))
        await asyncio.sleep(0)
        first.cancel()  # its future is cancelled now; its handler runs next turn
        budget.release(10)  # drops the cancelled future, grants the second
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError), results[0]
        assert results[1] is None and budget.available == 5

    asyncio.run(scenario())


def test_a_cancelled_waiter_lets_those_behind_it_through():
    async def scenario():
        budget = ByteBudget(10)
        await budget.acquire(6)
        big = asyncio.ensure_future(budget.acquire(8))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(budget.acquire(2))  # fits, but queues behind big
        await asyncio.sleep(0)
        big.cancel()
        await asyncio.gather(big, return_exceptions=True)
        for _ in range(3):
            await asyncio.sleep(0)
        assert small.done() and budget.available == 2, "woken when big left, not at the next release"

    asyncio.run(scenario())


def test_a_cancelled_waiter_gives_nothing_away():
    async def scenario():
        budget = ByteBudget(4)
        await budget.acquire(4)
        waiter = asyncio.ensure_future(budget.acquire(3))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        budget.release(4)
        assert budget.available == 4
        await budget.acquire(99)  # larger than the budget: clamped, not stuck
        assert budget.available == 0

    asyncio.run(scenario())

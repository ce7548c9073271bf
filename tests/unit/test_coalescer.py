"""The Coalescer behind the Redis and SQLite enqueues: shared round trips, one answer per caller."""

from __future__ import annotations

import asyncio

import pytest

from katana.task_queue.broker._batch import Coalescer


class Link:
    """A fake round trip: records each batch, and answers it when the test opens ``gate``."""

    def __init__(self, *, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail_on = fail_on

    async def send(self, batch: list[str]) -> list[str]:
        self.batches.append(batch)
        await self.gate.wait()
        if self.fail_on in batch:
            raise ConnectionError(f"lost {self.fail_on}")
        return [f"answer:{request}" for request in batch]


async def test_a_lone_request_is_sent_before_the_caller_yields() -> None:
    link = Link()
    link.gate.set()
    coalescer: Coalescer[str, str] = Coalescer(link.send, max_batch=10)

    call = coalescer.submit("a").__await__()
    next(call, None)  # runs up to the first real suspension, inside send

    assert link.batches == [["a"]]
    call.close()


async def test_requests_made_during_a_round_trip_go_together_in_batches_of_at_most_max() -> None:
    link = Link()
    coalescer: Coalescer[str, str] = Coalescer(link.send, max_batch=3)
    first = asyncio.create_task(coalescer.submit("r0"))
    await asyncio.sleep(0)  # r0 is in flight
    rest = [asyncio.create_task(coalescer.submit(f"r{n}")) for n in range(1, 8)]
    await asyncio.sleep(0)

    link.gate.set()
    answers = await asyncio.gather(first, *rest)

    assert answers == [f"answer:r{n}" for n in range(8)]
    assert link.batches == [["r0"], ["r1", "r2", "r3"], ["r4", "r5", "r6"], ["r7"]]


async def test_a_failed_batch_fails_each_of_its_callers_and_not_the_next_batch() -> None:
    link = Link(fail_on="r2")
    coalescer: Coalescer[str, str] = Coalescer(link.send, max_batch=2)
    first = asyncio.create_task(coalescer.submit("r0"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(coalescer.submit(f"r{n}")) for n in range(1, 5)]
    await asyncio.sleep(0)

    link.gate.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)

    assert outcomes[0] == "answer:r0"
    assert [type(o) for o in outcomes[1:3]] == [ConnectionError, ConnectionError]
    assert outcomes[3:] == ["answer:r3", "answer:r4"]


async def test_wait_sent_waits_for_the_requests_still_waiting() -> None:
    # Given a round trip per permit: r0 answered, r1 sent after it and not yet answered
    permits = asyncio.Semaphore(0)
    sent: list[list[str]] = []

    async def send(batch: list[str]) -> list[str]:
        sent.append(batch)
        await permits.acquire()
        return [f"answer:{request}" for request in batch]

    coalescer: Coalescer[str, str] = Coalescer(send, max_batch=10)
    first = asyncio.create_task(coalescer.submit("r0"))
    await asyncio.sleep(0)
    second = asyncio.create_task(coalescer.submit("r1"))
    await asyncio.sleep(0)
    permits.release()
    assert await first == "answer:r0"

    # When close() waits for what was sent
    waiting = asyncio.create_task(coalescer.wait_sent())
    for _ in range(5):
        await asyncio.sleep(0)

    # Then it waits until r1 is answered too
    assert sent == [["r0"], ["r1"]]
    assert not waiting.done()
    permits.release()
    async with asyncio.timeout(5):
        await waiting
    assert await second == "answer:r1"


async def test_wait_sent_waits_for_a_lone_round_trip_and_the_requests_behind_it() -> None:
    # Given r0 in flight in its caller's own task, and r1 waiting behind it
    link = Link()
    coalescer: Coalescer[str, str] = Coalescer(link.send, max_batch=10)
    first = asyncio.create_task(coalescer.submit("r0"))
    await asyncio.sleep(0)
    second = asyncio.create_task(coalescer.submit("r1"))
    await asyncio.sleep(0)

    # When close() waits for what was sent
    waiting = asyncio.create_task(coalescer.wait_sent())
    for _ in range(5):
        await asyncio.sleep(0)

    # Then it waits until both are answered
    assert not waiting.done()
    link.gate.set()
    async with asyncio.timeout(5):
        await waiting
    assert first.done()
    assert second.done()
    assert await second == "answer:r1"


@pytest.mark.parametrize("max_batch", [1, 1000])
async def test_a_burst_ten_times_the_batch_size_is_answered_in_order(max_batch: int) -> None:
    link = Link()
    link.gate.set()
    coalescer: Coalescer[str, str] = Coalescer(link.send, max_batch=max_batch)

    answers = await asyncio.gather(*(coalescer.submit(str(n)) for n in range(10 * max_batch)))

    assert answers == [f"answer:{n}" for n in range(10 * max_batch)]
    assert max(len(batch) for batch in link.batches) <= max_batch


async def test_producers_that_enqueue_again_at_once_stay_in_one_batch() -> None:
    # Given 50 producers, each enqueueing 20 times one after the other
    sizes: list[int] = []

    async def send(batch: list[tuple[int, int]]) -> list[tuple[int, int]]:
        sizes.append(len(batch))
        await asyncio.sleep(0)  # a round trip: the loop turns while it is in flight
        return batch

    coalescer: Coalescer[tuple[int, int], tuple[int, int]] = Coalescer(send, max_batch=1000)

    async def produce(producer: int) -> None:
        for n in range(20):
            assert await coalescer.submit((producer, n)) == (producer, n)

    await asyncio.gather(*(produce(p) for p in range(50)))

    # Then after the first, every round trip carries all 50, never one going out alone
    assert sizes == [1] + [50] * 19 + [49]

"""Conformance tests for handing tasks out: ordering, waiting, concurrent consumers."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from ..models import Task, TaskStatus, utcnow
from ._support import ContractBase, claim, loop_time, make_task, wait_for_event

if TYPE_CHECKING:
    from ..broker.base import AbstractBroker

__all__ = ["QueueingContract"]

#: The bounds of a priority every backend must store: a signed 32-bit integer.
_MIN_PRIORITY = -(2**31)
_MAX_PRIORITY = 2**31 - 1
#: Delays the tests wait out: long enough to tell "early" from "on time", short enough to be
#: cheap.
_SHORT_DELAY = 0.2
#: A delay no test waits out.
_LONG_DELAY = 3600.0


class QueueingContract(ContractBase):
    """The ordering contract, waiting without polling, and one consumer per task."""

    # -- ordering ----------------------------------------------------------------------------

    async def test_lowest_priority_number_first(self, broker: AbstractBroker) -> None:
        priorities = [3, -1, _MAX_PRIORITY, _MIN_PRIORITY, 0, 7, -50, 1]
        # Created (so due) in this order: later-due tasks with a lower number still go first.
        tasks = [make_task(priority=p) for p in priorities]
        await broker.enqueue_many(tasks)

        claimed = [await claim(broker) for _ in tasks]

        assert [t.priority for t in claimed] == sorted(priorities)
        assert await broker.dequeue(timeout=0) is None

    async def test_equal_priorities_go_in_due_time_order(self, broker: AbstractBroker) -> None:
        base = utcnow() - timedelta(hours=1)
        minutes = [30, 10, 20, 0]
        tasks = [make_task(scheduled_at=base + timedelta(minutes=m)) for m in minutes]
        # A lower priority that has been due longest still comes after all of them.
        tasks.append(make_task(priority=1, scheduled_at=base - timedelta(hours=1)))
        for task in tasks:
            await broker.enqueue(task)

        claimed = [await claim(broker) for _ in tasks]

        assert [t.id for t in claimed] == [tasks[i].id for i in (3, 1, 2, 0, 4)]

    async def test_equal_priority_and_due_time_go_first_in_first_out(
        self, broker: AbstractBroker
    ) -> None:
        due = utcnow()
        tasks = [make_task(payload={"n": n}, scheduled_at=due) for n in range(30)]
        for task in tasks[:15]:
            await broker.enqueue(task)
        await broker.enqueue_many(tasks[15:])

        claimed = [await claim(broker) for _ in tasks]

        assert [t.payload["n"] for t in claimed] == list(range(30))

    async def test_the_whole_ordering_contract(self, broker: AbstractBroker) -> None:
        # Given 60 due tasks mixing three priorities and three due times, enqueued shuffled
        rng = random.Random(20240601)
        base = utcnow() - timedelta(minutes=10)
        due_times = [base + timedelta(minutes=m) for m in (0, 1, 2)]
        tasks = [
            make_task(
                payload={"n": n}, priority=rng.choice([0, 1, 2]), scheduled_at=rng.choice(due_times)
            )
            for n in range(60)
        ]
        rng.shuffle(tasks)
        await broker.enqueue_many(tasks)

        # When all are claimed
        claimed = [await claim(broker) for _ in tasks]

        # Then they come by priority, then due time, then arrival
        arrival = {task.id: index for index, task in enumerate(tasks)}
        expected = sorted(tasks, key=lambda t: (t.priority, t.scheduled_at, arrival[t.id]))
        assert [t.id for t in claimed] == [t.id for t in expected]

    async def test_a_task_is_not_dequeued_before_it_is_due(self, broker: AbstractBroker) -> None:
        task = make_task(delay_seconds=_LONG_DELAY)
        await broker.enqueue(task)

        assert await broker.dequeue(timeout=0) is None
        assert await broker.dequeue(timeout=_SHORT_DELAY) is None
        stored = await broker.get_task(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.PENDING

    async def test_a_task_not_yet_due_never_blocks_a_due_one(self, broker: AbstractBroker) -> None:
        urgent_later = make_task(priority=_MIN_PRIORITY, delay_seconds=_LONG_DELAY)
        routine_now = make_task(priority=_MAX_PRIORITY)
        await broker.enqueue(urgent_later)
        await broker.enqueue(routine_now)

        assert (await claim(broker)).id == routine_now.id
        assert await broker.dequeue(timeout=0) is None

    # -- waiting -----------------------------------------------------------------------------

    async def test_dequeue_without_waiting_on_an_empty_broker(self, broker: AbstractBroker) -> None:
        start = loop_time()

        assert await broker.dequeue(timeout=0) is None

        assert loop_time() - start < self.wake_seconds

    async def test_dequeue_with_a_timeout_on_an_empty_broker(self, broker: AbstractBroker) -> None:
        start = loop_time()

        async with asyncio.timeout(self.guard_seconds):
            assert await broker.dequeue(timeout=_SHORT_DELAY) is None

        elapsed = loop_time() - start
        assert elapsed >= _SHORT_DELAY * 0.75, f"gave up after {elapsed:.3f}s"
        assert elapsed < _SHORT_DELAY + self.wake_seconds, f"gave up after {elapsed:.3f}s"

    async def test_a_waiting_dequeue_wakes_when_a_task_is_enqueued(
        self, broker: AbstractBroker
    ) -> None:
        # Given a consumer waiting with no time limit
        consumer = asyncio.create_task(broker.dequeue())
        await self.let_consumers_block()
        assert not consumer.done(), "dequeue() returned from an empty broker"

        # When a task is enqueued
        task = make_task()
        enqueued_at = loop_time()
        await broker.enqueue(task)

        # Then the consumer gets it at once
        async with asyncio.timeout(self.guard_seconds):
            claimed = await consumer
        assert claimed is not None
        assert claimed.id == task.id
        latency = loop_time() - enqueued_at
        assert latency < self.wake_seconds, f"woke {latency:.3f}s after the enqueue"

    async def test_every_waiting_consumer_is_woken(self, broker: AbstractBroker) -> None:
        # Given eight consumers waiting
        consumers = [asyncio.create_task(broker.dequeue(timeout=30)) for _ in range(8)]
        await self.let_consumers_block()

        # When eight tasks arrive back to back, before any consumer got to run
        tasks = [make_task() for _ in range(8)]
        await broker.enqueue_many(tasks[:4])
        for task in tasks[4:]:
            await broker.enqueue(task)

        # Then each consumer gets one: no wake-up was lost
        async with asyncio.timeout(self.guard_seconds):
            claimed = await asyncio.gather(*consumers)
        assert sorted(t.id for t in claimed if t is not None) == sorted(t.id for t in tasks)

    async def test_a_waiting_dequeue_wakes_when_a_delayed_task_becomes_due(
        self, broker: AbstractBroker
    ) -> None:
        task = make_task(delay_seconds=_SHORT_DELAY)
        await broker.enqueue(task)
        start = loop_time()

        async with asyncio.timeout(self.guard_seconds):
            claimed = await broker.dequeue()

        elapsed = loop_time() - start
        assert claimed is not None
        assert claimed.id == task.id
        self._assert_not_early(claimed)
        assert elapsed < _SHORT_DELAY + self.wake_seconds, f"came {elapsed:.3f}s later"

    async def test_a_waiting_dequeue_sees_a_delayed_task_enqueued_while_it_waits(
        self, broker: AbstractBroker
    ) -> None:
        # Given a consumer waiting on an empty broker
        consumer = asyncio.create_task(broker.dequeue())
        await self.let_consumers_block()

        # When a task due shortly is enqueued
        task = make_task(delay_seconds=_SHORT_DELAY)
        start = loop_time()
        await broker.enqueue(task)

        # Then the consumer gets it when due: not before, and not never
        async with asyncio.timeout(self.guard_seconds):
            claimed = await consumer
        assert claimed is not None
        assert claimed.id == task.id
        self._assert_not_early(claimed)
        assert loop_time() - start < _SHORT_DELAY + self.wake_seconds

    async def test_a_waiting_dequeue_takes_a_sooner_task_enqueued_while_it_waits(
        self, broker: AbstractBroker
    ) -> None:
        # Given a consumer waiting for a task due in an hour
        await broker.enqueue(make_task(delay_seconds=_LONG_DELAY))
        consumer = asyncio.create_task(broker.dequeue())
        await self.let_consumers_block()
        assert not consumer.done()

        # When a task due shortly is enqueued
        sooner = make_task(delay_seconds=_SHORT_DELAY)
        start = loop_time()
        await broker.enqueue(sooner)

        # Then the consumer takes it when it is due, not an hour later
        async with asyncio.timeout(self.guard_seconds):
            claimed = await consumer
        assert claimed is not None
        assert claimed.id == sooner.id
        self._assert_not_early(claimed)
        assert loop_time() - start < _SHORT_DELAY + self.wake_seconds

    async def test_a_waiting_dequeue_wakes_for_a_requeued_task(
        self, broker: AbstractBroker
    ) -> None:
        await broker.enqueue(make_task())
        first = await claim(broker)
        consumer = asyncio.create_task(broker.dequeue())
        await self.let_consumers_block()

        assert await broker.requeue(
            first.id, delay_seconds=_SHORT_DELAY, claim_token=first.claim_token
        )

        async with asyncio.timeout(self.guard_seconds):
            claimed = await consumer
        assert claimed is not None
        assert (claimed.id, claimed.attempts) == (first.id, 2)
        self._assert_not_early(claimed)

    def _assert_not_early(self, claimed: Task) -> None:
        # started_at is the broker's clock, the one that decides when a task is due.
        assert claimed.started_at is not None
        early = (claimed.scheduled_at - claimed.started_at).total_seconds()
        assert early <= self.timestamp_resolution_seconds, f"dequeued {early:.6f}s early"

    # -- concurrent consumers ----------------------------------------------------------------

    async def test_each_task_goes_to_exactly_one_of_many_consumers(
        self, broker: AbstractBroker
    ) -> None:
        n_tasks, n_consumers = 200, 8
        tasks = [make_task(payload={"n": n}) for n in range(n_tasks)]
        received: list[str] = []
        got_all = asyncio.Event()

        async def consume(index: int) -> None:
            # Half wait without a limit, half with one, as workers and pollers do.
            timeout = None if index % 2 else 30.0
            while True:
                task = await broker.dequeue(timeout=timeout)
                if task is None:
                    continue
                received.append(task.id)
                if len(received) >= n_tasks:
                    got_all.set()
                await asyncio.sleep(0)  # let the others interleave

        # Given 8 consumers waiting on an empty broker
        consumers = [asyncio.create_task(consume(i)) for i in range(n_consumers)]
        await self.let_consumers_block()

        # When 200 tasks arrive, one at a time and in a batch
        for index, task in enumerate(tasks[:100]):
            await broker.enqueue(task)
            if index % 3 == 0:
                await asyncio.sleep(0)
        await broker.enqueue_many(tasks[100:])
        try:
            await wait_for_event(got_all, consumers, self.guard_seconds)
        finally:
            for consumer in consumers:
                consumer.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)

        # Then every task was received exactly once
        assert Counter(received) == Counter(task.id for task in tasks)
        assert await broker.dequeue(timeout=0) is None
        counts = await broker.count_by_status()
        assert (counts[TaskStatus.PENDING], counts[TaskStatus.PROCESSING]) == (0, n_tasks)

    # -- cancellation ------------------------------------------------------------------------

    @pytest.mark.parametrize("timeout", [None, 30.0])
    async def test_cancelling_a_waiting_dequeue_loses_no_task(
        self, broker: AbstractBroker, timeout: float | None
    ) -> None:
        # Given a waiting dequeue, cancelled
        consumer = asyncio.create_task(broker.dequeue(timeout=timeout))
        await self.let_consumers_block()
        consumer.cancel()
        async with asyncio.timeout(self.guard_seconds):
            with pytest.raises(asyncio.CancelledError):
                await consumer

        # When a task is enqueued
        task = make_task()
        await broker.enqueue(task)

        # Then a new dequeue gets it
        async with asyncio.timeout(self.guard_seconds):
            claimed = await broker.dequeue(timeout=self.wake_seconds)
        assert claimed is not None
        assert claimed.id == task.id

    async def test_cancelling_a_dequeue_just_woken_loses_no_task(
        self, broker: AbstractBroker
    ) -> None:
        # Given two consumers waiting
        first = asyncio.create_task(broker.dequeue())
        second = asyncio.create_task(broker.dequeue())
        await self.let_consumers_block()

        # When a task arrives and the first consumer is cancelled before it could run
        task = make_task()
        await broker.enqueue(task)
        first.cancel()

        # Then the task is not lost: the first consumer got it after all, or the second does
        async with asyncio.timeout(self.guard_seconds):
            try:
                claimed = await first
            except asyncio.CancelledError:
                claimed = await second
            else:
                second.cancel()
                await asyncio.gather(second, return_exceptions=True)
        assert claimed is not None
        assert claimed.id == task.id
        assert await broker.dequeue(timeout=0) is None

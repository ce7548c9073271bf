"""Delays and retry backoff tested on a FakeClock: nothing here sleeps for real."""

from __future__ import annotations

import asyncio

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.config import RetryPolicy
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService
from katana.task_queue.testing import FakeClock

GUARD_SECONDS = 30.0


async def settle() -> None:
    """Let woken workers look at the queue (they run on this loop, no timer involved)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_an_hour_long_backoff_passes_when_the_clock_is_moved() -> None:
    clock = FakeClock()
    runs: list[float] = []

    async def flaky(task: Task) -> str:
        runs.append(clock())
        if len(runs) < 3:
            raise ConnectionError("down")
        return "up"

    policy = RetryPolicy(
        max_retries=3, backoff_base_seconds=3600, backoff_max_seconds=7200, jitter=False
    )
    async with InMemoryBroker(clock=clock) as broker:
        service = TaskQueueService(broker=broker, clock=clock)
        service.register("flaky", flaky, retry=policy)
        task = await service.add_task("flaky")
        service.start_workers(1)
        await settle()
        assert len(runs) == 1  # failed once; retry due in an hour

        clock.advance(3599)
        await settle()
        assert len(runs) == 1  # not a second early

        clock.advance(1)
        await settle()
        assert len(runs) == 2  # second failure; next retry due in two hours (the cap)

        clock.advance(7200)
        assert await service.wait_for(task.id, timeout=GUARD_SECONDS) == "up"
        assert [run - runs[0] for run in runs] == [0, 3600, 3600 + 7200]
        await service.shutdown(timeout=1)


async def test_a_delayed_task_waits_for_the_fake_clock_not_the_real_one() -> None:
    clock = FakeClock()
    ran = asyncio.Event()

    async def later(task: Task) -> None:
        ran.set()

    async with InMemoryBroker(clock=clock) as broker:
        service = TaskQueueService(broker=broker, task_executors={"later": later}, clock=clock)
        task = await service.add_task("later", delay_seconds=30 * 24 * 3600)
        service.start_workers(1)
        await settle()
        assert not ran.is_set()
        pending = await service.get_task(task.id)
        assert pending is not None
        assert pending.status is TaskStatus.PENDING

        clock.advance(30 * 24 * 3600)
        await asyncio.wait_for(ran.wait(), GUARD_SECONDS)
        await service.shutdown(timeout=1)

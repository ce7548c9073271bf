"""A worker that learns it lost its claim (RedisBroker's heartbeat) stops the executor at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.context import report_progress
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService
from katana.task_queue.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

GUARD_SECONDS = 30.0
PROMPT_SECONDS = 5.0
LEASE_SECONDS = 30.0


class Stuck:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def run(self, task: Task) -> str:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            self.stopped.set()
        return "the first owner's result"

    async def quick(self, task: Task) -> str:
        return "quick"


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(start=time.time())


@pytest.fixture
async def broker(
    redis_url: str, queue_name: str, fake_clock: FakeClock
) -> AsyncIterator[RedisBroker]:
    # The heartbeat loop never runs by itself here: the test calls heartbeat() when it wants.
    broker = RedisBroker(
        redis_url,
        queue=queue_name,
        lease_seconds=LEASE_SECONDS,
        heartbeat_seconds=3600,
        clock=fake_clock,
    )
    yield broker
    await broker.purge()
    await broker.close()


@pytest.fixture
async def running(
    broker: RedisBroker, fake_clock: FakeClock
) -> AsyncIterator[tuple[TaskQueueService, Stuck, Task]]:
    stuck = Stuck()
    service = TaskQueueService(
        broker=broker, task_executors={"stuck": stuck.run, "quick": stuck.quick}, clock=fake_clock
    )
    task = await service.add_task("stuck")
    service.start_workers(1)
    await asyncio.wait_for(stuck.started.wait(), GUARD_SECONDS)
    yield service, stuck, task
    await service.shutdown(timeout=1)


async def test_a_claim_taken_over_after_lease_expiry_stops_the_executor(
    running: tuple[TaskQueueService, Stuck, Task],
    broker: RedisBroker,
    redis_url: str,
    queue_name: str,
    fake_clock: FakeClock,
) -> None:
    service, stuck, task = running
    # Given the running task's lease expired and another process took it over
    fake_clock.advance(LEASE_SECONDS + 1)
    async with RedisBroker(redis_url, queue=queue_name, clock=fake_clock) as other:
        await other.heartbeat()  # recovers the expired lease
        taken = await other.dequeue(timeout=0)
        assert taken is not None
        assert taken.id == task.id

        # When the first process's heartbeat finds out
        await broker.heartbeat()

        # Then its executor is stopped at once, and nothing it did is recorded
        await asyncio.wait_for(stuck.stopped.wait(), PROMPT_SECONDS)
        assert await other.mark_complete(task.id, "new owner", claim_token=taken.claim_token)
    stored = await service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.result) == (TaskStatus.COMPLETED, "new owner")

    # And its worker goes on with the next task
    after = await service.add_task("quick")
    assert await service.wait_for(after.id, timeout=GUARD_SECONDS) == "quick"


async def test_a_claim_lost_to_an_overwritten_record_stops_the_executor(
    running: tuple[TaskQueueService, Stuck, Task], broker: RedisBroker, redis_url: str
) -> None:
    service, stuck, task = running
    # Given the running task's record was changed under the worker (its claim overwritten)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.hset(f"{broker.prefix}:task:{task.id}", "claim_token", "someone-else")
    finally:
        await raw.aclose()

    # When the heartbeat finds out, Then the executor is stopped at once
    await broker.heartbeat()
    await asyncio.wait_for(stuck.stopped.wait(), PROMPT_SECONDS)
    stored = await service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.claim_token) == (TaskStatus.PROCESSING, "someone-else")


@pytest.mark.parametrize("change", ["overwritten", "deleted"])
async def test_report_progress_finding_the_claim_lost_stops_the_executor(
    broker: RedisBroker, redis_url: str, fake_clock: FakeClock, change: str
) -> None:
    reporting, stopped = asyncio.Event(), asyncio.Event()
    gate = asyncio.Event()

    async def reporter(task: Task) -> None:
        try:
            while True:
                # It carries on whatever the report says (False, or KeyError once deleted).
                with contextlib.suppress(KeyError):
                    await report_progress(0.5)
                reporting.set()
                await gate.wait()
                gate.clear()
        finally:
            stopped.set()

    service = TaskQueueService(broker=broker, task_executors={"r": reporter}, clock=fake_clock)
    task = await service.add_task("r")
    service.start_workers(1)
    try:
        await asyncio.wait_for(reporting.wait(), GUARD_SECONDS)
        # Given the running task's record changed under the worker (or deleted)
        raw = aioredis.Redis.from_url(redis_url)
        try:
            key = f"{broker.prefix}:task:{task.id}"
            if change == "overwritten":
                await raw.hset(key, "claim_token", "someone-else")
            else:
                await raw.delete(key)
        finally:
            await raw.aclose()

        # When its next progress report finds out (no heartbeat runs here)
        gate.set()

        # Then the executor is stopped at once
        await asyncio.wait_for(stopped.wait(), PROMPT_SECONDS)
    finally:
        await service.shutdown(timeout=1)

"""Executors that swallow their cancellation: Katana records the outcome and stops waiting.

asyncio cannot stop such a coroutine; after ``CANCEL_GRACE_SECONDS`` the worker gives up on it,
records what the cancel stood for, and a new slot takes its place. The same on every broker.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from katana.task_queue._worker import CANCEL_GRACE_SECONDS
from katana.task_queue.errors import TaskCancelledError, TaskFailedError
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

#: What the tests allow beyond the promised bound (a loaded machine, a broker round trip).
SLACK_SECONDS = 1.5
GUARD_SECONDS = 30.0


class Stubborn:
    """An executor that ignores every cancel until the test releases it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.ended = asyncio.Event()
        self.cancels = 0

    async def run(self, task: Task) -> str:
        self.started.set()
        try:
            while not self.release.is_set():
                try:
                    await asyncio.sleep(0.02)
                except asyncio.CancelledError:
                    self.cancels += 1  # the bug: it goes on as if nothing happened
            return "finished anyway"
        finally:
            self.ended.set()


class Gate:
    """An executor that holds its slot until the test opens the gate."""

    def __init__(self) -> None:
        self.running = 0
        self.both_running = asyncio.Event()
        self.open = asyncio.Event()

    async def run(self, task: Task) -> None:
        self.running += 1
        if self.running == 2:
            self.both_running.set()
        await self.open.wait()


@pytest.fixture
async def stubborn() -> AsyncIterator[Stubborn]:
    executor = Stubborn()
    yield executor
    executor.release.set()  # let the abandoned coroutine end before the loop closes
    if executor.started.is_set():
        await asyncio.wait_for(executor.ended.wait(), GUARD_SECONDS)


@pytest.fixture
async def service(
    broker: AbstractBroker, stubborn: Stubborn, clock: FakeClock
) -> AsyncIterator[TaskQueueService]:
    service = TaskQueueService(broker=broker, clock=clock)
    service.register("stubborn", stubborn.run)
    service.register("stubborn_0_2s", stubborn.run, timeout_seconds=0.2)
    yield service
    await service.shutdown(timeout=1)


async def _stored(service: TaskQueueService, task_id: str) -> Task:
    stored = await service.get_task(task_id)
    assert stored is not None
    return stored


async def test_a_timed_out_executor_that_ignores_its_cancel_fails_within_the_grace(
    service: TaskQueueService, stubborn: Stubborn
) -> None:
    gate = Gate()
    service.register("gate", gate.run)
    # Given two worker slots, one running an executor that swallows its timeout's cancel
    task = await service.add_task("stubborn_0_2s")
    started = time.monotonic()
    service.start_workers(2)

    # When its time limit is up
    # Then it ends FAILED with TaskTimeoutError within the timeout plus the grace
    with pytest.raises(TaskFailedError):
        await service.wait_for(task.id, timeout=0.2 + CANCEL_GRACE_SECONDS + SLACK_SECONDS)
    assert time.monotonic() - started < 0.2 + CANCEL_GRACE_SECONDS + SLACK_SECONDS
    stored = await _stored(service, task.id)
    assert stored.status is TaskStatus.FAILED
    assert stored.error is not None
    assert stored.error.startswith("TaskTimeoutError: ")
    assert "ignored its cancellation" in stored.error
    assert not stubborn.ended.is_set()
    assert service.abandoned_executors == 1

    # And the process still runs two tasks at once: the stuck slot was replaced
    first, second = await service.add_task("gate"), await service.add_task("gate")
    await asyncio.wait_for(gate.both_running.wait(), GUARD_SECONDS)
    gate.open.set()
    await service.wait_for(first.id, timeout=GUARD_SECONDS)
    await service.wait_for(second.id, timeout=GUARD_SECONDS)

    # And when the abandoned executor finally returns, its outcome is dropped
    stubborn.release.set()
    await asyncio.wait_for(stubborn.ended.wait(), GUARD_SECONDS)
    await asyncio.sleep(0)  # the retired slot's last steps
    assert (await _stored(service, task.id)).status is TaskStatus.FAILED
    assert service.abandoned_executors == 0


async def test_cancel_of_an_executor_that_ignores_it_ends_cancelled_within_the_grace(
    service: TaskQueueService, stubborn: Stubborn
) -> None:
    # Given one worker slot running an executor that swallows its cancellation
    task = await service.add_task("stubborn")
    service.start_workers(1)
    await asyncio.wait_for(stubborn.started.wait(), GUARD_SECONDS)

    # When it is cancelled
    asked = time.monotonic()
    assert await service.cancel(task.id) is True

    # Then it ends CANCELLED within the grace, though the coroutine still runs
    with pytest.raises(TaskCancelledError):
        await service.wait_for(task.id, timeout=CANCEL_GRACE_SECONDS + SLACK_SECONDS)
    assert time.monotonic() - asked < CANCEL_GRACE_SECONDS + SLACK_SECONDS
    assert not stubborn.ended.is_set()
    assert stubborn.cancels >= 1
    # And a new slot runs the next task
    service.register("quick", _quick)
    after = await service.add_task("quick")
    assert await service.wait_for(after.id, timeout=GUARD_SECONDS) == "quick"


async def _quick(task: Task) -> str:
    return "quick"


async def test_shutdown_returns_within_its_timeout_and_hands_the_stuck_task_back(
    service: TaskQueueService, stubborn: Stubborn
) -> None:
    # Given a worker running an executor that swallows its cancellation
    task = await service.add_task("stubborn")
    service.start_workers(2)
    await asyncio.wait_for(stubborn.started.wait(), GUARD_SECONDS)

    # When the service shuts down with a short timeout
    asked = time.monotonic()
    async with asyncio.timeout(GUARD_SECONDS):
        await service.shutdown(timeout=0.5)

    # Then shutdown returns within its timeout plus the grace
    assert time.monotonic() - asked < 0.5 + CANCEL_GRACE_SECONDS + SLACK_SECONDS
    # And the task is PENDING again, for another worker
    assert (await _stored(service, task.id)).status is TaskStatus.PENDING
    assert service.abandoned_executors == 1
    # And when the abandoned executor finally returns, nothing changes
    stubborn.release.set()
    await asyncio.wait_for(stubborn.ended.wait(), GUARD_SECONDS)
    await asyncio.sleep(0)
    assert (await _stored(service, task.id)).status is TaskStatus.PENDING

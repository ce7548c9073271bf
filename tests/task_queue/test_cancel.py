"""Cancellation of pending, delayed and running tasks: the same on every broker."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.errors import TaskCancelledError
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

GUARD_SECONDS = 30.0


class Recorder:
    def __init__(self) -> None:
        self.ran: list[str] = []
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def record(self, task: Task) -> None:
        self.ran.append(task.id)

    async def long(self, task: Task) -> None:
        self.ran.append(task.id)
        self.started.set()
        try:
            await asyncio.sleep(60)
        finally:
            self.stopped.set()


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def service(
    broker: AbstractBroker, recorder: Recorder, clock: FakeClock
) -> AsyncIterator[TaskQueueService]:
    service = TaskQueueService(
        broker=broker,
        task_executors={"record": recorder.record, "long": recorder.long},
        clock=clock,
    )
    yield service
    await service.shutdown(timeout=1)


async def test_a_cancelled_pending_task_never_runs(
    service: TaskQueueService, recorder: Recorder
) -> None:
    task = await service.add_task("record")

    assert await service.cancel(task.id) is True
    assert await service.cancel(task.id) is False  # idempotent

    other = await service.add_task("record")
    service.start_workers(2)
    await service.wait_idle(timeout=GUARD_SECONDS)
    assert recorder.ran == [other.id]
    stored = await service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.CANCELLED, 0)
    with pytest.raises(TaskCancelledError):
        await service.wait_for(task.id, timeout=GUARD_SECONDS)


async def test_a_cancelled_delayed_task_never_runs(
    service: TaskQueueService, recorder: Recorder, clock: FakeClock
) -> None:
    # Given a task delayed by a minute, cancelled at once
    task = await service.add_task("record", delay_seconds=60)
    assert await service.cancel(task.id) is True

    # When a later task, due after it would have been, has run
    service.start_workers(2)
    later = await service.add_task("record", delay_seconds=120)
    clock.advance(121)
    await service.wait_for(later.id, timeout=GUARD_SECONDS)

    # Then only the later one ran
    assert recorder.ran == [later.id]
    counts = await service.broker.count_by_status()
    assert (counts[TaskStatus.CANCELLED], counts[TaskStatus.COMPLETED]) == (1, 1)


async def test_a_running_task_is_stopped_and_ends_cancelled_without_retry(
    service: TaskQueueService, recorder: Recorder
) -> None:
    task = await service.add_task("long", max_retries=3)
    service.start_workers(2)
    await asyncio.wait_for(recorder.started.wait(), GUARD_SECONDS)
    loop = asyncio.get_running_loop()
    asked = loop.time()

    assert await service.cancel(task.id) is True

    with pytest.raises(TaskCancelledError):
        await service.wait_for(task.id, timeout=GUARD_SECONDS)
    assert recorder.stopped.is_set()
    assert loop.time() - asked < 1.5
    stored = await service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.errors) == (TaskStatus.CANCELLED, 1, [])
    # The worker goes on with the next task
    after = await service.add_task("record")
    await service.wait_for(after.id, timeout=GUARD_SECONDS)
    assert recorder.ran == [task.id, after.id]


async def test_cancelling_a_finished_or_unknown_task_changes_nothing(
    service: TaskQueueService,
) -> None:
    task = await service.add_task("record")
    service.start_workers(1)
    await service.wait_for(task.id, timeout=GUARD_SECONDS)

    assert await service.cancel(task.id) is False
    assert await service.cancel("no-such-task") is False
    stored = await service.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.COMPLETED


async def test_an_executor_swallowing_its_cancellation_still_ends_cancelled(
    service: TaskQueueService, recorder: Recorder
) -> None:
    started, swallowed = asyncio.Event(), asyncio.Event()

    async def stubborn(task: Task) -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # a bug in the executor: it goes on as if nothing happened
        return "finished anyway"

    # Given a running executor that swallows CancelledError, and one worker slot
    service.register("stubborn", stubborn)
    task = await service.add_task("stubborn", max_retries=2)
    service.start_workers(1)
    await asyncio.wait_for(started.wait(), GUARD_SECONDS)

    # When it is cancelled
    assert await service.cancel(task.id) is True

    # Then it ends CANCELLED as cancel() promised, its result discarded
    with pytest.raises(TaskCancelledError):
        await service.wait_for(task.id, timeout=GUARD_SECONDS)
    assert swallowed.is_set()
    stored = await service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.result, stored.attempts) == (TaskStatus.CANCELLED, None, 1)
    # And the worker slot goes on with the next task
    after = await service.add_task("record")
    await service.wait_for(after.id, timeout=GUARD_SECONDS)
    assert recorder.ran == [after.id]

"""Cancels, timeouts and shutdown that land *during* a broker call, on every broker.

On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that lands while the awaited
call completes (CPython gh-86296), and redis-py awaits every command through it when a socket
timeout is set. An executor looping on ``report_progress`` spends nearly all its time inside
such a call, so these tests would lose their cancel there if Katana relied on the driver.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.context import report_progress
from katana.task_queue.errors import TaskCancelledError, TaskFailedError
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

GUARD_SECONDS = 30.0
#: "Promptly": far above what a cancel takes, far below an endless loop or a lease.
PROMPT_SECONDS = 5.0


class Looper:
    """An executor that reports progress forever: it spends its life inside a broker call."""

    def __init__(self) -> None:
        self.reporting = asyncio.Event()
        self.rounds = 0

    async def loop(self, task: Task) -> None:
        for n in itertools.count():
            await report_progress((n % 100) / 100)
            self.rounds += 1
            if self.rounds >= 3:  # a few calls in: the next one is where the cancel lands
                self.reporting.set()

    async def record(self, task: Task) -> str:
        return task.id


@pytest.fixture
def looper() -> Looper:
    return Looper()


@pytest.fixture
async def service(
    broker: AbstractBroker, looper: Looper, clock: FakeClock
) -> AsyncIterator[TaskQueueService]:
    service = TaskQueueService(
        broker=broker,
        task_executors={"loop": looper.loop, "record": looper.record},
        clock=clock,
    )
    yield service
    await service.shutdown(timeout=1)


async def test_cancelling_an_executor_inside_report_progress_ends_it_cancelled(
    service: TaskQueueService, looper: Looper
) -> None:
    # Given one worker slot (so that the same slot must survive each cancel)
    service.start_workers(1)
    for _ in range(3):
        # When an executor looping on report_progress is cancelled
        looper.reporting.clear()
        task = await service.add_task("loop", max_retries=2)
        await asyncio.wait_for(looper.reporting.wait(), GUARD_SECONDS)
        assert await service.cancel(task.id) is True

        # Then it ends CANCELLED promptly, not retried
        with pytest.raises(TaskCancelledError):
            await service.wait_for(task.id, timeout=PROMPT_SECONDS)
        stored = await service.get_task(task.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.errors) == (TaskStatus.CANCELLED, 1, [])

    # And the worker slot goes on with the next task
    after = await service.add_task("record")
    assert await service.wait_for(after.id, timeout=PROMPT_SECONDS) == after.id


async def test_a_timeout_inside_report_progress_fails_the_attempt_promptly(
    service: TaskQueueService, looper: Looper
) -> None:
    # Given an endless report_progress loop with a 0.2 s time limit and no retries
    service.register("loop", looper.loop, timeout_seconds=0.2)
    service.start_workers(1)
    tasks = [await service.add_task("loop") for _ in range(3)]

    # When it runs, Then each attempt fails with TaskTimeoutError promptly
    for task in tasks:
        with pytest.raises(TaskFailedError) as failed:
            await service.wait_for(task.id, timeout=PROMPT_SECONDS)
        assert failed.value.task.attempts == 1
        assert (failed.value.task.error or "").startswith("TaskTimeoutError")


async def test_shutdown_inside_report_progress_hands_the_task_back_promptly(
    service: TaskQueueService, looper: Looper
) -> None:
    # Given an endless report_progress loop, running
    task = await service.add_task("loop", max_retries=1)
    service.start_workers(1)
    await asyncio.wait_for(looper.reporting.wait(), GUARD_SECONDS)

    # When the service shuts down with a 0.3 s grace period
    async with asyncio.timeout(PROMPT_SECONDS):
        await service.shutdown(timeout=0.3)

    # Then the task is PENDING again, and the interrupted attempt is not counted
    stored = await service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.errors) == (TaskStatus.PENDING, 0, [])
    assert stored.claim_token is None


@pytest.mark.parametrize("timeout", [0, 1e-6, -1])
async def test_wait_for_a_pending_task_with_no_time_left_raises_at_once(
    service: TaskQueueService, timeout: float
) -> None:
    # Given a broker already listening for finished tasks (on Redis a wait then reads the
    # task at once, inside redis-py, where the deadline lands), and a task left PENDING
    warm_up = await service.add_task("record")
    assert await service.cancel(warm_up.id) is True
    with pytest.raises(TaskCancelledError):
        await service.wait_for(warm_up.id, timeout=GUARD_SECONDS)
    task = await service.add_task("record")  # no workers: it stays PENDING

    # When waiting for it with no time left, Then the wait gives up at once
    async with asyncio.timeout(PROMPT_SECONDS):
        with pytest.raises(TimeoutError):
            await service.wait_for(task.id, timeout=timeout)


@pytest.mark.parametrize("timeout", [0, 1e-6])
async def test_wait_idle_with_work_left_and_no_time_left_raises_at_once(
    service: TaskQueueService, timeout: float
) -> None:
    await service.add_task("record")  # no workers: it stays PENDING

    async with asyncio.timeout(PROMPT_SECONDS):
        with pytest.raises(TimeoutError):
            await service.wait_idle(timeout=timeout)


@pytest.mark.parametrize("call", ["add_task", "get_task", "cancel", "redrive"])
async def test_a_cancel_during_a_service_call_is_never_lost(
    service: TaskQueueService, call: str
) -> None:
    # Given a stored task, and a service call on it run as a task of its own
    stored = await service.add_task("record")
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "add_task": lambda: service.add_task("record"),
        "get_task": lambda: service.get_task(stored.id),
        "cancel": lambda: service.cancel(stored.id),
        "redrive": lambda: service.redrive(stored.id),
    }
    for _ in range(20):
        running = asyncio.ensure_future(calls[call]())
        # When it is cancelled once it is inside the broker call (a broker that never awaits
        # has finished by then, and the cancel is refused)
        await asyncio.sleep(0)
        accepted = running.cancel()

        # Then an accepted cancel is never swallowed: awaiting the call raises it
        if accepted:
            with pytest.raises(asyncio.CancelledError):
                await running
        else:
            await running

"""Worker slots: one that dies is logged and replaced; the worker record shows the live ones."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest

from katana.task_queue.models import TaskStatus
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.models import Task
    from katana.task_queue.testing import FakeClock

GUARD_SECONDS = 30.0
#: The worker record is read back from the broker, written by the presence loop: a deadline.
RECORD_SECONDS = 5.0


async def explode(task: Task) -> None:
    raise ValueError("boom")


async def echo(task: Task) -> str:
    return task.id


@pytest.fixture
async def service(broker: AbstractBroker, clock: FakeClock) -> AsyncIterator[TaskQueueService]:
    service = TaskQueueService(
        broker=broker, task_executors={"explode": explode, "echo": echo}, clock=clock
    )
    yield service
    await service.shutdown(timeout=1)


async def recorded_slots(service: TaskQueueService, expected: int) -> int:
    """The concurrency of this process's worker record, once it shows ``expected``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECORD_SECONDS
    while True:
        records = [w for w in await service.broker.list_workers() if w.id == service.worker_id]
        seen = records[0].concurrency if records else -1
        if seen == expected or loop.time() > deadline:
            return seen
        await asyncio.sleep(0.01)


async def test_a_worker_slot_that_dies_is_logged_and_replaced(
    service: TaskQueueService,
    broker: AbstractBroker,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a broker whose mark_failed breaks with an error no worker expects
    async def broken_mark_failed(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("a bug in the broker")

    monkeypatch.setattr(broker, "mark_failed", broken_mark_failed)
    caplog.set_level(logging.ERROR, logger="katana")
    slots = service.start_workers(2)

    # When a failing task makes one slot's worker die
    await service.add_task("explode")
    async with asyncio.timeout(GUARD_SECONDS):
        done, _ = await asyncio.wait(slots, return_when=asyncio.FIRST_COMPLETED)
    (dead,) = done
    assert isinstance(dead.exception(), RuntimeError)

    # Then it is logged, and replaced: two slots still serve the queue
    died = [r for r in caplog.records if getattr(r, "katana_event", None) == "worker_died"]
    assert len(died) == 1
    assert "a bug in the broker" in died[0].getMessage()
    tasks = [await service.add_task("echo") for _ in range(4)]
    for task in tasks:
        assert await service.wait_for(task.id, timeout=GUARD_SECONDS) == task.id
    assert await recorded_slots(service, 2) == 2


async def test_a_slot_cancelled_outside_shutdown_shows_in_the_worker_record(
    service: TaskQueueService,
) -> None:
    # Given three slots, recorded
    slots = service.start_workers(3)
    assert await recorded_slots(service, 3) == 3

    # When one is cancelled by its owner (not by shutdown)
    slots[0].cancel()
    await asyncio.wait([slots[0]])

    # Then the record shows the two live ones, and they serve the queue
    assert await recorded_slots(service, 2) == 2
    task = await service.add_task("echo")
    assert await service.wait_for(task.id, timeout=GUARD_SECONDS) == task.id


async def test_the_task_of_a_slot_that_crashes_is_not_left_processing(
    service: TaskQueueService,
    broker: AbstractBroker,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a broker that breaks, with an error no worker expects, recording one task's result
    doomed = await service.add_task("echo")
    complete_soon = broker.complete_soon

    def breaking_complete_soon(task_id: str, result: Any, **kwargs: Any) -> Any:
        if task_id == doomed.id:
            raise RuntimeError("a bug recording the result")
        return complete_soon(task_id, result, **kwargs)

    monkeypatch.setattr(broker, "complete_soon", breaking_complete_soon)
    caplog.set_level(logging.ERROR, logger="katana")

    # When it crashes the slot that ran it
    slots = service.start_workers(1)
    async with asyncio.timeout(GUARD_SECONDS):
        done, _ = await asyncio.wait(slots, return_when=asyncio.FIRST_COMPLETED)
    (dead,) = done
    assert isinstance(dead.exception(), RuntimeError)

    # Then the task is FAILED, once and for good (no slot after slot crashing on it), with why
    stored = await service.get_task(doomed.id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.claim_token) == (TaskStatus.FAILED, 1, None)
    assert stored.error is not None
    assert "RuntimeError: a bug recording the result" in stored.error
    # And the replacement slot serves the queue
    task = await service.add_task("echo")
    assert await service.wait_for(task.id, timeout=GUARD_SECONDS) == task.id

"""Progress reports and the executor's view of its attempt, on every broker."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.context import current_task, report_progress
from katana.task_queue.errors import KatanaError
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

GUARD_SECONDS = 30.0


async def test_progress_reported_by_an_executor_shows_in_get_task(
    broker: AbstractBroker, clock: FakeClock
) -> None:
    reported, finish = asyncio.Event(), asyncio.Event()

    async def export(task: Task) -> dict[str, object]:
        assert await report_progress(0.5, "halfway: 500 of 1000 rows")
        reported.set()
        await finish.wait()
        seen = current_task()
        return {"attempt": seen.attempts, "id": seen.id}

    service = TaskQueueService(broker=broker, task_executors={"export": export}, clock=clock)
    task = await service.add_task("export")
    service.start_workers(1)
    await asyncio.wait_for(reported.wait(), GUARD_SECONDS)

    running = await service.get_task(task.id)
    assert running is not None
    assert (running.status, running.progress, running.progress_message) == (
        TaskStatus.PROCESSING,
        0.5,
        "halfway: 500 of 1000 rows",
    )

    finish.set()
    assert await service.wait_for(task.id, timeout=GUARD_SECONDS) == {
        "attempt": 1,
        "id": task.id,
    }
    await service.shutdown(timeout=1)


async def test_bad_progress_is_refused_and_outside_an_executor_too(
    broker: AbstractBroker, clock: FakeClock
) -> None:
    problems: list[str] = []

    async def bad(task: Task) -> None:
        for fraction, message in ((1.5, ""), (float("nan"), ""), (0.5, "x" * 201)):
            try:
                await report_progress(fraction, message)
            except ValueError as exc:
                problems.append(str(exc))

    service = TaskQueueService(broker=broker, task_executors={"bad": bad}, clock=clock)
    task = await service.add_task("bad")
    service.start_workers(1)
    await service.wait_for(task.id, timeout=GUARD_SECONDS)
    await service.shutdown(timeout=1)

    assert len(problems) == 3
    with pytest.raises(KatanaError, match="inside a running executor"):
        await report_progress(0.1)
    with pytest.raises(KatanaError, match="inside a running executor"):
        current_task()

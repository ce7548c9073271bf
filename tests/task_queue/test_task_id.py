"""add_task(task_id=...): a producer's retry never creates a second task, on every broker."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.errors import InvalidTaskError
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

GUARD_SECONDS = 30.0


@pytest.fixture
async def service(broker: AbstractBroker, clock: FakeClock) -> AsyncIterator[TaskQueueService]:
    async def report(task: Task) -> str:
        return str(task.payload.get("n"))

    service = TaskQueueService(broker=broker, task_executors={"report": report}, clock=clock)
    yield service
    await service.shutdown(timeout=1)


async def test_a_task_is_stored_under_the_id_the_caller_chose(service: TaskQueueService) -> None:
    task = await service.add_task("report", {"n": 1}, task_id="invoice:2026-12:0042")

    assert task.id == "invoice:2026-12:0042"
    stored = await service.broker.get_task("invoice:2026-12:0042")
    assert stored is not None
    assert stored.payload == {"n": 1}


async def test_adding_the_same_id_again_returns_the_first_task(service: TaskQueueService) -> None:
    first = await service.add_task("report", {"n": 1}, priority=3, task_id="order-1")

    again = await service.add_task("report", {"n": 2}, priority=9, task_id="order-1")

    assert (again.id, again.payload, again.priority) == (first.id, {"n": 1}, 3)
    assert (await service.broker.count_by_status())[TaskStatus.PENDING] == 1


async def test_a_finished_task_is_returned_not_run_again(service: TaskQueueService) -> None:
    # Given a task with a chosen id that ran to completion
    first = await service.add_task("report", {"n": 5}, task_id="order-2")
    service.start_workers(1)
    await service.wait_for(first.id, timeout=GUARD_SECONDS)

    # When the producer retries the same call
    again = await service.add_task("report", {"n": 5}, task_id="order-2")

    # Then it gets the finished task, and nothing runs again
    assert (again.status, again.result) == (TaskStatus.COMPLETED, "5")
    await service.wait_idle()
    assert (await service.broker.count_by_status())[TaskStatus.COMPLETED] == 1


async def test_concurrent_retries_with_one_id_create_one_task(service: TaskQueueService) -> None:
    tasks = await asyncio.gather(
        *(service.add_task("report", {"n": n}, task_id="order-3") for n in range(50))
    )

    assert {task.id for task in tasks} == {"order-3"}
    assert len({task.payload["n"] for task in tasks}) == 1
    assert (await service.broker.count_by_status())[TaskStatus.PENDING] == 1


async def test_an_id_and_a_unique_key_together(service: TaskQueueService) -> None:
    first = await service.add_task("report", task_id="order-4", unique_key="report:4")

    by_id = await service.add_task("report", task_id="order-4", unique_key="report:other")
    by_key = await service.add_task("report", task_id="order-5", unique_key="report:4")

    assert by_id.id == by_key.id == first.id
    assert await service.broker.get_task("order-5") is None


@pytest.mark.parametrize("task_id", ["", "x" * 129, "a b", "a/b", "ü", "line\nbreak", 42, b"bytes"])
async def test_invalid_task_ids_are_refused(service: TaskQueueService, task_id: object) -> None:
    with pytest.raises(InvalidTaskError, match="task_id must be 1 to 128"):
        await service.add_task("report", task_id=task_id)  # type: ignore[arg-type]  # on purpose
    assert (await service.broker.count_by_status())[TaskStatus.PENDING] == 0


async def test_the_longest_task_id_is_accepted(service: TaskQueueService) -> None:
    task = await service.add_task("report", task_id="x" * 128)

    assert await service.broker.get_task(task.id) is not None

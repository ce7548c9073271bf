"""Unique tasks: one unfinished task per key, on every broker."""

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


async def test_concurrent_adds_with_one_unique_key_create_one_task(
    service: TaskQueueService,
) -> None:
    # When 100 add_task calls with the same key race
    tasks = await asyncio.gather(
        *(service.add_task("report", {"n": n}, unique_key="report:42") for n in range(100))
    )

    # Then they all got the same, single task
    assert len({task.id for task in tasks}) == 1
    counts = await service.broker.count_by_status()
    assert counts[TaskStatus.PENDING] == 1
    assert tasks[0].unique_key == "report:42"


async def test_a_running_task_keeps_its_key_and_a_finished_one_frees_it(
    service: TaskQueueService,
) -> None:
    first = await service.add_task("report", {"n": 1}, unique_key="k")
    claimed = await service.broker.dequeue(timeout=GUARD_SECONDS)
    assert claimed is not None
    assert claimed.id == first.id

    # While it runs, the key returns it
    again = await service.add_task("report", {"n": 2}, unique_key="k")
    assert (again.id, again.status) == (first.id, TaskStatus.PROCESSING)

    # Once it finished, the key makes a new task
    assert await service.broker.mark_complete(first.id, "1", claim_token=claimed.claim_token)
    fresh = await service.add_task("report", {"n": 3}, unique_key="k")
    assert fresh.id != first.id
    assert fresh.status is TaskStatus.PENDING


async def test_different_keys_and_no_key_are_independent(service: TaskQueueService) -> None:
    a = await service.add_task("report", unique_key="a")
    b = await service.add_task("report", unique_key="b")
    plain = [await service.add_task("report") for _ in range(2)]

    assert len({a.id, b.id, *(task.id for task in plain)}) == 4
    service.start_workers(2)
    await service.wait_idle(timeout=GUARD_SECONDS)
    assert (await service.broker.count_by_status())[TaskStatus.COMPLETED] == 4


async def test_a_cancelled_task_frees_its_key(service: TaskQueueService) -> None:
    first = await service.add_task("report", unique_key="k")
    assert await service.cancel(first.id)

    second = await service.add_task("report", unique_key="k")

    assert second.id != first.id


@pytest.mark.parametrize("key", ["", 7, "x" * 513])
async def test_invalid_unique_keys_are_refused(service: TaskQueueService, key: object) -> None:
    with pytest.raises(InvalidTaskError, match="unique_key"):
        await service.add_task("report", unique_key=key)  # type: ignore[arg-type]  # on purpose
    assert (await service.broker.count_by_status())[TaskStatus.PENDING] == 0

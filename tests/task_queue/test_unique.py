"""Unique tasks: one unfinished task per key, on every broker."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.errors import InvalidTaskError, TaskStateError
from katana.task_queue.listing import TaskQuery
from katana.task_queue.management import QueueManager
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

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


async def _failed_holder_and_successor(service: TaskQueueService) -> tuple[Task, Task]:
    """Task A failed for good holding key K; task B was created with K since (PENDING)."""
    first = await service.add_task("report", {"n": 1}, unique_key="k")
    claimed = await service.broker.dequeue(timeout=GUARD_SECONDS)
    assert claimed is not None
    assert claimed.id == first.id
    assert await service.broker.mark_failed(first.id, "boom", claim_token=claimed.claim_token)
    second = await service.add_task("report", {"n": 2}, unique_key="k")
    assert second.id != first.id
    return first, second


async def _service_redrive(service: TaskQueueService, task_id: str) -> object:
    return await service.redrive(task_id)


async def _manager_retry(service: TaskQueueService, task_id: str) -> object:
    return await QueueManager(service.broker, service).retry(task_id)


@pytest.mark.parametrize(
    "redrive", [_service_redrive, _manager_retry], ids=["service.redrive", "QueueManager.retry"]
)
async def test_redriving_a_task_whose_key_another_task_holds_is_refused(
    service: TaskQueueService,
    redrive: Callable[[TaskQueueService, str], Awaitable[object]],
) -> None:
    # Given A failed holding K, and B holds K now
    first, second = await _failed_holder_and_successor(service)

    # When A is redriven, Then it is refused, naming the holder, and A stays as it was
    with pytest.raises(TaskStateError, match=f"unfinished task {second.id} holds its unique key"):
        await redrive(service, first.id)

    stored = await service.get_task(first.id)
    assert stored is not None
    assert stored.status is TaskStatus.FAILED
    counts = await service.broker.count_by_status()
    assert (counts[TaskStatus.PENDING], counts[TaskStatus.FAILED]) == (1, 1)
    again = await service.add_task("report", {"n": 3}, unique_key="k")
    assert again.id == second.id  # B still holds K


async def test_bulk_redrives_skip_a_task_whose_key_another_task_holds(
    service: TaskQueueService,
) -> None:
    # Given C failed without a key, A failed holding K, and B holds K now
    other = await service.add_task("report", {"n": 4})
    claimed = await service.broker.dequeue(timeout=GUARD_SECONDS)
    assert claimed is not None
    assert claimed.id == other.id
    assert await service.broker.mark_failed(other.id, "boom", claim_token=claimed.claim_token)
    first, _ = await _failed_holder_and_successor(service)
    manager = QueueManager(service.broker, service)

    # When every bulk form redrives them, Then A is skipped each time and C goes
    many = await manager.retry_many([first.id])
    assert (many.done, list(many.skipped)) == ([], [first.id])
    assert "holds its unique key" in many.skipped[first.id]
    assert await manager.retry_matching(TaskQuery(status=TaskStatus.FAILED)) == 1
    assert await service.redrive_all() == 0
    stored = await service.get_task(first.id)
    assert stored is not None
    assert stored.status is TaskStatus.FAILED
    counts = await service.broker.count_by_status()
    assert (counts[TaskStatus.PENDING], counts[TaskStatus.FAILED]) == (2, 1)

"""Hostile strings and numbers at the Python API, on every broker: a lone surrogate in a key is
refused before anything is stored, an id no broker could store is unknown, and a NaN or huge
duration is a ValueError that changes nothing."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.errors import InvalidTaskError, TaskNotFoundError
from katana.task_queue.listing import TaskQuery
from katana.task_queue.management import QueueManager
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

#: Python's json decodes "\ud800" from a request body to this: valid in a str, not in UTF-8.
SURROGATE = "\ud800"
#: What click makes of the argv byte 0xff.
UNDECODABLE = "\udcff"


@pytest.fixture
async def service(broker: AbstractBroker, clock: FakeClock) -> AsyncIterator[TaskQueueService]:
    async def noop(task: Task) -> None:
        return None

    service = TaskQueueService(broker=broker, task_executors={"noop": noop}, clock=clock)
    yield service
    await service.shutdown(timeout=1)


async def test_a_bad_unique_key_in_a_burst_fails_only_its_own_call(
    service: TaskQueueService,
) -> None:
    # Given 50 concurrent add_task calls (the Redis broker coalesces them into batches),
    # one with a unique_key no broker can store
    calls = [
        service.add_task("noop", {"i": i}, unique_key=SURROGATE if i == 5 else None)
        for i in range(50)
    ]

    # When they all finish
    results = await asyncio.gather(*calls, return_exceptions=True)

    # Then that one call alone is refused, and the 49 others are stored
    assert isinstance(results[5], InvalidTaskError)
    assert "unique_key" in str(results[5])
    stored = [result for i, result in enumerate(results) if i != 5]
    assert all(isinstance(task, Task) for task in stored), stored
    counts = await service.broker.count_by_status()
    assert counts[TaskStatus.PENDING] == 49


@pytest.mark.parametrize("task_id", [SURROGATE, UNDECODABLE, "a" + SURROGATE, "x" * 10_000, ""])
async def test_an_id_no_broker_could_store_is_unknown(
    service: TaskQueueService, task_id: str
) -> None:
    manager = QueueManager(service.broker, service)

    assert await service.get_task(task_id) is None
    assert await service.cancel(task_id) is False
    assert await service.redrive(task_id) is False
    with pytest.raises(TaskNotFoundError):
        await service.wait_for(task_id, timeout=5)
    with pytest.raises(TaskNotFoundError):
        await manager.task(task_id)


async def test_a_bulk_action_skips_an_impossible_id_and_acts_on_the_others(
    service: TaskQueueService,
) -> None:
    first = await service.add_task("noop", {"n": 1}, delay_seconds=600)
    last = await service.add_task("noop", {"n": 2}, delay_seconds=600)
    manager = QueueManager(service.broker, service)

    result = await manager.cancel_many([first.id, SURROGATE, last.id])

    assert result.done == [first.id, last.id]
    assert list(result.skipped) == [SURROGATE]
    for task in (first, last):
        stored = await service.get_task(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.CANCELLED


def test_a_listing_filter_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(InvalidTaskError, match="name must be valid Unicode"):
        TaskQuery(name="a" + SURROGATE)
    with pytest.raises(InvalidTaskError, match="text must be valid Unicode"):
        TaskQuery(text="a" + SURROGATE)


async def test_a_periodic_key_with_a_lone_surrogate_is_refused(service: TaskQueueService) -> None:
    with pytest.raises(InvalidTaskError, match="unique_key must be valid Unicode"):
        service.add_periodic("noop", every=1, key=SURROGATE)

    assert service.periodic_jobs == []


@pytest.mark.parametrize("every", [10**12, 1e300, 4e9])
async def test_a_huge_interval_is_refused_and_changes_nothing(
    service: TaskQueueService, every: float
) -> None:
    with pytest.raises(InvalidTaskError, match="every must be a positive interval"):
        service.add_periodic("noop", every=every)

    # The service still works: a valid job is added, listed, and the workers start.
    service.add_periodic("noop", every=3600)
    assert [job.key for job in service.periodic_jobs] == ["noop"]
    workers = service.start_workers(1)
    assert len(workers) == 1


@pytest.mark.parametrize("timeout", [math.nan, -math.nan, math.inf, -math.inf, "1"])
async def test_a_wait_with_a_timeout_that_is_not_a_duration_is_refused(
    service: TaskQueueService, timeout: object
) -> None:
    task = await service.add_task("noop", {}, delay_seconds=600)

    with pytest.raises(ValueError, match="timeout"):
        await service.wait_for(task.id, timeout=timeout)  # type: ignore[arg-type]  # bad on purpose
    with pytest.raises(ValueError, match="timeout"):
        await service.wait_idle(timeout=timeout)  # type: ignore[arg-type]  # bad on purpose


@pytest.mark.parametrize("timeout", [math.nan, math.inf, None])
async def test_shutdown_with_a_timeout_that_is_not_a_duration_is_refused(
    service: TaskQueueService, timeout: object
) -> None:
    service.start_workers(1)

    with pytest.raises(ValueError, match="timeout"):
        await service.shutdown(timeout=timeout)  # type: ignore[arg-type]  # bad on purpose

    await asyncio.wait_for(service.shutdown(timeout=1), timeout=30)

"""Finished tasks are kept for the result TTL, then dropped: tested on a FakeClock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.listing import TaskQuery
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

DAY = 24 * 3600.0


async def finish(broker: InMemoryBroker | RedisBroker, result: str) -> Task:
    task = Task(name="t")
    await broker.enqueue(task)
    claimed = await broker.dequeue(timeout=0)
    assert claimed is not None
    assert await broker.mark_complete(claimed.id, result, claim_token=claimed.claim_token)
    return claimed


async def test_in_memory_results_outlive_nothing_but_their_ttl() -> None:
    clock = FakeClock()
    async with InMemoryBroker(clock=clock, result_ttl_seconds=DAY) as broker:
        old = await finish(broker, "old")
        clock.advance(DAY - 1)
        young = await finish(broker, "young")

        clock.advance(2)  # old is past the TTL, young is not
        await broker.enqueue(Task(name="t"))  # brokers prune as tasks come and go

        assert await broker.get_task(old.id) is None
        kept = await broker.get_task(young.id)
        assert kept is not None
        assert kept.result == "young"
        counts = await broker.count_by_status()
        assert (counts[TaskStatus.COMPLETED], counts[TaskStatus.PENDING]) == (1, 1)


async def _seen_by_get_task(broker: InMemoryBroker, task_id: str) -> bool:
    return await broker.get_task(task_id) is not None


async def _seen_by_listing(broker: InMemoryBroker, task_id: str) -> bool:
    page = await broker.list_tasks(TaskQuery(), limit=10)
    return [listed.id for listed in page.tasks] == [task_id] and page.total == 1


async def _seen_by_counts(broker: InMemoryBroker, task_id: str) -> bool:
    return (await broker.count_by_status())[TaskStatus.COMPLETED] > 0


async def _seen_by_finished_counts(broker: InMemoryBroker, task_id: str) -> bool:
    start = datetime(2000, 1, 1, tzinfo=UTC)
    return sum(await broker.finished_counts([start, start + timedelta(days=365 * 100)])) > 0


@pytest.mark.parametrize(
    "seen",
    [_seen_by_get_task, _seen_by_listing, _seen_by_counts, _seen_by_finished_counts],
    ids=["get_task", "list_tasks", "count_by_status", "finished_counts"],
)
async def test_in_memory_a_task_past_its_ttl_is_gone_on_any_read(
    seen: Callable[[InMemoryBroker, str], Awaitable[bool]],
) -> None:
    # Given a finished task, seen by the read
    clock = FakeClock()
    async with InMemoryBroker(clock=clock, result_ttl_seconds=DAY) as broker:
        task = await finish(broker, "old")
        assert await seen(broker, task.id)

        # When its retention passes while no task comes or goes
        clock.advance(DAY + 1)

        # Then the read alone no longer sees it
        assert not await seen(broker, task.id)


async def test_in_memory_without_ttl_keeps_everything() -> None:
    clock = FakeClock()
    async with InMemoryBroker(clock=clock, result_ttl_seconds=None) as broker:
        old = await finish(broker, "old")
        clock.advance(365 * DAY)
        await broker.enqueue(Task(name="t"))
        assert await broker.get_task(old.id) is not None


async def test_redis_results_are_deleted_after_their_ttl(redis_url: str, queue_name: str) -> None:
    clock = FakeClock()
    async with RedisBroker(
        redis_url, queue=queue_name, clock=clock, result_ttl_seconds=DAY
    ) as broker:
        try:
            old = await finish(broker, "old")
            clock.advance(DAY - 1)
            young = await finish(broker, "young")

            clock.advance(2)
            await broker.heartbeat()  # consuming processes run it every heartbeat_seconds

            assert await broker.get_task(old.id) is None
            assert await broker.get_task(young.id) is not None
            assert (await broker.count_by_status())[TaskStatus.COMPLETED] == 1
            total, listed = await broker.list_finished(TaskStatus.COMPLETED)
            assert (total, [task.id for task in listed]) == (1, [young.id])
        finally:
            await broker.purge()

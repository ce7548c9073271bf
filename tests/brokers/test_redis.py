"""RedisBroker against the real Redis: the shared conformance suite, then what only it does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from katana.task_queue.broker import redis as redis_broker_module
from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.errors import BrokerClosedError, InvalidTaskError
from katana.task_queue.listing import TaskQuery
from katana.task_queue.models import TaskStatus
from katana.task_queue.testing import BrokerContract
from katana.task_queue.testing._support import make_task

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.models import Task


class TestRedisBroker(BrokerContract):
    lease_seconds = 1.0

    @pytest.fixture
    async def broker(self, redis_url: str, queue_name: str) -> AsyncIterator[RedisBroker]:
        broker = RedisBroker(redis_url, queue=queue_name, lease_seconds=self.lease_seconds)
        await broker.connect()
        try:
            yield broker
        finally:
            if not broker._closed:
                await broker.purge()
            await broker.close()
            async with RedisBroker(redis_url, queue=queue_name) as cleaner:
                await cleaner.purge()

    async def stop_renewing(self, broker: AbstractBroker, task: Task) -> None:
        # The heartbeat renews exactly the claims this registry lists.
        assert isinstance(broker, RedisBroker)
        broker._held.pop(task.id, None)


# -- RedisBroker only ------------------------------------------------------------------------


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_broker(redis_url: str, queue_name: str) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_url, queue=queue_name, lease_seconds=0.3, heartbeat_seconds=0.1)
    yield broker
    await broker.purge()
    await broker.close()


async def test_a_claim_taken_without_waiting_is_renewed_too(
    redis_broker: RedisBroker, redis_url: str, queue_name: str
) -> None:
    # Given a task claimed with dequeue(timeout=0) and held for several leases
    await redis_broker.enqueue(make_task())
    claimed = await redis_broker.dequeue(timeout=0)
    assert claimed is not None
    async with RedisBroker(redis_url, queue=queue_name, lease_seconds=0.3) as other:
        # Then no other consumer gets it meanwhile: the heartbeat renews the claim
        assert await other.dequeue(timeout=1.0) is None
    assert await redis_broker.mark_complete(claimed.id, claim_token=claimed.claim_token)


async def test_garbage_in_the_counters_does_not_orphan_a_task(
    redis_broker: RedisBroker, raw: aioredis.Redis
) -> None:
    await redis_broker.enqueue(make_task())
    claimed = await redis_broker.dequeue(timeout=0)
    assert claimed is not None
    await raw.set(f"{redis_broker.prefix}:counts", "garbage")

    assert await redis_broker.mark_complete(claimed.id, claim_token=claimed.claim_token)

    stored = await redis_broker.get_task(claimed.id)
    assert stored is not None
    assert stored.status is TaskStatus.COMPLETED
    assert (await redis_broker.count_by_status())[TaskStatus.COMPLETED] == 1
    assert any("counts" in note["entry"] for note in await redis_broker.quarantined())


async def test_a_record_with_non_numeric_attempts_is_quarantined(
    redis_broker: RedisBroker, raw: aioredis.Redis
) -> None:
    bad, good = make_task(), make_task()
    await redis_broker.enqueue_many([bad, good])
    await raw.hset(f"{redis_broker.prefix}:task:{bad.id}", "attempts", "many")

    claimed = [await redis_broker.dequeue(timeout=0), await redis_broker.dequeue(timeout=0)]

    assert [task.id for task in claimed if task is not None] == [good.id]
    assert await redis_broker.get_task(bad.id) is None
    notes = await redis_broker.quarantined()
    assert any(note["entry"] == bad.id and "attempts" in note["reason"] for note in notes)


async def test_a_delayed_record_with_a_non_numeric_priority_is_moved_aside(
    redis_broker: RedisBroker, raw: aioredis.Redis
) -> None:
    task = make_task(scheduled_at=datetime.now(UTC) - timedelta(seconds=1))
    await redis_broker.enqueue(make_task(delay_seconds=60))  # keeps the delayed set alive
    # A delayed entry that came due, whose record says nothing sensible about its priority
    await redis_broker.enqueue(task)
    key = f"{redis_broker.prefix}:task:{task.id}"
    member = await raw.hget(key, "member")
    assert member is not None
    await raw.zrem(f"{redis_broker.prefix}:ready", member)
    await raw.hdel(key, "member")
    await raw.zadd(f"{redis_broker.prefix}:delayed", {task.id: 0})
    await raw.hset(key, "priority", "high")

    assert await redis_broker.dequeue(timeout=0) is None

    assert await redis_broker.get_task(task.id) is None
    assert (await redis_broker.count_by_status())[TaskStatus.PENDING] == 1
    notes = await redis_broker.quarantined()
    assert any(note["entry"] == task.id and "priority" in note["reason"] for note in notes)


class StallingClaimBroker(RedisBroker):
    """Once ``stall`` is set, a claim that carries outcomes never returns, as if Redis stalled."""

    stall = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stalled = asyncio.Event()

    async def _run(self, script: str, args: list[Any]) -> Any:
        if script == "claim" and self.stall and len(args) > 7:  # outcomes follow seven values
            self.stalled.set()
            await asyncio.Event().wait()
        return await super()._run(script, args)


async def test_outcomes_of_a_claim_that_close_cuts_short_are_still_written(
    redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_broker_module, "_CLAIM_GRACE_SECONDS", 0.1)
    broker = StallingClaimBroker(redis_url, queue=queue_name)
    await broker.enqueue(make_task("t"))
    claimed = await broker.dequeue(timeout=5)
    assert claimed is not None

    broker.stall = True
    outcome = broker.complete_soon(claimed.id, "done", claim_token=claimed.claim_token)
    consumer = asyncio.create_task(broker.dequeue())  # its claim carries the outcome, and stalls
    async with asyncio.timeout(5):
        await broker.stalled.wait()
    await broker.close()  # cuts the stalled claim short after the grace period

    assert await outcome is True  # written by close()'s last flush, not failed
    with pytest.raises(BrokerClosedError):
        await consumer
    async with RedisBroker(redis_url, queue=queue_name) as reader:
        stored = await reader.get_task(claimed.id)
        await reader.purge()
    assert stored is not None
    assert (stored.status, stored.result) == (TaskStatus.COMPLETED, "done")


async def test_listing_counts_only_the_tasks_it_can_show(
    redis_broker: RedisBroker, raw: aioredis.Redis
) -> None:
    # Given one good task, one whose record is garbage, and index entries whose record is gone
    good, bad = make_task(), make_task()
    await redis_broker.enqueue_many([good, bad])
    prefix = redis_broker.prefix
    await raw.hset(f"{prefix}:task:{bad.id}", "attempts", "many")
    await raw.zadd(f"{prefix}:all", {"gone-1": 1.0, "gone-2": 2.0})
    await raw.zadd(f"{prefix}:finished:DEAD", {"gone-3": 1.0})

    # When the dashboard lists every task, and the dead letters
    everything = await redis_broker.list_tasks(TaskQuery())
    dead = await redis_broker.list_tasks(TaskQuery(status=TaskStatus.DEAD))

    # Then each total counts the tasks its page shows, no more
    assert (everything.total, [task.id for task in everything.tasks]) == (1, [good.id])
    assert (dead.total, dead.tasks) == (0, [])
    # And what it met is cleaned: the stale entries are gone, the garbage quarantined, so
    # later pages count right too
    assert await raw.zcard(f"{prefix}:finished:DEAD") == 0
    assert await raw.zrangebyscore(f"{prefix}:all", 0, 3) == []
    assert any(note["entry"] == bad.id for note in await redis_broker.quarantined())
    first = await redis_broker.list_tasks(TaskQuery(), limit=1)
    assert (first.total, [task.id for task in first.tasks]) == (1, [good.id])


async def test_a_task_that_cannot_be_encoded_fails_only_its_own_call_in_a_batch(
    redis_broker: RedisBroker,
) -> None:
    # Given 50 concurrent enqueues, coalesced into shared round trips, one of them with a
    # unique_key that is not valid UTF-8 (the broker is given it as is, past the service)
    tasks = [make_task(payload={"i": i}) for i in range(50)]
    tasks[5].unique_key = "\ud800"
    calls = [
        redis_broker.enqueue_unique(task) if task.unique_key else redis_broker.enqueue(task)
        for task in tasks
    ]

    # When they all finish
    results = await asyncio.gather(*calls, return_exceptions=True)

    # Then that call alone fails, with InvalidTaskError, and the 49 others are stored
    assert isinstance(results[5], InvalidTaskError)
    assert [result for i, result in enumerate(results) if i != 5] == [None] * 49
    assert (await redis_broker.count_by_status())[TaskStatus.PENDING] == 49

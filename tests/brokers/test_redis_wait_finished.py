"""RedisBroker.wait_finished is woken by the finish itself, across broker instances."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.models import Task, TaskStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

#: Loopback pub/sub delivers in milliseconds; the old poll backoff reached 0.5 s by then.
PROMPT_SECONDS = 0.25
#: Shorter than the waiter's 1 s safety poll: during it, a woken-not-polling waiter reads once.
QUIET_SECONDS = 0.8


class CountingBroker(RedisBroker):
    """Counts get_task reads, to tell waiting on a message from polling."""

    reads = 0

    async def get_task(self, task_id: str) -> Task | None:
        self.reads += 1
        return await super().get_task(task_id)


@pytest.fixture
async def brokers(
    redis_url: str, queue_name: str
) -> AsyncIterator[tuple[CountingBroker, RedisBroker]]:
    async with (
        CountingBroker(redis_url, queue=queue_name) as producer,
        RedisBroker(redis_url, queue=queue_name) as consumer,
    ):
        try:
            yield producer, consumer
        finally:
            await consumer.purge()


async def test_a_waiter_reads_once_then_wakes_when_another_process_completes_the_task(
    brokers: tuple[CountingBroker, RedisBroker],
) -> None:
    producer, consumer = brokers
    task = Task(name="t")
    await producer.enqueue(task)
    claimed = await consumer.dequeue(timeout=5)
    assert claimed is not None
    waiter = asyncio.create_task(producer.wait_finished(task.id, timeout=10))
    await asyncio.sleep(QUIET_SECONDS)
    assert producer.reads == 1  # subscribed, read, then waited without polling

    loop = asyncio.get_running_loop()
    finished_at = loop.time()
    assert await consumer.mark_complete(task.id, "done", claim_token=claimed.claim_token)
    finished = await waiter

    assert loop.time() - finished_at < PROMPT_SECONDS
    assert finished is not None
    assert (finished.status, finished.result) == (TaskStatus.COMPLETED, "done")
    assert producer.reads == 2


async def test_cancelling_a_pending_task_wakes_its_waiter(
    brokers: tuple[CountingBroker, RedisBroker],
) -> None:
    producer, consumer = brokers
    task = Task(name="t")
    await producer.enqueue(task)
    waiter = asyncio.create_task(producer.wait_finished(task.id, timeout=10))
    await asyncio.sleep(QUIET_SECONDS)

    loop = asyncio.get_running_loop()
    cancelled_at = loop.time()
    assert await consumer.cancel(task.id)
    finished = await waiter

    assert loop.time() - cancelled_at < PROMPT_SECONDS
    assert finished is not None
    assert finished.status is TaskStatus.CANCELLED


async def test_many_waiters_on_one_broker_share_one_subscription(
    brokers: tuple[CountingBroker, RedisBroker],
) -> None:
    producer, consumer = brokers
    tasks = [Task(name="t") for _ in range(20)]
    await producer.enqueue_many(tasks)
    waiters = [asyncio.create_task(producer.wait_finished(t.id, timeout=10)) for t in tasks]
    claimed = [await consumer.dequeue(timeout=5) for _ in tasks]

    for task in claimed:
        assert task is not None
        consumer.complete_soon(task.id, task.id, claim_token=task.claim_token)
    finished = await asyncio.gather(*waiters)

    assert [t.result for t in finished if t is not None] == [t.id for t in tasks]
    channels = await consumer._client.pubsub_numsub(f"{producer.prefix}:finished")
    assert channels[0][1] == 1

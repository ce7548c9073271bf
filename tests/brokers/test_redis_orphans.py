"""RedisBroker: the claims of a consumer process that is gone come back by its liveness mark."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from katana.task_queue.broker._redis_liveness import ALIVE_TTL_SECONDS
from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.models import TaskStatus
from katana.task_queue.testing._support import make_task

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from katana.task_queue.models import Task

#: Leases far longer than any of these tests: whatever comes back early came back by the mark.
LONG_LEASE = 600.0
#: How often the tests look again at what the heartbeat did.
POLL_SECONDS = 0.05


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def make_broker(redis_url: str, queue_name: str) -> AsyncIterator[Callable[..., RedisBroker]]:
    """Makes brokers on the test's queue with a long lease; closes them and purges the queue."""
    made: list[RedisBroker] = []

    def make(max_deliveries: int = 3) -> RedisBroker:
        broker = RedisBroker(
            redis_url, queue=queue_name, lease_seconds=LONG_LEASE, max_deliveries=max_deliveries
        )
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()
    async with RedisBroker(redis_url, queue=queue_name) as cleaner:
        await cleaner.purge()


async def _claim_and_vanish(broker: RedisBroker) -> Task:
    """Claim a task, then stop as a killed process would: nothing of ``broker`` runs any more
    (no heartbeat, no liveness mark) and nothing is handed back."""
    await broker.enqueue(make_task("t"))
    claimed = await broker.dequeue(timeout=0)
    assert claimed is not None
    await broker._stop_background()
    await asyncio.to_thread(broker._liveness.stop)
    broker._held.clear()
    return claimed


async def _server_ms(raw: aioredis.Redis) -> int:
    seconds, micros = await raw.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _swept_just_now(raw: aioredis.Redis, broker: RedisBroker) -> None:
    """As on a queue whose consumers have been sweeping all along (no grace period is due)."""
    await raw.hset(f"{broker.prefix}:sweep", "last_ms", await _server_ms(raw))


async def _heartbeat_until(broker: RedisBroker, task_id: str, status: TaskStatus) -> float:
    """Run ``broker``'s heartbeat until the task has ``status``; returns the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(ALIVE_TTL_SECONDS * 2 + 5):
        while True:
            await broker.heartbeat()
            stored = await broker.get_task(task_id)
            assert stored is not None
            if stored.status is status:
                return time.monotonic() - started
            await asyncio.sleep(POLL_SECONDS)


async def test_the_claim_of_a_process_that_is_gone_comes_back_long_before_its_lease(
    make_broker: Callable[..., RedisBroker],
) -> None:
    # Given a task claimed under a 600 s lease by a consumer whose process is then gone
    gone = make_broker()
    claimed = await _claim_and_vanish(gone)

    # When another consumer waits for work, its heartbeat finds the mark expired
    other = make_broker()
    async with asyncio.timeout(2 * ALIVE_TTL_SECONDS + 5):
        again = await other.dequeue(timeout=2 * ALIVE_TTL_SECONDS + 5)

    # Then it gets the task as its second attempt, and the gone one's outcome is refused
    assert again is not None
    assert (again.id, again.attempts) == (claimed.id, 2)
    assert await gone.mark_complete(claimed.id, "late", claim_token=claimed.claim_token) is False
    assert await other.mark_complete(again.id, "done", claim_token=again.claim_token) is True
    stored = await other.get_task(claimed.id)
    assert stored is not None
    assert (stored.status, stored.result) == (TaskStatus.COMPLETED, "done")


async def test_an_orphan_counts_as_a_lost_delivery(
    make_broker: Callable[..., RedisBroker], raw: aioredis.Redis
) -> None:
    # Given max_deliveries=1 and a task claimed by a consumer whose process is then gone
    gone = make_broker(max_deliveries=1)
    claimed = await _claim_and_vanish(gone)
    await _swept_just_now(raw, gone)

    # When another consumer's heartbeat takes it back
    other = make_broker(max_deliveries=1)
    await _heartbeat_until(other, claimed.id, TaskStatus.DEAD)

    # Then it is DEAD, as after an expired lease: its one delivery lost its worker
    stored = await other.get_task(claimed.id)
    assert stored is not None
    assert stored.error is not None
    assert stored.error.startswith("WorkerLost: delivered 1 times"), stored.error
    assert stored.claim_token is None


async def test_after_a_gap_in_sweeps_orphans_wait_one_mark_lifetime(
    make_broker: Callable[..., RedisBroker], raw: aioredis.Redis
) -> None:
    # Given a claim of a process that is gone, and no sweep for 10 s (as after a Redis restart:
    # the marks of live processes may have expired meanwhile, and they need time to refresh)
    gone = make_broker()
    claimed = await _claim_and_vanish(gone)
    await raw.hset(f"{gone.prefix}:sweep", "last_ms", await _server_ms(raw) - 10_000)

    # When another consumer's heartbeat runs until the task is back
    other = make_broker()
    waited = await _heartbeat_until(other, claimed.id, TaskStatus.PENDING)

    # Then that took one mark lifetime (3 s), not one heartbeat
    assert ALIVE_TTL_SECONDS - 0.1 <= waited <= ALIVE_TTL_SECONDS + 2, waited


async def test_a_live_consumer_keeps_its_claim_and_leaves_no_keys_behind(
    make_broker: Callable[..., RedisBroker], raw: aioredis.Redis
) -> None:
    # Given a task claimed by a live consumer, on a queue whose consumers sweep all along
    live = make_broker()
    await live.enqueue(make_task("t"))
    claimed = await live.dequeue(timeout=0)
    assert claimed is not None
    await _swept_just_now(raw, live)

    # When another consumer's heartbeat sweeps for one mark lifetime and more
    other = make_broker()
    deadline = time.monotonic() + ALIVE_TTL_SECONDS + 1
    while time.monotonic() < deadline:
        await other.heartbeat()
        await asyncio.sleep(POLL_SECONDS)

    # Then the claim is still the live consumer's, which completes it
    stored = await other.get_task(claimed.id)
    assert stored is not None
    assert (stored.status, stored.claim_token) == (TaskStatus.PROCESSING, claimed.claim_token)
    assert await live.mark_complete(claimed.id, "done", claim_token=claimed.claim_token) is True
    # ...and once it closed, the next sweep forgets it: no owner or owned-set key is left
    await live.close()
    await other.heartbeat()
    assert await raw.smembers(f"{live.prefix}:owners") == set()
    assert [key async for key in raw.scan_iter(match=f"{live.prefix}:owned:*")] == []
    assert [key async for key in raw.scan_iter(match=f"{live.prefix}:alive:*")] == []


@pytest.mark.parametrize("suffix", ["owners", "sweep", "owned:{owner}", "alive:{owner}"])
async def test_garbage_under_an_orphan_key_stops_neither_claims_nor_heartbeats(
    make_broker: Callable[..., RedisBroker], raw: aioredis.Redis, suffix: str
) -> None:
    # Given a list where one of the liveness keys belongs
    broker = make_broker()
    key = f"{broker.prefix}:{suffix.format(owner=broker._owner)}"
    await raw.rpush(key, "garbage")
    await broker.enqueue(make_task("t"))

    # When a task is claimed, heartbeats run and its completion is written
    claimed = await broker.dequeue(timeout=0)
    assert claimed is not None
    await broker.heartbeat()
    await broker.heartbeat()

    # Then all of it worked, and the garbage went aside (a mark is simply overwritten)
    assert await broker.mark_complete(claimed.id, "done", claim_token=claimed.claim_token)
    stored = await broker.get_task(claimed.id)
    assert stored is not None
    assert stored.status is TaskStatus.COMPLETED
    if not suffix.startswith("alive"):
        assert any(note["entry"] == key for note in await broker.quarantined())


async def test_garbage_under_a_gone_owners_claims_does_not_stop_the_sweep(
    make_broker: Callable[..., RedisBroker], raw: aioredis.Redis
) -> None:
    # Given an owner that is gone, whose owned set is garbage, beside a real orphan
    gone = make_broker()
    claimed = await _claim_and_vanish(gone)
    await raw.sadd(f"{gone.prefix}:owners", "ghost")
    await raw.set(f"{gone.prefix}:owned:ghost", "garbage")
    await _swept_just_now(raw, gone)

    # When another consumer's heartbeat sweeps, then the real orphan is back all the same
    other = make_broker()
    await _heartbeat_until(other, claimed.id, TaskStatus.PENDING)
    assert not await raw.sismember(f"{gone.prefix}:owners", "ghost")

"""Liveness marks across a Redis restart: live processes keep their claims."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from katana.task_queue.broker._redis_liveness import ALIVE_TTL_SECONDS
from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.errors import BrokerUnavailableError
from katana.task_queue.models import TaskStatus
from katana.task_queue.testing._support import make_task

from ._redis_server import RedisServers

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

#: Longer than a liveness mark lives: every mark written before the crash expires meanwhile.
OUTAGE_SECONDS = ALIVE_TTL_SECONDS + 2
#: Generous bound for what the brokers do by themselves once Redis is back.
GUARD_SECONDS = 20.0


@pytest.fixture
def redis_servers() -> Iterator[RedisServers]:
    with RedisServers() as servers:
        yield servers


async def _poll(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll Redis, which the brokers' background loops change, until ``condition`` holds."""
    deadline = time.monotonic() + GUARD_SECONDS
    while True:
        with contextlib.suppress(OSError, aioredis.RedisError):  # Redis is still coming back
            if await condition():
                return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_a_live_processs_claim_survives_a_redis_restart_longer_than_its_mark(
    redis_servers: RedisServers, queue_name: str
) -> None:
    # Given a persistent Redis, a task claimed under a long lease by one consumer, and a
    # second consumer waiting for work, both sweeping for orphans every second
    server = redis_servers.new({"appendonly": "yes", "appendfsync": "always"})
    holder = RedisBroker(server.url, queue=queue_name, lease_seconds=600)
    other = RedisBroker(server.url, queue=queue_name, lease_seconds=600)
    raw = aioredis.Redis.from_url(server.url)
    sweep_key = f"{holder.prefix}:sweep"
    waiting = None
    try:
        await holder.enqueue(make_task("t"))
        claimed = await holder.dequeue(timeout=5)
        assert claimed is not None
        waiting = asyncio.create_task(other.dequeue())

        async def swept() -> bool:
            return bool(await raw.hget(sweep_key, "last_ms"))

        await _poll(swept, "a first sweep")

        # When Redis is killed, stays down longer than a liveness mark lives, and restarts
        server.kill()
        await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself
        server.start()

        # Then once a sweep ran past the grace period the restart started...
        async def swept_after_grace() -> bool:
            raw_last, raw_grace = await raw.hmget(sweep_key, ["last_ms", "grace_ms"])
            return bool(raw_grace) and int(raw_last or 0) >= int(raw_grace or 0)

        await _poll(swept_after_grace, "a sweep after the grace period")
        # ...the task is still the live holder's, and its completion is recorded
        stored = await holder.get_task(claimed.id)
        assert stored is not None
        assert (stored.status, stored.claim_token) == (TaskStatus.PROCESSING, claimed.claim_token)
        assert not waiting.done()
        try:
            done = await holder.mark_complete(claimed.id, "done", claim_token=claimed.claim_token)
        except BrokerUnavailableError:  # a pooled connection from before the restart
            done = await holder.mark_complete(claimed.id, "done", claim_token=claimed.claim_token)
        assert done is True
    finally:
        if waiting is not None:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waiting
        await other.close()
        await holder.close()
        await raw.aclose()

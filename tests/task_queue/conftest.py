"""The broker every lifecycle test runs on: once in memory, once on the real Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.broker.redis import RedisBroker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[AbstractBroker]:
    """A fresh, empty broker of each kind (modules with their own ``broker`` override it)."""
    if request.param == "memory":
        async with InMemoryBroker() as memory:
            yield memory
        return
    redis_url: str = request.getfixturevalue("redis_url")
    queue_name: str = request.getfixturevalue("queue_name")
    redis = RedisBroker(redis_url, queue=queue_name)
    try:
        yield redis
    finally:
        await redis.purge()
        await redis.close()

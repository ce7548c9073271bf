"""The broker every lifecycle test runs on: once in memory, once on the real Redis."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.testing import FakeClock

from ._clockwork import RetryLog

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from katana.task_queue.broker.base import AbstractBroker


@pytest.fixture
def clock() -> FakeClock:
    """The clock of the ``broker`` fixture's brokers: delays pass only when a test moves it."""
    return FakeClock(start=time.time())


@pytest.fixture
def retries() -> Iterator[RetryLog]:
    """Every retry the workers schedule, with its delay (see ``_clockwork.finish``)."""
    log = RetryLog()
    katana_logger = logging.getLogger("katana.task_queue")
    level = katana_logger.level
    katana_logger.setLevel(logging.INFO)
    katana_logger.addHandler(log)
    yield log
    katana_logger.removeHandler(log)
    katana_logger.setLevel(level)


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[AbstractBroker]:
    """A fresh, empty broker of each kind on the FakeClock (a module may define its own)."""
    if request.param == "memory":
        async with InMemoryBroker(clock=clock) as memory:
            yield memory
        return
    redis_url: str = request.getfixturevalue("redis_url")
    queue_name: str = request.getfixturevalue("queue_name")
    redis = RedisBroker(redis_url, queue=queue_name, clock=clock)
    try:
        yield redis
    finally:
        await redis.purge()
        await redis.close()

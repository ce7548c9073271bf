"""Fixtures shared by every test package: the real services the tests talk to."""

from __future__ import annotations

import os
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from katana.task_queue.broker.base import AbstractBroker


def _service_url(variable: str, what: str) -> str:
    """The service's URL from ``variable``; skipped locally when unset, an error under CI."""
    url = os.environ.get(variable)
    if not url:
        message = f"{variable} is not set: these tests need a running {what}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, and CI=true requires them")
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis, e.g. ``redis://127.0.0.1:6379/0`` (``KATANA_TEST_REDIS_URL``)."""
    return _service_url("KATANA_TEST_REDIS_URL", "Redis server")


@pytest.fixture
def queue_name() -> str:
    """A queue name no other test uses, so tests sharing one Redis never see each other."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clock() -> FakeClock:
    """The clock of the ``broker`` fixture's brokers: delays pass only when a test moves it."""
    return FakeClock(start=time.time())


@pytest.fixture(params=["memory", "redis", "sqlite"])
async def broker(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[AbstractBroker]:
    """A fresh, empty broker of each kind on the FakeClock (a module may define its own)."""
    if request.param == "memory":
        async with InMemoryBroker(clock=clock) as memory:
            yield memory
        return
    if request.param == "sqlite":
        tmp_path: Path = request.getfixturevalue("tmp_path")
        async with SqliteBroker(tmp_path / "katana.db", clock=clock) as sqlite:
            yield sqlite
        return
    redis_url: str = request.getfixturevalue("redis_url")
    queue_name: str = request.getfixturevalue("queue_name")
    redis = RedisBroker(redis_url, queue=queue_name, clock=clock)
    try:
        yield redis
    finally:
        await redis.purge()
        await redis.close()

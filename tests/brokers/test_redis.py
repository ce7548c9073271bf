"""RedisBroker against the real Redis: the shared conformance suite, then what only it does."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.testing import BrokerContract

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

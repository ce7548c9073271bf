"""SqliteBroker: the shared conformance suite, then what only a file shared by processes shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.testing import BrokerContract

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.models import Task


class TestSqliteBroker(BrokerContract):
    lease_seconds = 1.0

    @pytest.fixture
    async def broker(self, tmp_path: Path) -> AsyncIterator[SqliteBroker]:
        broker = SqliteBroker(tmp_path / "katana.db", lease_seconds=self.lease_seconds)
        await broker.connect()
        try:
            yield broker
        finally:
            await broker.close()

    async def stop_renewing(self, broker: AbstractBroker, task: Task) -> None:
        # The heartbeat renews exactly the claims this registry lists.
        assert isinstance(broker, SqliteBroker)
        broker._held.pop(task.id, None)

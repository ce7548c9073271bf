"""A worker app whose one task, ``forever``, swallows every cancellation (run with --broker)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from katana.task_queue.models import Task

__all__ = ["forever", "service"]


async def forever(task: Task) -> None:
    """A buggy executor: it never ends, and ignores every cancel it is sent."""
    while True:
        try:  # noqa: SIM105  # written as the buggy executors users write it
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass


def service() -> TaskQueueService:
    app = TaskQueueService(InMemoryBroker())
    app.register("forever", forever)
    return app

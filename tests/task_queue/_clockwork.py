"""Running tasks whose retries wait on a FakeClock: the test moves the clock, nobody sleeps."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from katana.task_queue.models import Task
    from katana.task_queue.service import TaskQueueService
    from katana.task_queue.testing import FakeClock

__all__ = ["RetryLog", "finish"]

GUARD_SECONDS = 30.0


class RetryLog(logging.Handler):
    """Collects the delay of every ``task_retry`` the workers log, as it happens."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.delays: list[float] = []
        self._pending: asyncio.Queue[float] = asyncio.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "katana_event", None) == "task_retry":
            delay = float(record.__dict__["retry_delay_seconds"])
            self.delays.append(delay)
            self._pending.put_nowait(delay)

    async def next_delay(self) -> float:
        return await self._pending.get()


async def finish(
    service: TaskQueueService, clock: FakeClock, retries: RetryLog, task: Task
) -> Task:
    """Run ``task`` to its end: each time a retry is scheduled, move the clock to it."""
    if service.state.value != "running":
        service.start_workers(2)
    finished = asyncio.create_task(service.broker.wait_finished(task.id, GUARD_SECONDS))
    try:
        while True:
            retried = asyncio.create_task(retries.next_delay())
            done, _ = await asyncio.wait(
                {finished, retried}, timeout=GUARD_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                raise TimeoutError(f"task {task.id} did not finish")
            if finished in done:
                retried.cancel()
                result = finished.result()
                assert result is not None
                return result
            # Brokers keep due times to the millisecond (Redis) or microsecond: 1 ms more
            # makes sure the retry is due and not a rounding error short of it.
            clock.advance(retried.result() + 0.001)
    finally:
        finished.cancel()

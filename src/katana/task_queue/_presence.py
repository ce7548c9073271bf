"""A process's worker record in the broker: who runs, where, with what, refreshed while alive."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ._cancelling import cancel_safe
from ._events import logger
from .listing import WorkerInfo
from .models import new_task_id, utcnow

if TYPE_CHECKING:
    from collections.abc import Callable

    from .broker.base import AbstractBroker

__all__ = ["PRESENCE_INTERVAL_SECONDS", "Presence"]

#: How often a running process refreshes its record. A record lives three intervals, so a
#: process killed without a word drops out of the listing within that.
PRESENCE_INTERVAL_SECONDS = 5.0


class Presence:
    """Keeps one record for this process's workers until ``stop()``."""

    def __init__(
        self,
        broker: AbstractBroker,
        *,
        concurrency: Callable[[], int],
        current_task_ids: Callable[[], list[str]],
        processed: Callable[[], int],
        task_names: list[str],
        now: Callable[[], datetime] = utcnow,
        interval: float = PRESENCE_INTERVAL_SECONDS,
    ) -> None:
        self._now = now
        self._broker = broker
        self._concurrency = concurrency
        self._current_task_ids = current_task_ids
        self._processed = processed
        self._task_names = task_names
        self._interval = interval
        host = socket.gethostname()
        self.id = f"{host}:{os.getpid()}:{new_task_id()[:8]}"
        self._host = host
        self._started_at = now()
        self._loop_task: asyncio.Task[None] | None = None
        self._refresh = asyncio.Event()

    def refresh(self) -> None:
        """Write the record again now, not at the next interval (something in it changed)."""
        self._refresh.set()

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._report_loop(), name="katana-presence")

    def record(self) -> WorkerInfo:
        now = self._now()
        return WorkerInfo(
            id=self.id,
            host=self._host,
            pid=os.getpid(),
            queue=self._broker.queue,
            concurrency=self._concurrency(),
            task_names=list(self._task_names),
            current_task_ids=self._current_task_ids(),
            started_at=self._started_at,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=3 * self._interval),
            processed=self._processed(),
        )

    async def _report_loop(self) -> None:
        while True:
            try:
                # cancel_safe: stop() must not lose its cancel inside a driver call.
                await cancel_safe(self._broker.record_worker(self.record()))
            except Exception as exc:  # the broker may be down: the workers carry on
                logger.warning(
                    "cannot record this worker process in the broker: %s",
                    exc,
                    extra={"katana_event": "presence_error"},
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._refresh.wait()
            self._refresh.clear()

    async def stop(self) -> None:
        if self._loop_task is None:
            return
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        self._loop_task = None
        with contextlib.suppress(Exception):  # it expires by itself if this fails
            await self._broker.remove_worker(self.id)

"""A worker app for ``katana worker`` subprocesses in tests, configured by KATANA_FROZEN_* vars."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from katana.task_queue.models import Task

__all__ = ["EventFile", "factory"]

#: Environment variables the tests set for the subprocess.
URL_VARIABLE = "KATANA_FROZEN_REDIS_URL"
QUEUE_VARIABLE = "KATANA_FROZEN_QUEUE"
LEASE_VARIABLE = "KATANA_FROZEN_LEASE_SECONDS"
TASK_SECONDS_VARIABLE = "KATANA_FROZEN_TASK_SECONDS"
EVENTS_VARIABLE = "KATANA_FROZEN_EVENTS"


class EventFile(logging.Handler):
    """Appends one JSON line per log record that carries a ``katana_event``, flushed at once.

    The test reads the file to learn what the subprocess did, e.g. ``task_claim_lost``.
    """

    def __init__(self, path: str) -> None:
        super().__init__(level=logging.DEBUG)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "katana_event", None)
        if event is None:
            return
        line = {
            "event": event,
            "task_id": getattr(record, "task_id", None),
            "level": record.levelname,
            "pid": os.getpid(),
            "message": record.getMessage(),
        }
        with open(self.path, "a", encoding="utf-8") as events:
            events.write(json.dumps(line) + "\n")


async def slow(task: Task) -> dict[str, Any]:
    """Waits ``KATANA_FROZEN_TASK_SECONDS`` (default 3), then names the process that ran it."""
    await asyncio.sleep(float(os.environ.get(TASK_SECONDS_VARIABLE, "3")))
    return {"pid": os.getpid()}


async def quick(task: Task) -> dict[str, Any]:
    return {"pid": os.getpid()}


def factory() -> TaskQueueService:
    """The service ``katana worker tests.integration.frozen_app:factory`` runs."""
    events = os.environ.get(EVENTS_VARIABLE)
    if events:
        logging.getLogger("katana").addHandler(EventFile(events))
    broker = RedisBroker(
        os.environ[URL_VARIABLE],
        queue=os.environ[QUEUE_VARIABLE],
        lease_seconds=float(os.environ.get(LEASE_VARIABLE, "1")),
    )
    return TaskQueueService(broker, {"slow": slow, "quick": quick})

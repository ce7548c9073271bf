"""Lifecycle log lines with stable event names, cheap when their level is disabled.

A worker's routine steps for every task (``task_started``, ``task_completed``) are DEBUG: at
INFO, writing them cost more worker CPU than claiming and running a small task. ``task_created``
(the producer's side), cancellations and retries are INFO, hand-backs WARNING, failures ERROR.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Task

__all__ = ["log_task_event", "logger"]

logger = logging.getLogger("katana.task_queue")


def log_task_event(
    level: int,
    event: str,
    task: Task,
    message: str,
    *args: object,
    exc_info: BaseException | None = None,
    details: dict[str, object] | None = None,
) -> None:
    """Log ``message`` with ``katana_event``, ``task_id``, ``task_name`` (and ``details``)."""
    if logger.isEnabledFor(level):
        extra: dict[str, object] = {"katana_event": event, "task_id": task.id}
        extra["task_name"] = task.name
        if details:
            extra.update(details)
        logger.log(level, message, *args, exc_info=exc_info, extra=extra)

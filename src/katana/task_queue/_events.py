"""Lifecycle log lines with stable event names, cheap when their level is disabled."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from .models import Task

__all__ = ["add_event_listener", "log_task_event", "logger", "remove_event_listener"]

logger = logging.getLogger("katana.task_queue")

#: Called with (event, task) for every lifecycle event, whatever the log level: metrics.
_listeners: list[Callable[[str, Task], None]] = []


def add_event_listener(listener: Callable[[str, Task], None]) -> None:
    """Call ``listener(event, task)`` on every lifecycle event in this process."""
    if listener not in _listeners:
        _listeners.append(listener)


def remove_event_listener(listener: Callable[[str, Task], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


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
    for listener in _listeners:
        try:
            listener(event, task)
        except Exception:  # a broken listener must not break the task's lifecycle
            logger.exception("event listener %r failed on %s", listener, event)
    if logger.isEnabledFor(level):
        extra: dict[str, object] = {"katana_event": event, "task_id": task.id}
        extra["task_name"] = task.name
        if details:
            extra.update(details)
        logger.log(level, message, *args, exc_info=exc_info, extra=extra)

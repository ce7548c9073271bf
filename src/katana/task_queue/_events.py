"""Lifecycle log lines with stable event names, cheap when their level is disabled.

A worker's routine steps for every task (``task_started``, ``task_completed``) are DEBUG: at
INFO, writing them cost more worker CPU than claiming and running a small task. ``task_created``
(the producer's side), cancellations and retries are INFO, hand-backs WARNING, failures ERROR.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from .models import Task

__all__ = ["add_event_listener", "log_task_event", "logger", "remove_event_listener"]

logger = logging.getLogger("katana.task_queue")

#: Called with (event, task) for every lifecycle event, whatever the log level: metrics.
#: Bound methods are held weakly, so an app's metrics go away with the app.
_listeners: list[Callable[[], Callable[[str, Task], None] | None]] = []


def _reference(listener: Callable[[str, Task], None]) -> Callable[[], Any]:
    if inspect.ismethod(listener):
        return weakref.WeakMethod(listener)
    return lambda: listener


def add_event_listener(listener: Callable[[str, Task], None]) -> None:
    """Call ``listener(event, task)`` on every lifecycle event in this process."""
    _listeners[:] = [reference for reference in _listeners if reference() is not None]
    if all(reference() != listener for reference in _listeners):
        _listeners.append(_reference(listener))


def remove_event_listener(listener: Callable[[str, Task], None]) -> None:
    _listeners[:] = [ref for ref in _listeners if ref() not in (listener, None)]


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
    for reference in _listeners:
        listener = reference()
        if listener is None:
            continue  # collected; the next add_event_listener prunes it
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

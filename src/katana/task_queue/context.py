"""What an executor can ask about the attempt it runs, and how it reports progress."""

from __future__ import annotations

import math
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

from ._cancelling import cancel_safe
from .errors import KatanaError

if TYPE_CHECKING:
    from .broker.base import AbstractBroker
    from .models import Task

__all__ = [
    "MAX_PROGRESS_MESSAGE",
    "current_task",
    "report_progress",
    "reset_running",
    "running",
    "running_task",
]

#: Progress notes are short status lines, not logs.
MAX_PROGRESS_MESSAGE = 200

_running: ContextVar[tuple[AbstractBroker, Task] | None] = ContextVar(
    "katana_running_task", default=None
)


def running(broker: AbstractBroker, task: Task) -> Token[tuple[AbstractBroker, Task] | None]:
    """Mark ``task`` as the one the current context runs (the worker does, around executors)."""
    return _running.set((broker, task))


def reset_running(token: Token[tuple[AbstractBroker, Task] | None]) -> None:
    _running.reset(token)


def current_task() -> Task:
    """The task the calling executor runs.

    Its ``attempts`` is this attempt's number (1 for the first run, and again after a redrive)
    and its ``id`` stays the same across attempts and redeliveries: a key for idempotent side
    effects.
    """
    entry = _running.get()
    if entry is None:
        raise KatanaError("current_task() is only available inside a running executor")
    return entry[1]


def running_task() -> Task | None:
    """The task the current context runs, or ``None`` outside an executor (never raises)."""
    entry = _running.get()
    return None if entry is None else entry[1]


async def report_progress(fraction: float, message: str = "") -> bool:
    """Record the calling executor's progress (0..1 and a short note); ``get_task`` shows it.

    Returns ``False`` when the worker no longer holds the task (its claim was lost).
    """
    entry = _running.get()
    if entry is None:
        raise KatanaError("report_progress() is only available inside a running executor")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"fraction must be a number, got {fraction!r}")
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction!r}")
    if len(message) > MAX_PROGRESS_MESSAGE:
        raise ValueError(f"message must be a str of at most {MAX_PROGRESS_MESSAGE} characters")
    broker, task = entry
    # A cancel or timeout of the executor lands here, at Katana's await, never inside the
    # driver, which may swallow it (see _cancelling). It also makes every report a point
    # where the event loop runs others, so a tight reporting loop cannot starve it.
    return await cancel_safe(
        broker.set_progress(task.id, float(fraction), message, claim_token=task.claim_token)
    )

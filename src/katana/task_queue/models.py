"""The task record and its lifecycle states."""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

__all__ = [
    "TERMINAL_STATUSES",
    "Task",
    "TaskExecutor",
    "TaskStatus",
    "attempt_error",
    "new_pending_task",
    "new_task_id",
    "utcnow",
]


class TaskStatus(StrEnum):
    """Where a task is in its life. Values are stored as they are, so never rename one."""

    #: Waiting in the queue, due now or at ``scheduled_at``.
    PENDING = "PENDING"
    #: Claimed by a worker that is running it.
    PROCESSING = "PROCESSING"
    #: The executor returned; ``result`` holds what it returned.
    COMPLETED = "COMPLETED"
    #: The executor raised; ``error`` and ``traceback`` say why.
    FAILED = "FAILED"
    #: Cancelled before it could finish; it will not run (again).
    CANCELLED = "CANCELLED"
    #: Given up on by the broker, e.g. its workers kept dying while running it.
    DEAD = "DEAD"


#: States a task never leaves on its own.
TERMINAL_STATUSES: frozenset[TaskStatus] = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.DEAD}
)


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def new_task_id() -> str:
    """A random 128-bit id as 32 hex digits (``uuid4()`` costs six times as much)."""
    return os.urandom(16).hex()


@dataclass(slots=True, kw_only=True)
class Task:
    """One unit of work: which executor runs it, with what payload, when and in what order."""

    name: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    id: str = field(default_factory=new_task_id)
    created_at: datetime = field(default_factory=utcnow)
    #: Earliest time the task may start; ``created_at`` unless it was delayed.
    scheduled_at: datetime = field(default_factory=utcnow)
    status: TaskStatus = TaskStatus.PENDING
    #: How many times a worker has started the task since it was created or last redriven
    #: (a redrive gives it its full retry budget again).
    attempts: int = 0
    result: Any = None
    #: ``"ExceptionType: message"`` of the last failure.
    error: str | None = None
    traceback: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: Identifies the current claim of a PROCESSING task; brokers with leases use it to fence
    #: out a worker that lost its claim. ``None`` while nobody holds the task.
    claim_token: str | None = None
    #: How many failed attempts are retried (so at most ``1 + max_retries`` attempts).
    max_retries: int = 0
    #: An attempt running longer is cancelled and counts as failed; ``None``: no limit.
    timeout_seconds: float | None = None
    #: One entry per failed attempt, oldest first: ``attempt``, ``error``, ``traceback``, ``at``.
    #: Kept across redrives; ``attempt`` counts every start over the task's life.
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: While this task is PENDING or PROCESSING, no other task with this key is created in its
    #: queue (keys are per queue, not per task name).
    unique_key: str | None = None
    #: What the executor last reported with ``report_progress`` in the current attempt: a
    #: fraction 0..1 and a note (a new attempt starts with none).
    progress: float | None = None
    progress_message: str | None = None
    #: The trace the task was created in, as W3C ``traceparent``/``tracestate`` headers, when
    #: tracing was on at enqueue (see ``katana.task_queue.tracing``); its run joins that trace.
    trace_context: dict[str, str] | None = None

    def copy(self) -> Task:
        """A copy that shares no mutable state with this task (payload and result included)."""
        # Set slot by slot rather than through __init__: brokers copy on every store and read,
        # and this is several times faster than the generated __init__ or dataclasses.replace.
        clone = _new_object(Task)
        clone.name = self.name
        payload = self.payload
        clone.payload = orjson.loads(orjson.dumps(payload)) if payload else {}
        clone.priority = self.priority
        clone.id = self.id
        clone.created_at = self.created_at
        clone.scheduled_at = self.scheduled_at
        clone.status = self.status
        clone.attempts = self.attempts
        result = self.result
        clone.result = (
            result
            if result is None or result.__class__ in _IMMUTABLE_SCALARS
            else orjson.loads(orjson.dumps(result))
        )
        clone.error = self.error
        clone.traceback = self.traceback
        clone.started_at = self.started_at
        clone.finished_at = self.finished_at
        clone.claim_token = self.claim_token
        clone.max_retries = self.max_retries
        clone.timeout_seconds = self.timeout_seconds
        errors = self.errors
        clone.errors = orjson.loads(orjson.dumps(errors)) if errors else []
        clone.unique_key = self.unique_key
        clone.progress = self.progress
        clone.progress_message = self.progress_message
        trace_context = self.trace_context
        clone.trace_context = None if trace_context is None else dict(trace_context)
        return clone


def new_pending_task(
    name: str,
    payload: dict[str, Any],
    priority: int,
    created_at: datetime,
    scheduled_at: datetime,
    max_retries: int = 0,
    timeout_seconds: float | None = None,
) -> Task:
    """A fresh PENDING task with a new id, built without the dataclass ``__init__``.

    ``add_task`` calls this for every task; skipping the generated ``__init__`` (keyword
    parsing, default factories) makes it several times cheaper. The arguments are trusted.
    """
    task = _new_object(Task)
    task.name = name
    task.payload = payload
    task.priority = priority
    task.id = new_task_id()
    task.created_at = created_at
    task.scheduled_at = scheduled_at
    task.status = TaskStatus.PENDING
    task.attempts = 0
    task.result = task.error = task.traceback = None
    task.started_at = task.finished_at = None
    task.claim_token = None
    task.max_retries = max_retries
    task.timeout_seconds = timeout_seconds
    task.errors = []
    task.unique_key = None
    task.progress = task.progress_message = None
    task.trace_context = None
    return task


def attempt_error(attempt: int, error: str, traceback: str | None, at: datetime) -> dict[str, Any]:
    """The entry ``Task.errors`` keeps for a failed attempt."""
    return {"attempt": attempt, "error": error, "traceback": traceback, "at": at.isoformat()}


_new_object = object.__new__
_IMMUTABLE_SCALARS = (str, int, float, bool)


#: The signature of a function that carries out a task, as in the seed.
TaskExecutor = Callable[[Task], Coroutine[Any, Any, Any]]

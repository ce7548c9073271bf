"""Rows of ``katana_tasks`` to ``Task`` and back; instants as integer microseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ...models import Task, TaskStatus

__all__ = [
    "TASK_COLUMNS",
    "MalformedRowError",
    "decode_task",
    "encode_task",
    "from_us",
    "to_us",
]


class MalformedRowError(ValueError):
    """A stored row does not hold a task (written by hand, or by a broken program)."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

#: The columns that make a ``Task``, in the order ``encode_task`` and ``decode_task`` use.
TASK_COLUMNS = (
    "id, name, payload, priority, created_at, scheduled_at, status, attempts, result, error, "
    "traceback, started_at, finished_at, claim_token, max_retries, timeout_seconds, errors, "
    "unique_key, progress, progress_message, trace_context"
)


def to_us(at: datetime) -> int:
    """``at`` as whole microseconds since the epoch: exact, so a datetime round-trips."""
    return (at - _EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def encode_task(task: Task) -> tuple[Any, ...]:
    """The values of ``TASK_COLUMNS`` for ``task``, stored as it would be enqueued: PENDING.

    Raises ``TypeError`` (orjson's) for a payload or result that is not JSON.
    """
    return (
        task.id,
        task.name,
        _json(task.payload),
        task.priority,
        to_us(task.created_at),
        to_us(task.scheduled_at),
        TaskStatus.PENDING.value,
        task.attempts,
        None if task.result is None else _json(task.result),
        task.error,
        task.traceback,
        None if task.started_at is None else to_us(task.started_at),
        None if task.finished_at is None else to_us(task.finished_at),
        None,  # claim_token: nobody holds a task that was just stored
        task.max_retries,
        task.timeout_seconds,
        _json(task.errors),
        task.unique_key,
        task.progress,
        task.progress_message,
        None if task.trace_context is None else _json(task.trace_context),
    )


def decode_task(row: tuple[Any, ...]) -> Task:
    """The ``Task`` a row of ``TASK_COLUMNS`` holds; ``MalformedRowError`` if it holds none."""
    try:
        return _decode(row)
    except (TypeError, ValueError, OverflowError) as exc:  # orjson's errors are ValueErrors
        raise MalformedRowError(f"task row {str(row[0])[:100]!r} is malformed: {exc}") from exc


def _decode(row: tuple[Any, ...]) -> Task:
    task = Task(name=row[1])
    task.id = row[0]
    task.payload = orjson.loads(row[2])
    task.priority = row[3]
    task.created_at = from_us(row[4])
    task.scheduled_at = from_us(row[5])
    task.status = TaskStatus(row[6])
    task.attempts = row[7]
    task.result = None if row[8] is None else orjson.loads(row[8])
    task.error = row[9]
    task.traceback = row[10]
    task.started_at = None if row[11] is None else from_us(row[11])
    task.finished_at = None if row[12] is None else from_us(row[12])
    task.claim_token = row[13]
    task.max_retries = row[14]
    task.timeout_seconds = row[15]
    task.errors = orjson.loads(row[16])
    task.unique_key = row[17]
    task.progress = row[18]
    task.progress_message = row[19]
    task.trace_context = None if row[20] is None else orjson.loads(row[20])
    return task

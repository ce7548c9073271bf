"""How RedisBroker writes a task into a Redis hash and reads it back, trusting nothing it reads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from ..errors import InvalidTaskError
from ..models import Task, TaskStatus

__all__ = [
    "ENQUEUE_VALUES_PER_TASK",
    "MalformedRecordError",
    "decode_task",
    "encode_new_task",
    "epoch_ms",
]

#: How many values ``encode_new_task`` gives ``enqueue.lua`` per task.
ENQUEUE_VALUES_PER_TASK = 11

_STATUSES = {status.value.encode(): status for status in TaskStatus}


class MalformedRecordError(ValueError):
    """A task record in Redis that is not one RedisBroker wrote."""


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def encode_new_task(task: Task, *, unique: bool = False) -> list[Any]:
    """The values ``enqueue.lua`` takes for one task (its unique key only if ``unique``).

    Strings are encoded here, for this task alone: a value that is not valid UTF-8 fails
    its own caller with ``InvalidTaskError``, and never the batch it would have joined.
    """
    return [
        _utf8(task.id, "task id"),
        _utf8(task.name, "task name"),
        orjson.dumps(task.payload),
        task.priority,
        repr(task.created_at.timestamp()),
        repr(task.scheduled_at.timestamp()),
        epoch_ms(task.scheduled_at),
        task.max_retries,
        "" if task.timeout_seconds is None else repr(task.timeout_seconds),
        _utf8(task.unique_key or "", "unique_key") if unique else b"",
        "" if task.trace_context is None else orjson.dumps(task.trace_context),
    ]


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise InvalidTaskError(f"{what} must be valid Unicode (no lone surrogates)") from exc


def decode_task(fields: dict[bytes, bytes], task_id: str) -> Task:
    """Build a Task from its hash fields; raises ``MalformedRecordError`` saying what is wrong.

    Every claimed task goes through here, so the optional fields are read inline.
    """
    get = fields.get
    try:
        name = fields[b"name"].decode()
        payload = orjson.loads(fields[b"payload"])
        priority = int(fields[b"priority"])
        created_at = datetime.fromtimestamp(float(fields[b"created_at"]), UTC)
        scheduled_at = datetime.fromtimestamp(float(fields[b"scheduled_at"]), UTC)
        status = _STATUSES[fields[b"status"]]
        attempts = int(get(b"attempts", b"0"))
        raw = get(b"result")
        result = None if raw is None else orjson.loads(raw)
        raw = get(b"error")
        error = None if raw is None else raw.decode()
        raw = get(b"traceback")
        traceback = None if raw is None else raw.decode()
        raw = get(b"started_at")
        started_at = None if raw is None else datetime.fromtimestamp(float(raw), UTC)
        raw = get(b"finished_at")
        finished_at = None if raw is None else datetime.fromtimestamp(float(raw), UTC)
        raw = get(b"claim_token")
        claim_token = None if raw is None else raw.decode()
        max_retries = int(get(b"max_retries", b"0"))
        raw = get(b"timeout_seconds")
        timeout_seconds = None if raw is None else float(raw)
        errors = _attempt_errors(fields)
        raw = get(b"unique_key")
        unique_key = None if raw is None else raw.decode()
        raw = get(b"progress")
        progress = None if raw is None else float(raw)
        raw = get(b"progress_message")
        progress_message = None if raw is None else raw.decode()
        trace_context = _trace_context(get(b"trace_context"))
    except KeyError as exc:
        raise MalformedRecordError(f"missing or invalid field {exc}") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # orjson errors are ValueErrors
        raise MalformedRecordError(f"{type(exc).__name__}: {exc}") from exc
    if type(payload) is not dict:
        raise MalformedRecordError(f"payload is a JSON {type(payload).__name__}, not an object")
    task = Task(
        name=name,
        payload=payload,
        priority=priority,
        id=task_id,
        created_at=created_at,
        scheduled_at=scheduled_at,
        status=status,
        attempts=attempts,
        result=result,
        error=error,
        traceback=traceback,
        started_at=started_at,
        finished_at=finished_at,
        claim_token=claim_token,
        max_retries=max_retries,
        timeout_seconds=timeout_seconds,
        errors=errors,
        unique_key=unique_key,
        progress=progress,
        progress_message=progress_message,
        trace_context=trace_context,
    )
    return task


def _attempt_errors(fields: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """The ``err:<attempt>`` fields, oldest attempt first."""
    entries = []
    for name in [name for name in fields if name[:4] == b"err:"]:
        entry = orjson.loads(fields[name])
        if type(entry) is not dict:
            raise ValueError(f"{name.decode(errors='replace')} is not a JSON object")
        attempt = int(name[4:])
        entry["attempt"] = attempt  # the field name is the record's word for it
        entries.append((attempt, entry))
    return [entry for _, entry in sorted(entries, key=lambda pair: pair[0])]


def _trace_context(raw: bytes | None) -> dict[str, str] | None:
    """The stored trace headers: a JSON object of strings, as ``encode_new_task`` wrote it."""
    if raw is None:
        return None
    headers = orjson.loads(raw)
    if type(headers) is not dict or not all(type(v) is str for v in headers.values()):
        raise ValueError("trace_context is not a JSON object of strings")
    return headers

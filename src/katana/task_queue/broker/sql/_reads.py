"""What monitoring reads from a SQL queue, and the small writes beside it (workers, pause)."""

from __future__ import annotations

import bisect
import logging
from typing import TYPE_CHECKING, Any

from ...listing import FILTER_SCAN_LIMIT, TaskPage, WorkerInfo
from ...models import TaskStatus
from ._codec import TASK_COLUMNS, MalformedRowError, decode_task, from_us
from ._steps import Statement, Steps

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ...listing import TaskQuery
    from ...models import Task

__all__ = [
    "count_by_status",
    "finished_counts",
    "get_task",
    "is_paused",
    "list_tasks",
    "list_workers",
    "oldest_due_at",
    "record_worker",
    "remove_worker",
    "set_paused",
]

logger = logging.getLogger(__name__)


def get_task(queue: str, task_id: str) -> Steps[Task | None]:
    rows = yield Statement(
        f"SELECT {TASK_COLUMNS} FROM katana_tasks WHERE queue = ? AND id = ?", (queue, task_id)
    )
    return decode_task(rows[0]) if rows else None


def _order(status: TaskStatus | None) -> str:
    """The listing order ``TaskQuery`` describes; the first ``?`` twice is the due horizon."""
    if status is TaskStatus.PENDING:
        return (
            " ORDER BY CASE WHEN scheduled_at <= ? THEN 0 ELSE 1 END,"
            " CASE WHEN scheduled_at <= ? THEN priority ELSE 0 END, scheduled_at, seq"
        )
    if status is TaskStatus.PROCESSING:
        return " ORDER BY COALESCE(started_at, created_at), seq"
    if status is not None:
        return " ORDER BY COALESCE(finished_at, created_at) DESC, seq DESC"
    return " ORDER BY created_at DESC, seq DESC"


def list_tasks(
    queue: str, query: TaskQuery, limit: int, offset: int, now_us: int
) -> Steps[TaskPage]:
    due = now_us + 1
    where, params = " WHERE queue = ?", list[Any]([queue])
    if query.status is not None:
        where += " AND status = ?"
        params.append(query.status.value)
    if query.scheduled is not None:
        where += " AND scheduled_at > ?" if query.scheduled else " AND scheduled_at <= ?"
        params.append(due)
    if query.name is not None:
        where += " AND name = ?"
        params.append(query.name)
    order = _order(query.status)
    order_params = [due, due] if query.status is TaskStatus.PENDING else []
    select = f"SELECT {TASK_COLUMNS} FROM katana_tasks{where}{order}"
    if query.text is None:
        rows = yield Statement(f"SELECT COUNT(*) FROM katana_tasks{where}", params)
        total = int(rows[0][0])
        page = [*params, *order_params, limit, offset]
        rows = yield Statement(f"{select} LIMIT ? OFFSET ?", page)
        tasks = _decodable(rows)
        # A row that does not decode is neither listed nor counted: the total and page agree.
        return TaskPage(total=total - (len(rows) - len(tasks)), tasks=tasks)
    # Text is matched as TaskQuery.matches does (Unicode case folding), so in Python, over at
    # most FILTER_SCAN_LIMIT tasks: beyond that the total is a lower bound.
    rows = yield Statement(f"{select} LIMIT ?", [*params, *order_params, FILTER_SCAN_LIMIT])
    tasks = _decodable(rows)
    now = from_us(due)
    matches = [task for task in tasks if query.matches(task, now)]
    return TaskPage(
        total=len(matches),
        tasks=matches[offset : offset + limit],
        total_is_exact=len(rows) < FILTER_SCAN_LIMIT,
    )


def _decodable(rows: Sequence[tuple[Any, ...]]) -> list[Task]:
    """The tasks of ``rows``; a row that does not decode is logged and left out."""
    tasks = []
    for row in rows:
        try:
            tasks.append(decode_task(row))
        except MalformedRowError as exc:
            logger.warning("%s", exc)
    return tasks


def count_by_status(queue: str) -> Steps[dict[TaskStatus, int]]:
    rows = yield Statement(
        "SELECT status, COUNT(*) FROM katana_tasks WHERE queue = ? GROUP BY status", (queue,)
    )
    counts = dict.fromkeys(TaskStatus, 0)
    for status, count in rows:
        counts[TaskStatus(status)] = int(count)
    return counts


def oldest_due_at(queue: str, now_us: int) -> Steps[int | None]:
    rows = yield Statement(
        "SELECT MIN(scheduled_at) FROM katana_tasks WHERE queue = ? AND status = 'PENDING'"
        " AND scheduled_at <= ?",
        (queue, now_us + 1),
    )
    due: int | None = rows[0][0]
    return due


def finished_counts(queue: str, bounds: list[int]) -> Steps[list[int]]:
    counts = [0] * max(len(bounds) - 1, 0)
    if not counts:
        return counts
    rows = yield Statement(
        "SELECT finished_at FROM katana_tasks WHERE queue = ?"
        " AND status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'DEAD')"
        " AND finished_at >= ? AND finished_at < ?",
        (queue, bounds[0], bounds[-1]),
    )
    for (finished_at,) in rows:
        counts[bisect.bisect_right(bounds, finished_at) - 1] += 1
    return counts


def set_paused(queue: str, paused: bool) -> Steps[None]:
    yield Statement("UPDATE katana_queues SET paused = ? WHERE queue = ?", (int(paused), queue))


def is_paused(queue: str) -> Steps[bool]:
    rows = yield Statement("SELECT paused FROM katana_queues WHERE queue = ?", (queue,))
    return bool(rows and rows[0][0])


def record_worker(queue: str, info: WorkerInfo, expires_us: int) -> Steps[None]:
    yield Statement(
        "INSERT INTO katana_workers (queue, id, record, expires_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (queue, id) DO UPDATE SET record = excluded.record,"
        " expires_at = excluded.expires_at",
        (queue, info.id, info.to_json().decode(), expires_us),
    )


def remove_worker(queue: str, worker_id: str) -> Steps[None]:
    yield Statement("DELETE FROM katana_workers WHERE queue = ? AND id = ?", (queue, worker_id))


def list_workers(queue: str, now_us: int) -> Steps[list[WorkerInfo]]:
    """The records that have not expired, by id; expired ones (a process that died) go."""
    yield Statement(
        "DELETE FROM katana_workers WHERE queue = ? AND expires_at <= ?", (queue, now_us)
    )
    rows = yield Statement(
        "SELECT record FROM katana_workers WHERE queue = ? ORDER BY id", (queue,)
    )
    return [WorkerInfo.from_json(record) for (record,) in rows]

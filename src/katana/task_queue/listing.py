"""What a broker answers when asked to list tasks and workers: queries, pages, worker records."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import InvalidTaskError
from .models import Task, TaskStatus

__all__ = [
    "FILTER_SCAN_LIMIT",
    "MAX_PAGE_SIZE",
    "TaskPage",
    "TaskQuery",
    "WorkerInfo",
    "check_page",
]

#: The most tasks one page may hold.
MAX_PAGE_SIZE = 500
#: A filtered listing (``name`` or ``text``) looks at no more than this many tasks, newest
#: first, so one dashboard request cannot stall a large queue; the page then says its total
#: is only a lower bound.
FILTER_SCAN_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """Which tasks to list.

    Order of the listing: with a ``status`` of PENDING, the tasks that are due come first in the
    order they will run, then the delayed ones by due time; PROCESSING tasks by claim time,
    oldest first; a final status lists the most recently finished first; no ``status`` lists
    every task, the most recently created first.

    Args:
        status: Only tasks in this status.
        scheduled: With PENDING (implied when set): ``True`` only tasks not yet due (delayed),
            ``False`` only due ones.
        name: Only tasks with exactly this name.
        text: Only tasks whose id, name, payload (as JSON) or error contain this text,
            ignoring case. Blank text (empty or only whitespace) is no filter: it is what an
            empty search box sends, so the API, the dashboard and the CLI read it alike.
    """

    status: TaskStatus | None = None
    scheduled: bool | None = None
    name: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if self.scheduled is not None and self.status not in (None, TaskStatus.PENDING):
            raise ValueError("scheduled only applies to PENDING tasks")
        if self.scheduled is not None and self.status is None:
            object.__setattr__(self, "status", TaskStatus.PENDING)
        for what, value in (("name", self.name), ("text", self.text)):
            if value is not None and not _encodable(value):
                # A lone surrogate (JSON "\ud800", bad argv) cannot be sent to a broker.
                raise InvalidTaskError(f"{what} must be valid Unicode (no lone surrogates)")
        if self.text is not None and not self.text.strip():
            object.__setattr__(self, "text", None)

    @property
    def filtered(self) -> bool:
        """Whether each task must be read to know if it matches (name or text)."""
        return self.name is not None or self.text is not None

    def matches(self, task: Task, now: datetime) -> bool:
        """Whether ``task`` belongs in this listing (``now``: the broker's current time)."""
        if self.status is not None and task.status is not self.status:
            return False
        if self.scheduled is not None and (task.scheduled_at > now) is not self.scheduled:
            return False
        if self.name is not None and task.name != self.name:
            return False
        return self.text is None or self.text.lower() in _searchable(task)


def _searchable(task: Task) -> str:
    payload = orjson.dumps(task.payload).decode()
    return f"{task.id}\n{task.name}\n{payload}\n{task.error or ''}".lower()


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of a listing.

    ``total`` counts every match; when ``total_is_exact`` is false the listing stopped after
    ``FILTER_SCAN_LIMIT`` tasks and ``total`` is what it found up to there.
    """

    total: int
    tasks: list[Task]
    total_is_exact: bool = True


@dataclass(slots=True, kw_only=True)
class WorkerInfo:
    """A worker process as it last reported itself to the broker.

    Brokers keep a record until ``expires_at``; a process refreshes it while it runs and
    removes it when it stops, so a process that died disappears from the listing by itself.
    """

    id: str
    host: str
    pid: int
    queue: str
    concurrency: int
    task_names: list[str] = field(default_factory=list)
    current_task_ids: list[str] = field(default_factory=list)
    started_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    processed: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "host": self.host,
                "pid": self.pid,
                "queue": self.queue,
                "concurrency": self.concurrency,
                "task_names": self.task_names,
                "current_task_ids": self.current_task_ids,
                "started_at": self.started_at.timestamp(),
                "last_seen_at": self.last_seen_at.timestamp(),
                "expires_at": self.expires_at.timestamp(),
                "processed": self.processed,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerInfo:
        """Parse a record written by ``to_json``; raises ``ValueError`` on anything else."""
        try:
            data: Any = orjson.loads(raw)
            return cls(
                id=str(data["id"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                queue=str(data["queue"]),
                concurrency=int(data["concurrency"]),
                task_names=[str(name) for name in data["task_names"]],
                current_task_ids=[str(task_id) for task_id in data["current_task_ids"]],
                started_at=_from_timestamp(data["started_at"]),
                last_seen_at=_from_timestamp(data["last_seen_at"]),
                expires_at=_from_timestamp(data["expires_at"]),
                processed=int(data.get("processed", 0)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a worker record: {exc}") from exc


def _from_timestamp(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_page(limit: int, offset: int) -> None:
    """Raise ``ValueError`` unless ``0 < limit <= MAX_PAGE_SIZE`` and ``offset >= 0``."""
    if type(limit) is not int or not 0 < limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit!r}")
    if type(offset) is not int or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")

"""The JSON shapes of the HTTP API (pydantic models, so they appear in the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime  # pydantic reads field annotations at runtime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ..listing import MAX_PAGE_SIZE, TaskPage, WorkerInfo
from ..management import attempts_summary
from ..models import Task, TaskStatus

if TYPE_CHECKING:
    from ..management import ActionResult, QueueOverview

__all__ = [
    "ActionOut",
    "BulkActionIn",
    "CountOut",
    "EnqueueIn",
    "FilterIn",
    "OverviewOut",
    "PageOut",
    "PausedOut",
    "TaskOut",
    "WorkerOut",
]


class TaskOut(BaseModel):
    """A task as the broker has it now; times are ISO 8601 in UTC."""

    id: str
    name: str
    status: TaskStatus
    priority: int
    payload: dict[str, Any]
    attempts: int
    max_retries: int
    attempts_summary: str = Field(
        description="attempts against what max_retries allows, and the runs after a lost worker"
    )
    timeout_seconds: float | None
    unique_key: str | None
    result: Any
    error: str | None
    traceback: str | None
    errors: list[dict[str, Any]] = Field(description="Every failed attempt, oldest first.")
    progress: float | None
    progress_message: str | None
    created_at: datetime
    scheduled_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, task: Task) -> TaskOut:
        return cls(
            id=task.id,
            name=task.name,
            status=task.status,
            priority=task.priority,
            payload=task.payload,
            attempts=task.attempts,
            max_retries=task.max_retries,
            attempts_summary=attempts_summary(task),
            timeout_seconds=task.timeout_seconds,
            unique_key=task.unique_key,
            result=task.result,
            error=task.error,
            traceback=task.traceback,
            errors=[dict(entry) for entry in task.errors],
            progress=task.progress,
            progress_message=task.progress_message,
            created_at=task.created_at,
            scheduled_at=task.scheduled_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
        )


class PageOut(BaseModel):
    total: int = Field(description="How many tasks match (a lower bound if not total_exact).")
    total_exact: bool
    limit: int
    offset: int
    tasks: list[TaskOut]

    @classmethod
    def of(cls, page: TaskPage, limit: int, offset: int) -> PageOut:
        return cls(
            total=page.total,
            total_exact=page.total_is_exact,
            limit=limit,
            offset=offset,
            tasks=[TaskOut.of(task) for task in page.tasks],
        )


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    queue: str
    concurrency: int
    task_names: list[str]
    current_task_ids: list[str]
    processed: int
    started_at: datetime
    last_seen_at: datetime

    @classmethod
    def of(cls, info: WorkerInfo) -> WorkerOut:
        return cls(
            id=info.id,
            host=info.host,
            pid=info.pid,
            queue=info.queue,
            concurrency=info.concurrency,
            task_names=info.task_names,
            current_task_ids=info.current_task_ids,
            processed=info.processed,
            started_at=info.started_at,
            last_seen_at=info.last_seen_at,
        )


class OverviewOut(BaseModel):
    queue: str
    counts: dict[TaskStatus, int]
    oldest_pending_age_seconds: float
    finished_per_minute: list[int] = Field(description="Oldest minute first; last: this minute.")
    throughput_per_second: float
    paused: bool
    workers: list[WorkerOut]
    at: datetime

    @classmethod
    def of(cls, overview: QueueOverview) -> OverviewOut:
        return cls(
            queue=overview.queue,
            counts=overview.counts,
            oldest_pending_age_seconds=overview.oldest_pending_age_seconds,
            finished_per_minute=overview.finished_per_minute,
            throughput_per_second=overview.throughput_per_second,
            paused=overview.paused,
            workers=[WorkerOut.of(info) for info in overview.workers],
            at=overview.at,
        )


class EnqueueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] | None = None
    priority: StrictInt = 0
    delay_seconds: float = Field(default=0.0, ge=0, strict=True)
    max_retries: StrictInt | None = None
    task_id: str | None = Field(
        default=None,
        max_length=200,  # checked in full by add_task; bounded here so no echo is long
        description="Idempotency: a task with this id is stored at most once, and is returned "
        "unchanged if it exists.",
    )


class BulkActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["retry", "cancel", "delete"]
    ids: list[str] = Field(min_length=1, max_length=MAX_PAGE_SIZE)


class FilterIn(BaseModel):
    """Which finished tasks a bulk redrive or purge acts on (default: every dead letter)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["FAILED", "DEAD", "CANCELLED", "COMPLETED"] | None = None
    name: str | None = None
    text: str | None = None


class ActionOut(BaseModel):
    done: list[str]
    skipped: dict[str, str] = Field(description="Task id -> why it was not acted on.")

    @classmethod
    def of(cls, result: ActionResult) -> ActionOut:
        return cls(done=result.done, skipped=result.skipped)


class CountOut(BaseModel):
    count: int


class PausedOut(BaseModel):
    paused: bool

"""The JSON API: look at the queue and act on it through ``QueueManager``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, status

from ..listing import MAX_PAGE_SIZE, TaskQuery
from ..models import TaskStatus
from ._deps import Manager, require_write
from ._errors import SafeValidationRoute, http_errors
from ._schemas import (
    ActionOut,
    BulkActionIn,
    CountOut,
    EnqueueIn,
    FilterIn,
    OverviewOut,
    PageOut,
    PausedOut,
    TaskOut,
    WorkerOut,
)

#: The statuses a dead letter has (``DEAD_LETTER_STATUSES``), as a filter accepts them.
DeadLetterStatus = Literal["FAILED", "DEAD"]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size.")]
Offset = Annotated[int, Query(ge=0, description="Tasks to skip.")]


#: The JSON API; ``katana_router`` mounts it behind the dependencies that bind its settings.
router = APIRouter(prefix="/api", tags=["katana"], route_class=SafeValidationRoute)
write = [Depends(require_write)]


@router.get("/overview", response_model=OverviewOut, summary="Counts, age, rate, workers")
async def overview(
    manager: Manager, minutes: Annotated[int, Query(ge=1, le=1440)] = 15
) -> OverviewOut:
    with http_errors():
        return OverviewOut.of(await manager.overview(minutes=minutes))


@router.get("/tasks", response_model=PageOut, summary="List tasks, filtered and paged")
async def list_tasks(  # one argument per filter
    manager: Manager,
    task_status: Annotated[TaskStatus | None, Query(alias="status")] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    text: Annotated[str | None, Query(max_length=200)] = None,
    scheduled: bool | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> PageOut:
    with http_errors():
        query = TaskQuery(status=task_status, scheduled=scheduled, name=name, text=text)
        page = await manager.tasks(query, limit=limit, offset=offset)
    return PageOut.of(page, limit, offset)


@router.post(
    "/tasks",
    response_model=TaskOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=write,
    summary="Enqueue a task",
)
async def enqueue(body: EnqueueIn, manager: Manager) -> TaskOut:
    with http_errors():
        task = await manager.enqueue(
            body.name,
            body.payload,
            priority=body.priority,
            delay_seconds=body.delay_seconds,
            max_retries=body.max_retries,
            task_id=body.task_id,
        )
    return TaskOut.of(task)


@router.get("/tasks/{task_id}", response_model=TaskOut, summary="One task in full")
async def task_detail(task_id: str, manager: Manager) -> TaskOut:
    with http_errors():
        return TaskOut.of(await manager.task(task_id))


@router.post("/tasks/{task_id}/retry", response_model=TaskOut, dependencies=write)
async def retry(task_id: str, manager: Manager) -> TaskOut:
    """Queue a finished task again, due now (409 for a task that has not finished)."""
    with http_errors():
        return TaskOut.of(await manager.retry(task_id))


@router.post("/tasks/{task_id}/cancel", response_model=TaskOut, dependencies=write)
async def cancel(task_id: str, manager: Manager) -> TaskOut:
    """Cancel a pending task, or stop a running one (409 once it finished)."""
    with http_errors():
        return TaskOut.of(await manager.cancel(task_id))


@router.delete("/tasks/{task_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=write)
async def delete(task_id: str, manager: Manager) -> None:
    """Delete a finished task (409 for one that has not finished)."""
    with http_errors():
        await manager.delete(task_id)


@router.post("/tasks/bulk", response_model=ActionOut, dependencies=write)
async def bulk(body: BulkActionIn, manager: Manager) -> ActionOut:
    """Retry, cancel or delete the listed tasks; says which were skipped and why."""
    action = {
        "retry": manager.retry_many,
        "cancel": manager.cancel_many,
        "delete": manager.delete_many,
    }[body.action]
    with http_errors():
        return ActionOut.of(await action(body.ids))


@router.get("/dead-letters", response_model=PageOut, summary="FAILED and DEAD tasks")
async def dead_letters(  # one argument per filter
    manager: Manager,
    task_status: Annotated[DeadLetterStatus | None, Query(alias="status")] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    text: Annotated[str | None, Query(max_length=200)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> PageOut:
    """The dead letters the filter selects: what redrive and purge with it act on."""
    with http_errors():
        status_filter = None if task_status is None else TaskStatus(task_status)
        query = TaskQuery(status=status_filter, name=name, text=text)
        page = await manager.dead_letters(query, limit=limit, offset=offset)
    return PageOut.of(page, limit, offset)


@router.post("/dead-letters/redrive", response_model=CountOut, dependencies=write)
async def redrive(body: FilterIn, manager: Manager) -> CountOut:
    """Queue again every finished task the filter selects (default: all dead letters)."""
    with http_errors():
        return CountOut(count=await manager.retry_matching(_query(body)))


@router.post("/dead-letters/purge", response_model=CountOut, dependencies=write)
async def purge(body: FilterIn, manager: Manager) -> CountOut:
    """Delete every finished task the filter selects (default: all dead letters)."""
    with http_errors():
        return CountOut(count=await manager.delete_matching(_query(body)))


@router.get("/scheduled", response_model=PageOut, summary="Tasks not yet due")
async def scheduled(manager: Manager, limit: Limit = 50, offset: Offset = 0) -> PageOut:
    with http_errors():
        page = await manager.scheduled(limit=limit, offset=offset)
    return PageOut.of(page, limit, offset)


@router.get("/workers", response_model=list[WorkerOut], summary="Live worker processes")
async def workers(manager: Manager) -> list[WorkerOut]:
    with http_errors():
        return [WorkerOut.of(info) for info in await manager.workers()]


@router.post("/queue/pause", response_model=PausedOut, dependencies=write)
async def pause(manager: Manager) -> PausedOut:
    """Workers in every process stop claiming; running tasks finish."""
    with http_errors():
        await manager.pause()
    return PausedOut(paused=True)


@router.post("/queue/resume", response_model=PausedOut, dependencies=write)
async def resume(manager: Manager) -> PausedOut:
    with http_errors():
        await manager.resume()
    return PausedOut(paused=False)


def _query(body: FilterIn) -> TaskQuery:
    status_ = None if body.status is None else TaskStatus(body.status)
    return TaskQuery(status=status_, name=body.name, text=body.text)

"""QueueManager: the one place the HTTP API, the dashboard and the admin CLI look and act through.

Every read and action here works on any broker, through the ``AbstractBroker`` interface, so
the same code serves the embedded in-memory queue and a Redis queue shared by many hosts.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import tracing
from ._events import log_task_event
from ._validation import (
    MAX_TASK_NAME_LENGTH,
    check_max_retries,
    check_task_id,
    check_task_name,
    new_checked_task,
)
from .errors import TaskNotFoundError, TaskStateError
from .listing import MAX_PAGE_SIZE, TaskPage, TaskQuery, WorkerInfo
from .models import TERMINAL_STATUSES, Task, TaskStatus, utcnow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from .broker.base import AbstractBroker
    from .service import TaskQueueService

__all__ = [
    "DEAD_LETTER_STATUSES",
    "MAX_TASK_NAME_LENGTH",
    "RETRYABLE_STATUSES",
    "ActionResult",
    "QueueManager",
    "QueueOverview",
]

#: Statuses a task can be retried from: it ran (or was stopped) and is finished.
RETRYABLE_STATUSES = TERMINAL_STATUSES
#: Dead letters: tasks that failed for good.
DEAD_LETTER_STATUSES = (TaskStatus.FAILED, TaskStatus.DEAD)


@dataclass(frozen=True, slots=True)
class QueueOverview:
    """A queue at one instant."""

    queue: str
    counts: dict[TaskStatus, int]
    #: Seconds the longest-waiting due task has waited since it became due (0: none waits).
    oldest_pending_age_seconds: float
    #: Tasks finished per minute, oldest minute first; the last entry is the current minute
    #: so far.
    finished_per_minute: list[int]
    paused: bool
    workers: list[WorkerInfo]
    at: datetime

    @property
    def throughput_per_second(self) -> float:
        """Finished tasks per second over the last full minutes (0 with no history)."""
        full_minutes = self.finished_per_minute[:-1]
        return sum(full_minutes) / (60 * len(full_minutes)) if full_minutes else 0.0


@dataclass(slots=True)
class ActionResult:
    """What a bulk action did: ids it acted on, and why it skipped the others."""

    done: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class QueueManager:
    """Looks at and steers one queue.

    Args:
        broker: The queue's broker.
        service: The application's service, when there is one: ``enqueue`` then refuses task
            names it has no executor for, and applies their registered retries and timeouts.
        clock: The current POSIX time; pass the broker's clock when it is a fake one.
    """

    def __init__(
        self,
        broker: AbstractBroker,
        service: TaskQueueService | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.broker = broker
        self.service = service
        self._clock = clock

    @property
    def queue(self) -> str:
        return self.broker.queue

    def _now(self) -> datetime:
        return utcnow() if self._clock is None else datetime.fromtimestamp(self._clock(), UTC)

    # -- looking -------------------------------------------------------------------------

    async def overview(self, *, minutes: int = 15) -> QueueOverview:
        """Counts, the oldest waiting task's age, finishes per minute, pause state, workers."""
        if type(minutes) is not int or not 1 <= minutes <= 24 * 60:
            raise ValueError(f"minutes must be an integer from 1 to 1440, got {minutes!r}")
        now = self._now()
        this_minute = now.replace(second=0, microsecond=0)
        edges = [this_minute - timedelta(minutes=n) for n in range(minutes - 1, -1, -1)]
        edges.append(now + timedelta(milliseconds=1))  # brokers may keep milliseconds
        broker = self.broker
        # Independent reads: a networked broker answers them in one round of round trips.
        counts, oldest, finished, paused, workers = await asyncio.gather(
            broker.count_by_status(),
            broker.oldest_due_at(),
            broker.finished_counts(edges),
            broker.is_paused(),
            broker.list_workers(),
        )
        return QueueOverview(
            queue=self.queue,
            counts=counts,
            oldest_pending_age_seconds=0.0
            if oldest is None
            else max(0.0, (now - oldest).total_seconds()),
            finished_per_minute=finished,
            paused=paused,
            workers=workers,
            at=now,
        )

    async def tasks(
        self, query: TaskQuery | None = None, *, limit: int = 50, offset: int = 0
    ) -> TaskPage:
        """One page of tasks; see ``TaskQuery`` for filters and order."""
        return await self.broker.list_tasks(query or TaskQuery(), limit=limit, offset=offset)

    async def task(self, task_id: str) -> Task:
        """The task with this id; raises ``TaskNotFoundError``."""
        task = await self.broker.get_task(task_id)
        if task is None:
            raise TaskNotFoundError(f"no task has id {task_id!r:.100}")  # ids come from users
        return task

    async def workers(self) -> list[WorkerInfo]:
        return await self.broker.list_workers()

    async def dead_letters(
        self, query: TaskQuery | None = None, *, limit: int = 50, offset: int = 0
    ) -> TaskPage:
        """FAILED and DEAD tasks ``query`` selects, most recently finished first.

        ``query`` may narrow the status to FAILED or DEAD (others raise ``TaskStateError``) and
        filter by name and text, exactly as ``retry_matching`` and ``delete_matching`` do with
        it: the page's ``total`` is how many tasks those would act on.
        """
        query = query or TaskQuery()
        queries = [
            TaskQuery(status=status, name=query.name, text=query.text)
            for status in _dead_letter_statuses(query)
        ]
        if len(queries) == 1:
            return await self.broker.list_tasks(queries[0], limit=limit, offset=offset)
        # Both statuses, each listed newest first: the page is among the first offset + limit
        # of each, merged.
        pages = [await self._first(each, offset + limit) for each in queries]
        letters = sorted(
            (task for page in pages for task in page.tasks),
            key=lambda task: task.finished_at or task.created_at,
            reverse=True,
        )
        return TaskPage(
            total=sum(page.total for page in pages),
            tasks=letters[offset : offset + limit],
            total_is_exact=all(page.total_is_exact for page in pages),
        )

    async def _first(self, query: TaskQuery, count: int) -> TaskPage:
        """The first ``count`` tasks ``query`` lists, read a page at a time."""
        tasks: list[Task] = []
        while True:
            page = await self.broker.list_tasks(
                query, limit=min(MAX_PAGE_SIZE, count - len(tasks)), offset=len(tasks)
            )
            tasks.extend(page.tasks)
            if len(tasks) >= count or len(page.tasks) < MAX_PAGE_SIZE:
                return TaskPage(total=page.total, tasks=tasks, total_is_exact=page.total_is_exact)

    async def scheduled(self, *, limit: int = 50, offset: int = 0) -> TaskPage:
        """PENDING tasks not yet due, the soonest first."""
        return await self.broker.list_tasks(TaskQuery(scheduled=True), limit=limit, offset=offset)

    # -- acting on one task --------------------------------------------------------------

    async def enqueue(
        self,
        name: str,
        payload: dict[str, Any] | None = None,
        *,
        priority: int = 0,
        delay_seconds: float = 0,
        max_retries: int | None = None,
        task_id: str | None = None,
    ) -> Task:
        """Add a task; checked like ``add_task`` (and against the service's names if given).

        With ``task_id``, as with ``add_task``, a stored task with that id is returned instead.
        """
        if self.service is not None:
            return await self.service.add_task(
                name, payload, priority, delay_seconds, max_retries=max_retries, task_id=task_id
            )
        check_task_name(name)
        retries = 0 if max_retries is None else check_max_retries(max_retries)
        task = new_checked_task(name, payload, priority, delay_seconds, self._now(), retries, None)
        if task_id is not None:
            task.id = check_task_id(task_id)
        stored = self.broker.enqueue(task)
        if tracing.enabled:
            stored = tracing.traced_send(self.queue, (task,), stored)
        existing = await stored
        if existing is not None:
            return existing
        log_task_event(logging.INFO, "task_created", task, "task %s (%s) created", task.id, name)
        return task

    async def retry(self, task_id: str) -> Task:
        """Queue a finished task again, due now, with its full retry budget (``errors`` kept).

        Raises ``TaskStateError`` for an unfinished task, or when another unfinished task
        holds its ``unique_key`` (then it stays as it is).
        """
        task = await self.task(task_id)
        if task.status not in RETRYABLE_STATUSES:
            raise TaskStateError(
                f"task {task_id} is {task.status.value}; only finished tasks retry"
            )
        await self.broker.update_task_status(task_id, TaskStatus.PENDING)
        log_task_event(logging.INFO, "task_redriven", task, "task %s queued again", task_id)
        return await self.task(task_id)

    async def cancel(self, task_id: str) -> Task:
        """Cancel a PENDING task, or ask its worker to stop a PROCESSING one.

        Raises ``TaskStateError`` if it already finished. A running task's status changes
        once its worker has stopped it.
        """
        task = await self.task(task_id)
        if task.status in TERMINAL_STATUSES:
            raise TaskStateError(f"task {task_id} already finished ({task.status.value})")
        await self.broker.cancel(task_id)
        return await self.task(task_id)

    async def delete(self, task_id: str) -> None:
        """Delete a finished task; raises ``TaskStateError`` for one that is not finished."""
        task = await self.task(task_id)
        if task.status not in TERMINAL_STATUSES or not await self.broker.delete_task(task_id):
            raise TaskStateError(
                f"task {task_id} is {task.status.value}; cancel it before deleting it"
            )

    # -- acting on many ------------------------------------------------------------------

    async def retry_many(self, task_ids: Iterable[str]) -> ActionResult:
        return await self._each(task_ids, self.retry)

    async def cancel_many(self, task_ids: Iterable[str]) -> ActionResult:
        return await self._each(task_ids, self.cancel)

    async def delete_many(self, task_ids: Iterable[str]) -> ActionResult:
        return await self._each(task_ids, self.delete)

    async def retry_matching(self, query: TaskQuery) -> int:
        """Retry every finished task ``query`` selects (e.g. all FAILED ``send_email``)."""
        return await self._each_matching(query, self.retry)

    async def delete_matching(self, query: TaskQuery, *, at_most: int | None = None) -> int:
        """Delete every finished task ``query`` selects; returns how many.

        ``at_most``: how many the caller showed as matching. If more match by now (tasks failed
        since), nothing is deleted and ``TaskStateError`` says so, so a purge never removes
        more than was previewed.
        """
        return await self._each_matching(query, self.delete, at_most=at_most)

    async def _each(
        self, task_ids: Iterable[str], action: Callable[[str], Awaitable[object]]
    ) -> ActionResult:
        result = ActionResult()
        for task_id in dict.fromkeys(task_ids):  # once each, in the order given
            try:
                await action(task_id)
            except (TaskNotFoundError, TaskStateError) as exc:
                result.skipped[task_id] = str(exc)
            else:
                result.done.append(task_id)
        return result

    async def _each_matching(
        self,
        query: TaskQuery,
        action: Callable[[str], Awaitable[object]],
        *,
        at_most: int | None = None,
    ) -> int:
        statuses = [query.status] if query.status is not None else list(DEAD_LETTER_STATUSES)
        if any(status not in TERMINAL_STATUSES for status in statuses):
            raise TaskStateError("bulk retry and delete act on finished tasks only")
        # The matching ids are read first, then acted on: a retried task may fail again and
        # come back into the listing, and must not be retried twice by one request.
        task_ids: list[str] = []
        for status in statuses:
            each = TaskQuery(status=status, name=query.name, text=query.text)
            read = 0  # of this status: the offset is per listing
            while True:
                page = await self.broker.list_tasks(each, limit=MAX_PAGE_SIZE, offset=read)
                task_ids.extend(task.id for task in page.tasks)
                read += len(page.tasks)
                if len(page.tasks) < MAX_PAGE_SIZE:
                    break
        if at_most is not None and len(task_ids) > at_most:
            raise TaskStateError(
                f"{len(task_ids)} tasks match the filter now, not {at_most}: nothing was done; "
                "look at the list again"
            )
        return len((await self._each(task_ids, action)).done)

    # -- the queue -----------------------------------------------------------------------

    async def pause(self) -> None:
        """Workers of every process stop claiming; running tasks finish."""
        await self.broker.set_paused(True)

    async def resume(self) -> None:
        await self.broker.set_paused(False)

    async def is_paused(self) -> bool:
        return await self.broker.is_paused()


def _dead_letter_statuses(query: TaskQuery) -> list[TaskStatus]:
    """The dead-letter statuses ``query`` selects; ``TaskStateError`` for any other filter."""
    if query.scheduled is not None:
        raise TaskStateError("dead letters are finished: they cannot be filtered by due time")
    if query.status is None:
        return list(DEAD_LETTER_STATUSES)
    if query.status not in DEAD_LETTER_STATUSES:
        raise TaskStateError(
            f"dead letters are FAILED or DEAD, not {query.status.value}: "
            "list other finished tasks with tasks()"
        )
    return [query.status]

"""The interface every broker implements, and the ordering contract they all share.

Ordering contract (identical for every broker): among tasks that are due, the lowest priority
number runs first; equal priorities run in due-time order, then first-in first-out. A task
that is not yet due never blocks a due one, whatever its priority, and never starts early.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Self

from .._cancelling import cancel_safe
from ..errors import TaskStateError
from ..listing import TaskQuery
from ..models import TERMINAL_STATUSES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from datetime import datetime
    from types import TracebackType

    from ..listing import TaskPage, WorkerInfo
    from ..models import Task, TaskStatus

__all__ = ["DEFAULT_RESULT_TTL_SECONDS", "AbstractBroker", "failed_outcome", "redrive_refused"]

#: How long finished tasks (results, failures, dead letters) are kept by default: a week.
DEFAULT_RESULT_TTL_SECONDS = 7 * 24 * 3600.0


def redrive_refused(task_id: str, holder_id: str) -> TaskStateError:
    """Why a finished task cannot be redriven: unfinished task ``holder_id`` holds its unique
    key (``update_task_status`` raises it, and changes nothing, in every broker)."""
    return TaskStateError(
        f"task {task_id} cannot run again: unfinished task {holder_id} holds its unique key"
    )


class AbstractBroker(ABC):
    """Stores tasks and hands each due task to exactly one worker.

    Every method is one atomic storage step. Brokers store and return *copies*: mutating a task
    after ``enqueue`` or one returned by ``dequeue``/``get_task`` never changes what is stored.

    State-changing methods that act on a claimed task take its ``claim_token`` (from the task
    ``dequeue`` returned). When given, the change happens only if that claim is still the current
    one, and the method returns ``False`` otherwise, so a worker that lost its claim (its lease
    expired and another worker took the task) cannot overwrite the new owner's outcome.
    """

    #: Optional behaviours the broker has; the conformance suite reads this set.
    #: ``"leases"``: a claim expires unless renewed, and an expired claim is handed out again
    #: (RedisBroker renews the claims of a live process by itself; ``extend_lease`` renews one).
    #: ``"multi_process"``: processes sharing the backend share the queue.
    capabilities: frozenset[str] = frozenset()
    #: The queue's name, as monitoring shows it.
    queue: str = "default"

    async def connect(self) -> None:  # noqa: B027  # optional hook; in-process brokers need none
        """Open connections. Idempotent; other methods connect on first use as well."""

    @abstractmethod
    async def close(self) -> None:
        """Release resources. Idempotent; any later call raises ``BrokerClosedError``."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abstractmethod
    async def enqueue(self, task: Task) -> Task | None:
        """Store ``task`` as PENDING, unless a task with its id is stored already: in one step.

        It becomes due at ``task.scheduled_at``. Returns ``None`` when ``task`` was stored,
        else (a copy of) the stored task with that id, left unchanged whatever its name,
        payload or status: so a producer that retries an enqueue whose outcome it does not
        know (``BrokerOutcomeUnknownError``) with the same id never stores the task twice.
        Once a task is deleted (its retention ended), its id can be stored again.
        """

    @abstractmethod
    async def enqueue_unique(self, task: Task) -> Task | None:
        """Store ``task`` unless its id is taken or an unfinished task holds its ``unique_key``.

        In one step. Returns ``None`` when ``task`` was stored, else (a copy of) the stored
        task with its id (as ``enqueue``), or else the PENDING or PROCESSING task holding the
        key. The key is free again once that task finishes. Keys are per queue, not per task
        name: tasks of different names with one key exclude each other.
        """

    async def enqueue_many(self, tasks: Iterable[Task]) -> None:
        """Store several tasks (those whose id is taken are left out, as ``enqueue`` does).

        Networked brokers do it in one round trip.
        """
        for task in tasks:
            await self.enqueue(task)

    @abstractmethod
    async def dequeue(self, timeout: float | None = None) -> Task | None:
        """Claim the next due task by the ordering contract and mark it PROCESSING.

        Waits, without polling, until a task is due or ``timeout`` seconds have passed
        (``None``: no limit; ``0``: do not wait), and returns ``None`` on timeout. The returned
        task has ``attempts`` incremented, ``started_at`` set and a fresh ``claim_token``.
        Cancelling a waiting ``dequeue`` loses no task.
        """

    @abstractmethod
    async def get_task(self, task_id: str) -> Task | None:
        """A copy of the stored task, or ``None`` for an unknown id."""

    @abstractmethod
    async def update_task_status(self, task_id: str, status: TaskStatus) -> None:
        """Set a task's status as one step (the seed's low-level setter).

        Setting PENDING makes the task dequeueable again; setting any other status takes it
        out of the queue. Raises ``TaskNotFoundError`` (a ``KeyError``) for an unknown id.

        Setting PENDING on a finished task redrives it: it retakes its ``unique_key`` and gets
        its full retry budget again (``attempts`` starts again at 0; ``errors`` is kept, and
        its entries go on numbering attempts over the task's whole life). If another
        unfinished task holds the key, it raises ``TaskStateError`` and changes nothing.
        """

    @abstractmethod
    async def mark_complete(
        self, task_id: str, result: Any = None, *, claim_token: str | None = None
    ) -> bool:
        """Record a success; returns ``False`` if ``claim_token`` is no longer the current claim."""

    def complete_soon(
        self, task_id: str, result: Any = None, *, claim_token: str | None = None
    ) -> asyncio.Future[bool]:
        """``mark_complete`` without waiting: the returned future resolves once it is recorded.

        Lets a worker take its next task while the outcome is written; brokers that batch
        writes override this so the outcome travels with the next claim.
        """
        return asyncio.ensure_future(self.mark_complete(task_id, result, claim_token=claim_token))

    @abstractmethod
    async def mark_failed(
        self,
        task_id: str,
        error: str,
        *,
        traceback: str | None = None,
        claim_token: str | None = None,
    ) -> bool:
        """Record a final failure (also added to ``errors``); ``False`` if the claim was lost."""

    @abstractmethod
    async def requeue(
        self,
        task_id: str,
        *,
        delay_seconds: float = 0.0,
        claim_token: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        """Hand a claimed task back to the queue as PENDING, due after ``delay_seconds``.

        Used when a worker stops before the task finished, and to retry a failed attempt: then
        ``error`` (and ``traceback``) are added to the task's ``errors`` and set as its last
        error. Returns ``False`` if the claim was lost (the task belongs to someone else).
        """

    @abstractmethod
    async def hand_back(self, task_id: str, *, claim_token: str) -> bool:
        """Give back a claimed task whose worker stopped before it finished (shutdown).

        Nothing failed, so the attempt does not count: the task is PENDING again, due at once,
        with ``attempts`` as before this claim (a retry is not used up) and no error recorded.
        A task whose cancellation was requested meanwhile ends CANCELLED instead. Returns
        ``False`` if the claim was lost.
        """

    @abstractmethod
    async def set_progress(
        self, task_id: str, fraction: float, message: str, *, claim_token: str | None = None
    ) -> bool:
        """Record a running task's progress; ``False`` if the claim was lost.

        Progress belongs to one attempt: ``dequeue`` clears it when the next attempt starts.
        """

    @abstractmethod
    async def extend_lease(self, task_id: str, claim_token: str) -> bool:
        """Renew the claim on a PROCESSING task; ``False`` if that claim is not the current one.

        Brokers without leases have nothing to renew and only check the claim.
        """

    @abstractmethod
    async def cancel(self, task_id: str) -> bool:
        """Cancel a task; returns whether this call's request took effect (idempotent).

        A PENDING task, due or delayed, is CANCELLED at once and never runs. For a PROCESSING
        task the cancellation is requested: the cancel listeners of the process running it
        (``add_cancel_listener``) are called with its id, and its worker stops it and records
        it with ``mark_cancelled``. A finished or unknown task is left alone (``False``), and so
        is one whose cancellation was requested already: of any number of concurrent calls,
        exactly one returns ``True``.
        """

    @abstractmethod
    def add_cancel_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(task_id)`` when a task this process is running must stop.

        That is when its cancellation is requested, and, for brokers with leases, when this
        process learns that it lost the claim (the lease expired, the record was changed or
        deleted): its run can no longer be recorded and may overlap the new owner's.
        """

    @abstractmethod
    async def mark_cancelled(self, task_id: str, *, claim_token: str | None = None) -> bool:
        """Record that a running task stopped because it was cancelled (CANCELLED, no retry)."""

    async def wait_finished(self, task_id: str, timeout: float | None = None) -> Task | None:
        """The task once it is in a terminal status; ``None`` for an unknown id.

        Raises ``TimeoutError`` after ``timeout`` seconds. This default asks ``get_task`` with
        a backoff that grows from 10 ms to 0.5 s; brokers that can be told override it.
        """
        pause = 0.01
        async with asyncio.timeout(timeout):
            while True:
                # cancel_safe: the timeout must not be lost inside a driver call.
                task = await cancel_safe(self.get_task(task_id))
                if task is None or task.status in TERMINAL_STATUSES:
                    return task
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)

    async def list_finished(
        self, status: TaskStatus, *, limit: int = 100, offset: int = 0
    ) -> tuple[int, list[Task]]:
        """Tasks in the final ``status``, most recently finished first: (total, one page)."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"{status} is not a final status")
        page = await self.list_tasks(TaskQuery(status=status), limit=limit, offset=offset)
        return page.total, page.tasks

    @abstractmethod
    async def list_tasks(self, query: TaskQuery, *, limit: int = 50, offset: int = 0) -> TaskPage:
        """One page of the tasks ``query`` selects, in the order ``TaskQuery`` describes.

        Raises ``ValueError`` for a page size outside 1..``MAX_PAGE_SIZE`` or a negative offset.
        """

    @abstractmethod
    async def oldest_due_at(self) -> datetime | None:
        """When the longest-waiting due PENDING task became due; ``None`` if none is due."""

    @abstractmethod
    async def finished_counts(self, edges: Sequence[datetime]) -> list[int]:
        """How many tasks reached a final status in each window ``[edges[i], edges[i+1])``.

        A task counts once, at its latest finish; tasks already deleted are not counted.
        """

    async def release_claimed_ahead(self) -> None:  # noqa: B027  # only brokers that prefetch
        """Hand back to the queue, at once, the tasks this process claimed ahead of its workers.

        The service calls it once its workers have stopped. Brokers that never claim ahead
        have nothing to do.
        """

    @abstractmethod
    async def set_paused(self, paused: bool) -> None:
        """Pause or resume the queue: while paused, ``dequeue`` hands out no task.

        Tasks can still be added, and running ones finish; across processes for shared brokers.
        """

    @abstractmethod
    async def is_paused(self) -> bool:
        """Whether the queue is paused."""

    @abstractmethod
    async def record_worker(self, info: WorkerInfo) -> None:
        """Store (or refresh) a worker process's record until its ``expires_at``."""

    @abstractmethod
    async def remove_worker(self, worker_id: str) -> None:
        """Forget a worker process's record (it stopped)."""

    @abstractmethod
    async def list_workers(self) -> list[WorkerInfo]:
        """The worker records that have not expired, by id."""

    @abstractmethod
    async def delete_task(self, task_id: str) -> bool:
        """Delete a finished task; ``False`` (and nothing done) if it is not finished.

        Raises ``TaskNotFoundError`` (a ``KeyError``) for an unknown id.
        """

    @abstractmethod
    async def count_by_status(self) -> dict[TaskStatus, int]:
        """How many stored tasks are in each status (every status is a key)."""

    @abstractmethod
    async def claim_slot(self, key: str, ttl_seconds: float) -> bool:
        """Take ``key`` for ``ttl_seconds`` in one atomic step; ``True`` only for the first caller.

        Every broker sharing the queue sees the same keys: of any number of processes calling
        this with one key, one gets ``True`` and the others ``False`` until the key expires,
        after which it can be taken again. Keys are independent of each other and of tasks.
        The periodic scheduler takes one key per (job, slot), so each slot fires once.
        """

    async def enqueue_in_slot(self, task: Task, key: str, ttl_seconds: float) -> bool:
        """Take ``key`` as ``claim_slot`` does and, only if this call took it, enqueue ``task``.

        ``False``: the key was taken already and nothing was stored. The periodic scheduler
        fires a slot with this, so that a crash can neither take a slot without its task nor
        store the task twice. This default is one step for a broker whose ``claim_slot`` and
        ``enqueue`` do not wait on anything (``InMemoryBroker``); a broker that talks to a
        server overrides it with one atomic step there.
        """
        if not await self.claim_slot(key, ttl_seconds):
            return False
        if task.unique_key:
            await self.enqueue_unique(task)
        else:
            await self.enqueue(task)
        return True


def failed_outcome(exc: BaseException) -> asyncio.Future[bool]:
    """An outcome future that failed already: ``complete_soon`` when nothing can be recorded
    (a result the broker cannot encode, say), so the worker records the failure instead."""
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future

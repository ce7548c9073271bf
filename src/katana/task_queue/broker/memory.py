"""InMemoryBroker: the embedded default, built on ``heapq``, for one process and for tests."""

from __future__ import annotations

import asyncio
import bisect
import copy
import heapq
import itertools
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import BrokerClosedError, TaskNotFoundError
from ..listing import TaskPage, check_page
from ..models import TERMINAL_STATUSES, Task, TaskStatus, attempt_error
from .base import DEFAULT_RESULT_TTL_SECONDS, AbstractBroker, failed_outcome, redrive_refused

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from ..listing import TaskQuery, WorkerInfo

__all__ = ["InMemoryBroker"]

#: Due times are datetimes, kept to the microsecond: one rounded up by less than that from
#: the clock's float is due. (A real clock has moved on by then; a fake one may not have.)
_DATETIME_RESOLUTION = 1e-6
#: How many claim_slot keys the broker keeps before it looks for expired ones to drop.
_SLOT_SWEEP_SIZE = 1000
_UNFINISHED = frozenset({TaskStatus.PENDING, TaskStatus.PROCESSING})
_ReadyEntry = tuple[int, float, int, str]  # (priority, due timestamp, sequence, task id)
_DelayedEntry = tuple[float, int, int, str]  # (due timestamp, sequence, priority, task id)


class InMemoryBroker(AbstractBroker):
    """A broker that keeps every task in this process.

    Two heaps keep the ordering contract: due tasks wait in a ready heap ordered by
    (priority, due time, arrival), delayed ones in a heap ordered by due time, from which they
    move to the ready heap once due, so a delayed task never blocks a due one. A task leaves the
    queue lazily: its heap entry stays behind and is skipped when its sequence number is no
    longer the task's live one.

    Args:
        clock: Returns the current time as a POSIX timestamp; tests may pass a fake one.
        result_ttl_seconds: How long finished tasks (results, failures, dead letters) are
            kept; ``None`` keeps them.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        result_ttl_seconds: float | None = DEFAULT_RESULT_TTL_SECONDS,
    ) -> None:
        self._clock = clock
        self.result_ttl_seconds = result_ttl_seconds
        # (time it finished, id) of finished tasks, oldest first: dropped after the TTL. A task
        # that finished again later (redriven) keeps its latest time in _last_finished.
        self._finished: deque[tuple[float, str]] = deque()
        self._last_finished: dict[str, float] = {}
        add_listener = getattr(clock, "add_listener", None)
        if add_listener is not None:  # a testing.FakeClock: look again when it moves
            add_listener(self._wake_one)
        self._tasks: dict[str, Task] = {}
        self._ready: list[_ReadyEntry] = []
        self._delayed: list[_DelayedEntry] = []
        # Task id -> sequence number of its live heap entry, for every PENDING task.
        self._queued: dict[str, int] = {}
        self._sequence = itertools.count()
        self._claims = itertools.count(1)
        self._status_counts = dict.fromkeys(TaskStatus, 0)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._settled_loop: asyncio.AbstractEventLoop | None = None
        # Task id -> futures of wait_finished calls, resolved when it reaches a final status.
        self._finish_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._cancel_listeners: list[Callable[[str], None]] = []
        # Unique key -> id of the task that took it (free again once that task finished).
        self._unique: dict[str, str] = {}
        # Task id -> attempts it made before it was last redriven: its errors keep counting
        # from there, while its retry budget (``attempts``) starts again at 0.
        self._attempts_before: dict[str, int] = {}
        # PROCESSING tasks whose cancellation was requested: they must not be queued again.
        self._cancel_requested: set[str] = set()
        self._settled: dict[bool, asyncio.Future[bool]] = {}
        self._paused = False
        self._workers: dict[str, WorkerInfo] = {}
        # claim_slot key -> when it expires (on this broker's clock).
        self._slots: dict[str, float] = {}

    async def close(self) -> None:
        self._closed = True
        for waiters in self._finish_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)  # they see the broker closed and raise
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _ensure_open(self) -> None:
        if self._closed:
            raise BrokerClosedError("InMemoryBroker is closed")

    # -- writing -------------------------------------------------------------------------

    def _forget_expired(self) -> None:
        """Drop finished tasks older than the result TTL: before every read and write, so a
        task past its retention is gone whether or not other tasks came and went since."""
        ttl = self.result_ttl_seconds
        finished = self._finished
        if ttl is None or not finished:
            return
        horizon = self._clock() - ttl
        while finished and finished[0][0] <= horizon:
            finished_at, task_id = finished.popleft()
            if self._last_finished.get(task_id) != finished_at:
                continue  # it finished again since: a later entry stands for it
            del self._last_finished[task_id]
            task = self._tasks.get(task_id)
            if task is not None and task.status in TERMINAL_STATUSES:
                del self._tasks[task_id]
                self._attempts_before.pop(task_id, None)
                self._status_counts[task.status] -= 1

    async def enqueue(self, task: Task) -> Task | None:
        self._ensure_open()
        self._forget_expired()
        existing = self._tasks.get(task.id)
        if existing is not None:  # a producer retrying its own write: the first one stands
            return existing.copy()
        self._store(task)
        return None

    async def enqueue_unique(self, task: Task) -> Task | None:
        self._ensure_open()
        key = task.unique_key
        if not key:
            raise ValueError("enqueue_unique needs a task with a unique_key")
        self._forget_expired()
        existing = self._tasks.get(task.id)
        if existing is not None:
            return existing.copy()
        holder = self._tasks.get(self._unique.get(key, ""))
        if holder is not None and holder.status in _UNFINISHED:
            return holder.copy()
        self._store(task)
        self._unique[key] = task.id
        return None

    async def enqueue_many(self, tasks: Iterable[Task]) -> None:
        self._ensure_open()
        self._forget_expired()
        for task in tasks:
            if task.id not in self._tasks:
                self._store(task)

    def _store(self, task: Task) -> None:
        """Store a task whose id is not taken."""
        stored = task.copy()
        stored.status = TaskStatus.PENDING
        stored.claim_token = None
        self._tasks[stored.id] = stored
        self._status_counts[TaskStatus.PENDING] += 1
        self._push(stored)

    def _push(self, task: Task) -> None:
        sequence = next(self._sequence)
        due = task.scheduled_at.timestamp()
        self._queued[task.id] = sequence
        if due <= self._clock() + _DATETIME_RESOLUTION:
            heapq.heappush(self._ready, (task.priority, due, sequence, task.id))
        else:
            heapq.heappush(self._delayed, (due, sequence, task.priority, task.id))
        self._wake_one()

    def _set_status(self, task: Task, status: TaskStatus) -> None:
        counts = self._status_counts
        counts[task.status] -= 1
        counts[status] += 1
        task.status = status
        if status in TERMINAL_STATUSES:
            finished_at = self._clock()
            self._finished.append((finished_at, task.id))
            self._last_finished[task.id] = finished_at
            self._forget_expired()
            self._cancel_requested.discard(task.id)
            if task.unique_key is not None and self._unique.get(task.unique_key) == task.id:
                del self._unique[task.unique_key]
        if self._finish_waiters and status in TERMINAL_STATUSES:
            for waiter in self._finish_waiters.pop(task.id, ()):
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_finished(self, task_id: str, timeout: float | None = None) -> Task | None:
        self._ensure_open()
        self._forget_expired()
        async with asyncio.timeout(timeout):
            task = self._tasks.get(task_id)
            while task is not None and task.status not in TERMINAL_STATUSES:
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._finish_waiters.setdefault(task_id, []).append(waiter)
                try:
                    await waiter
                finally:
                    waiters = self._finish_waiters.get(task_id)
                    if waiters and waiter in waiters:
                        waiters.remove(waiter)
                        if not waiters:
                            del self._finish_waiters[task_id]
                self._ensure_open()
                task = self._tasks.get(task_id)
        return None if task is None else task.copy()

    # -- claiming ------------------------------------------------------------------------

    async def dequeue(self, timeout: float | None = None) -> Task | None:
        self._ensure_open()
        task = self._claim_due()
        if task is not None or timeout == 0:
            return task
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while True:
                wait = self._seconds_until_next_due()
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                await self._wait(loop, wait)
                self._ensure_open()
                task = self._claim_due()
                if task is not None:
                    return task
        finally:
            # Whoever leaves hands the watch over, so a sleeping consumer always looks after
            # the queue's next due task.
            if self._queued:
                self._wake_one()

    def _claim_due(self) -> Task | None:
        if self._paused:
            return None
        now = self._clock() + _DATETIME_RESOLUTION
        ready = self._ready
        queued = self._queued
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            due, sequence, priority, task_id = heapq.heappop(delayed)
            if queued.get(task_id) == sequence:
                heapq.heappush(ready, (priority, due, sequence, task_id))
        while ready:
            _, _, sequence, task_id = heapq.heappop(ready)
            if queued.get(task_id) != sequence:
                continue  # the task left the queue since this entry was pushed
            del queued[task_id]
            task = self._tasks[task_id]
            self._set_status(task, TaskStatus.PROCESSING)
            task.attempts += 1
            task.started_at = self._instant()
            task.finished_at = None
            task.progress = task.progress_message = None  # each attempt reports its own
            task.claim_token = str(next(self._claims))
            if ready and self._waiters:
                self._wake_one()
            return task.copy()
        return None

    def _seconds_until_next_due(self) -> float | None:
        if self._paused:
            return None  # set_paused(False) wakes the consumers
        if self._ready:
            return 0.0
        delayed = self._delayed
        queued = self._queued
        while delayed and queued.get(delayed[0][3]) != delayed[0][1]:
            heapq.heappop(delayed)
        if not delayed:
            return None
        return max(0.0, delayed[0][0] - self._clock() - _DATETIME_RESOLUTION)

    async def _wait(self, loop: asyncio.AbstractEventLoop, seconds: float | None) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if seconds is None else loop.call_later(seconds, _wake, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # we were woken for a task we will not take: pass it on
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if not waiter.done():
                waiter.cancel()
            # Test membership first: a failed deque.remove formats the future's repr.
            if waiter in self._waiters:  # not already taken off by _wake_one
                self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- outcomes ------------------------------------------------------------------------

    def _claimed(self, task_id: str, claim_token: str | None) -> Task | None:
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError.for_id(task_id)
        if claim_token is not None and (
            task.claim_token != claim_token or task.status is not TaskStatus.PROCESSING
        ):
            return None
        return task

    async def mark_complete(
        self, task_id: str, result: Any = None, *, claim_token: str | None = None
    ) -> bool:
        return self._complete(task_id, result, claim_token)

    def complete_soon(
        self, task_id: str, result: Any = None, *, claim_token: str | None = None
    ) -> asyncio.Future[bool]:
        # Recording is immediate here: hand back a finished future, no task needed. Finished
        # futures never change, so one per outcome and loop is shared by every call.
        try:
            recorded = self._complete(task_id, result, claim_token)
        except Exception as exc:
            return failed_outcome(exc)
        loop = asyncio.get_running_loop()
        if self._settled_loop is not loop:
            self._settled_loop = loop
            self._settled = {flag: loop.create_future() for flag in (True, False)}
            for flag, settled in self._settled.items():
                settled.set_result(flag)
        return self._settled[recorded]

    def _complete(self, task_id: str, result: Any, claim_token: str | None) -> bool:
        self._ensure_open()
        task = self._claimed(task_id, claim_token)
        if task is None:
            return False
        detached = _detached(result)  # may raise: before any state changes
        self._queued.pop(task_id, None)
        self._set_status(task, TaskStatus.COMPLETED)
        task.result = detached
        task.error = task.traceback = task.claim_token = None
        task.finished_at = self._instant()
        return True

    async def mark_failed(
        self,
        task_id: str,
        error: str,
        *,
        traceback: str | None = None,
        claim_token: str | None = None,
    ) -> bool:
        self._ensure_open()
        task = self._claimed(task_id, claim_token)
        if task is None:
            return False
        self._queued.pop(task_id, None)
        self._set_status(task, TaskStatus.FAILED)
        self._record_error(task, error, traceback)
        task.claim_token = None
        task.finished_at = self._instant()
        return True

    async def requeue(
        self,
        task_id: str,
        *,
        delay_seconds: float = 0.0,
        claim_token: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        self._ensure_open()
        task = self._claimed(task_id, claim_token)
        if task is None:
            return False
        if error is not None:
            self._record_error(task, error, traceback)
        if task_id in self._cancel_requested:  # cancelled while it ran: it does not run again
            self._set_status(task, TaskStatus.CANCELLED)
            task.claim_token = None
            task.finished_at = self._instant()
            return True
        due = self._instant() + timedelta(seconds=delay_seconds)
        self._make_pending(task, due)
        return True

    async def hand_back(self, task_id: str, *, claim_token: str) -> bool:
        self._ensure_open()
        task = self._claimed(task_id, claim_token)
        if task is None:
            return False
        if task_id in self._cancel_requested:  # cancelled while it ran: it does not run again
            self._set_status(task, TaskStatus.CANCELLED)
            task.claim_token = None
            task.finished_at = self._instant()
            return True
        task.attempts -= 1  # the claim is undone: the attempt did not happen
        task.started_at = None
        self._make_pending(task, task.scheduled_at)  # due when it was: back in its place
        return True

    def _record_error(self, task: Task, error: str, traceback: str | None) -> None:
        task.error = error
        task.traceback = traceback
        at = self._instant()
        attempt = self._attempts_before.get(task.id, 0) + task.attempts
        task.errors.append(attempt_error(attempt, error, traceback, at))

    def _make_pending(self, task: Task, scheduled_at: datetime) -> None:
        self._set_status(task, TaskStatus.PENDING)
        task.scheduled_at = scheduled_at
        task.claim_token = None
        task.finished_at = None
        self._push(task)

    async def set_progress(
        self, task_id: str, fraction: float, message: str, *, claim_token: str | None = None
    ) -> bool:
        self._ensure_open()
        task = self._claimed(task_id, claim_token)
        if task is None or task.status is not TaskStatus.PROCESSING:
            return False
        task.progress = fraction
        task.progress_message = message
        return True

    async def extend_lease(self, task_id: str, claim_token: str) -> bool:
        self._ensure_open()
        task = self._tasks.get(task_id)
        return (
            task is not None
            and task.status is TaskStatus.PROCESSING
            and task.claim_token == claim_token
        )

    async def cancel(self, task_id: str) -> bool:
        self._ensure_open()
        self._forget_expired()
        task = self._tasks.get(task_id)
        if task is None or task.status in TERMINAL_STATUSES:
            return False
        if task.status is TaskStatus.PENDING:
            self._queued.pop(task_id, None)
            self._set_status(task, TaskStatus.CANCELLED)
            task.finished_at = self._instant()
            return True
        if task_id in self._cancel_requested:
            return False  # an earlier request took effect: only that one returns True
        self._cancel_requested.add(task_id)
        for listener in list(self._cancel_listeners):
            listener(task_id)
        return True

    def add_cancel_listener(self, listener: Callable[[str], None]) -> None:
        self._cancel_listeners.append(listener)

    async def mark_cancelled(self, task_id: str, *, claim_token: str | None = None) -> bool:
        self._ensure_open()
        task = self._claimed(task_id, claim_token)
        if task is None:
            return False
        self._set_status(task, TaskStatus.CANCELLED)
        task.claim_token = None
        task.finished_at = self._instant()
        return True

    async def update_task_status(self, task_id: str, status: TaskStatus) -> None:
        self._ensure_open()
        self._forget_expired()
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError.for_id(task_id)
        if status is TaskStatus.PENDING:
            if task.status in TERMINAL_STATUSES:
                self._redrive(task)
            elif task.status is not TaskStatus.PENDING:
                self._make_pending(task, task.scheduled_at)
            return
        self._queued.pop(task_id, None)
        self._set_status(task, status)
        if status is TaskStatus.PROCESSING:
            task.started_at = self._instant()
        else:
            task.claim_token = None
            if status in TERMINAL_STATUSES:
                task.finished_at = self._instant()

    def _redrive(self, task: Task) -> None:
        """Queue a finished task again with its full retry budget, retaking its unique key."""
        key = task.unique_key
        if key is not None:
            holder = self._tasks.get(self._unique.get(key, ""))
            if holder is not None and holder is not task and holder.status in _UNFINISHED:
                raise redrive_refused(task.id, holder.id)
            self._unique[key] = task.id
        self._attempts_before[task.id] = self._attempts_before.get(task.id, 0) + task.attempts
        task.attempts = 0
        self._make_pending(task, task.scheduled_at)

    # -- reading -------------------------------------------------------------------------

    async def get_task(self, task_id: str) -> Task | None:
        self._ensure_open()
        self._forget_expired()
        task = self._tasks.get(task_id)
        return None if task is None else task.copy()

    async def list_tasks(self, query: TaskQuery, *, limit: int = 50, offset: int = 0) -> TaskPage:
        self._ensure_open()
        self._forget_expired()
        check_page(limit, offset)
        now = self._now()
        matches = [task for task in self._tasks.values() if query.matches(task, now)]
        status = query.status
        if status is TaskStatus.PENDING:
            queued = self._queued
            matches.sort(key=lambda task: self._run_order(task, now, queued.get(task.id, 0)))
        elif status is TaskStatus.PROCESSING:
            matches.sort(key=lambda task: task.started_at or task.created_at)
        elif status is not None:
            matches.sort(key=_finished_at, reverse=True)
        else:
            matches.reverse()  # insertion order is creation order
            matches.sort(key=lambda task: task.created_at, reverse=True)
        page = [task.copy() for task in matches[offset : offset + limit]]
        return TaskPage(total=len(matches), tasks=page)

    @staticmethod
    def _run_order(task: Task, now: datetime, sequence: int) -> tuple[int, float, float, int]:
        due = task.scheduled_at.timestamp()
        if task.scheduled_at <= now:
            return (0, task.priority, due, sequence)
        return (1, due, 0, sequence)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock() + _DATETIME_RESOLUTION, UTC)

    def _instant(self) -> datetime:
        """The broker's clock now, for the times it records (started, finished)."""
        return datetime.fromtimestamp(self._clock(), UTC)

    async def oldest_due_at(self) -> datetime | None:
        self._ensure_open()
        now = self._now()
        tasks = self._tasks
        due = [tasks[task_id].scheduled_at for task_id in self._queued]
        return min((at for at in due if at <= now), default=None)

    async def finished_counts(self, edges: Sequence[datetime]) -> list[int]:
        self._ensure_open()
        self._forget_expired()
        bounds = [edge.timestamp() for edge in edges]
        counts = [0] * max(len(bounds) - 1, 0)
        if not counts:
            return counts
        last_finished = self._last_finished
        for finished_at, task_id in reversed(self._finished):
            if finished_at < bounds[0]:
                break
            if last_finished.get(task_id) != finished_at or task_id not in self._tasks:
                continue
            index = bisect.bisect_right(bounds, finished_at) - 1
            if index < len(counts):
                counts[index] += 1
        return counts

    async def set_paused(self, paused: bool) -> None:
        self._ensure_open()
        self._paused = paused
        if not paused:
            for waiter in list(self._waiters):
                _wake(waiter)

    async def is_paused(self) -> bool:
        self._ensure_open()
        return self._paused

    async def record_worker(self, info: WorkerInfo) -> None:
        self._ensure_open()
        self._workers[info.id] = copy.deepcopy(info)

    async def remove_worker(self, worker_id: str) -> None:
        self._ensure_open()
        self._workers.pop(worker_id, None)

    async def list_workers(self) -> list[WorkerInfo]:
        self._ensure_open()
        now = self._now()
        for worker_id in [w.id for w in self._workers.values() if w.expires_at <= now]:
            del self._workers[worker_id]
        return [copy.deepcopy(self._workers[key]) for key in sorted(self._workers)]

    async def delete_task(self, task_id: str) -> bool:
        self._ensure_open()
        self._forget_expired()
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError.for_id(task_id)
        if task.status not in TERMINAL_STATUSES:
            return False
        del self._tasks[task_id]
        self._last_finished.pop(task_id, None)
        self._attempts_before.pop(task_id, None)
        self._status_counts[task.status] -= 1
        return True

    async def count_by_status(self) -> dict[TaskStatus, int]:
        self._ensure_open()
        self._forget_expired()
        return dict(self._status_counts)

    async def claim_slot(self, key: str, ttl_seconds: float) -> bool:
        self._ensure_open()
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
        now = self._clock()
        if len(self._slots) > _SLOT_SWEEP_SIZE:  # drop expired keys now and then
            self._slots = {slot: until for slot, until in self._slots.items() if until > now}
        if self._slots.get(key, now) > now:
            return False
        self._slots[key] = now + ttl_seconds
        return True


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _detached(value: Any) -> Any:
    """``value`` if it is immutable, else a JSON round-tripped copy of it."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return orjson.loads(orjson.dumps(value))


def _finished_at(task: Task) -> datetime:
    return task.finished_at or task.created_at

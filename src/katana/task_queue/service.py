"""TaskQueueService: add tasks, run workers, shut down without losing work."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from . import tracing
from ._cancelling import cancel_safe
from ._events import log_task_event, logger
from ._presence import Presence
from ._validation import (
    check_max_retries,
    check_task_id,
    check_task_name,
    check_timeout,
    check_unique_key,
    check_wait_seconds,
    detached_payload,
    new_checked_task,
)
from ._worker import CANCEL_GRACE_SECONDS, Worker
from .errors import (
    BrokerError,
    InvalidTaskError,
    ServiceStateError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
    TaskStateError,
    UnknownTaskError,
)
from .models import Task, TaskExecutor, TaskStatus, utcnow
from .periodic import MAX_JOB_KEY_LENGTH, PeriodicJob, Schedule, Scheduler, _Job

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

    from .broker.base import AbstractBroker
from .config import DEFAULT_RETRY_POLICY, RetryPolicy

__all__ = ["ServiceState", "TaskExecutor", "TaskQueueService"]

_T = TypeVar("_T")

#: How often ``wait_idle`` asks the broker again when no local worker reported in: tasks may
#: be run by workers in other processes.
_IDLE_RECHECK_SECONDS = 0.05


class ServiceState(Enum):
    CREATED = "created"  # no workers started yet
    RUNNING = "running"  # workers are claiming tasks
    STOPPING = "stopping"  # shutdown() is waiting for in-flight tasks
    STOPPED = "stopped"  # shutdown() returned; start_workers() is refused


class TaskQueueService:
    """Creates tasks, and runs the workers that execute them.

    Args:
        broker: Where tasks are stored; the application owns it and closes it.
        clock: Returns the current POSIX time; pass the broker's clock when it is not the
            real one (``testing.FakeClock``) so due times agree.
        task_executors: Task name -> executor. An ``async def`` executor runs on the event
            loop; a plain ``def`` runs in a thread so it cannot block the loop.
    """

    def __init__(
        self,
        broker: AbstractBroker,
        task_executors: Mapping[str, Callable[[Task], Any]] | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.broker = broker
        # Creation and due times come from the same clock as the broker's, fake or not.
        self._clock = clock
        self._executors: dict[str, TaskExecutor] = {}
        self._policies: dict[str, RetryPolicy] = {}
        self._timeouts: dict[str, float | None] = {}
        for name, executor in (task_executors or {}).items():
            self.register(name, executor)
        self._state = ServiceState.CREATED
        # The live worker slots, and the asyncio task running each (same order).
        self._workers: list[Worker] = []
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._slots_started = 0
        # Slots retired with an executor that ignored its cancellation (its coroutine still
        # runs; nothing waits for it), and the writes of those executors' outcomes.
        self._abandoned: set[asyncio.Task[None]] = set()
        self._recording: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._processed = 0
        self._task_done = asyncio.Event()
        self._presence: Presence | None = None
        self._scheduler = Scheduler(self._fire_periodic, clock or time.time)

    @property
    def state(self) -> ServiceState:
        return self._state

    @property
    def task_names(self) -> list[str]:
        """The registered task names, sorted."""
        return sorted(self._executors)

    def register(
        self,
        name: str,
        executor: Callable[[Task], Any],
        *,
        retry: RetryPolicy | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        """Register (or replace) the executor for ``name``.

        Args:
            retry: How failed attempts of this task are retried (default: not at all).
            timeout_seconds: Default time limit of one attempt (``add_task`` may override it).
        """
        check_task_name(name)
        if not callable(executor):
            raise TypeError(f"the executor for {name!r} is not callable: {executor!r}")
        self._policies[name] = retry or DEFAULT_RETRY_POLICY
        self._timeouts[name] = check_timeout(timeout_seconds)
        if inspect.iscoroutinefunction(executor) or inspect.iscoroutinefunction(
            getattr(executor, "__call__", None)  # noqa: B004  # an object with async __call__
        ):
            self._executors[name] = executor
        else:
            self._executors[name] = _in_thread(executor)

    # -- producing -----------------------------------------------------------------------

    async def add_task(
        self,
        name: str,
        payload: dict[str, Any] | None = None,
        priority: int = 0,
        delay_seconds: float = 0,
        *,
        max_retries: int | None = None,
        timeout_seconds: float | None = None,
        unique_key: str | None = None,
        task_id: str | None = None,
    ) -> Task:
        """Create a task and enqueue it; returns the created task (a copy of what is stored).

        ``max_retries`` and ``timeout_seconds`` override what ``name`` was registered with.
        With ``unique_key``, while a task with that key is PENDING or PROCESSING, that task
        is returned instead and nothing new is created. Keys are per queue, whatever the task
        name: put the name in the key to scope it to one name.

        ``task_id`` (1 to 128 ASCII letters, digits or ``_.:-``; default: a random one) makes
        the call idempotent: if a task with that id is stored already, whatever its name,
        payload or status, that task is returned unchanged and nothing new is created. So a
        call that raised ``BrokerOutcomeUnknownError`` (the task may or may not be stored)
        is safe to repeat with the same ``task_id``. An id is free again once its task is
        deleted (after the broker's retention).

        Raises:
            UnknownTaskError: no executor is registered under ``name`` (a ``ValueError``).
            InvalidTaskError: an argument is invalid (a ``ValueError``); nothing was enqueued.
            BrokerUnavailableError: the broker could not be reached; nothing was enqueued.
            BrokerOutcomeUnknownError: the reply was lost; the task may have been enqueued.
        """
        task = self._new_task(name, payload, priority, delay_seconds, max_retries, timeout_seconds)
        if task_id is not None:
            task.id = check_task_id(task_id)
        if unique_key is not None:
            task.unique_key = check_unique_key(unique_key)
            existing = await self._send((task,), self.broker.enqueue_unique(task))
        else:
            existing = await self._send((task,), self.broker.enqueue(task))
        if existing is not None:
            return existing
        log_task_event(
            logging.INFO,
            "task_created",
            task,
            "task %s (%s) created, priority %d",
            task.id,
            name,
            task.priority,
        )
        return task

    async def add_tasks(self, tasks: Iterable[tuple[str, dict[str, Any] | None]]) -> list[Task]:
        """Create and enqueue several ``(name, payload)`` tasks at default priority and delay.

        Every task is validated before any is enqueued.
        """
        created = [self._new_task(name, payload, 0, 0) for name, payload in tasks]
        await self._send(created, self.broker.enqueue_many(created))
        for task in created:
            log_task_event(
                logging.INFO, "task_created", task, "task %s (%s) created", task.id, task.name
            )
        return created

    async def _send(self, tasks: Sequence[Task], store: Awaitable[_T]) -> _T:
        """Await the broker's ``store`` of ``tasks``, in a ``send`` span while tracing is on.

        A cancel of the caller always raises here (``cancel_safe``), though the store it
        interrupted may still take effect: retrying with the same ``task_id`` is safe.
        """
        if tracing.enabled:
            store = tracing.traced_send(self.broker.queue, tasks, store)
        return await cancel_safe(store)

    def _new_task(
        self,
        name: str,
        payload: dict[str, Any] | None,
        priority: int,
        delay_seconds: float,
        max_retries: int | None = None,
        timeout_seconds: float | None = None,
    ) -> Task:
        if name not in self._executors:
            raise UnknownTaskError(
                # Truncated: the name may be anything a caller sent, of any length.
                f"no executor is registered for task name {name!r:.100}; registered: "
                f"{', '.join(self.task_names) or '(none)'}"
            )
        # Registered defaults were checked by register(); only overrides are checked here.
        if max_retries is None:
            max_retries = self._policies[name].max_retries
        else:
            max_retries = check_max_retries(max_retries)
        if timeout_seconds is None:
            timeout_seconds = self._timeouts[name]
        else:
            timeout_seconds = check_timeout(timeout_seconds)
        return new_checked_task(
            name, payload, priority, delay_seconds, self._now(), max_retries, timeout_seconds
        )

    def add_periodic(
        self,
        name: str,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        payload: dict[str, Any] | None = None,
        priority: int = 0,
        max_retries: int | None = None,
        timeout_seconds: float | None = None,
        key: str | None = None,
    ) -> PeriodicJob:
        """Create task ``name`` on a schedule: ``cron`` (UTC) or ``every`` (an interval).

        ``every`` slots are multiples of the interval since the Unix epoch (``every=60``: each
        minute on the minute), so every process agrees on them. The workers' processes
        (``start_workers``) run the schedule; each slot creates one task however many of them
        share the broker, with the unique key ``periodic:<key>:<slot as ISO 8601>``. A job
        fires first at its first slot after the workers start, and a process that fell behind
        fires only the latest slot it missed. ``key`` (default: ``name``) tells apart two jobs
        of one task; the other arguments are those of ``add_task``.

        Raises:
            UnknownTaskError: no executor is registered under ``name`` (a ``ValueError``).
            InvalidTaskError: not exactly one of ``cron`` and ``every``, a bad cron
                expression, an interval that is not positive, another invalid argument, or a
                ``key`` already used (a ``ValueError``).
        """
        if self._state in (ServiceState.STOPPING, ServiceState.STOPPED):
            raise ServiceStateError(
                f"cannot add a periodic task: the service is {self._state.value}"
            )
        # A task built now and thrown away checks the name, payload, priority and overrides.
        self._new_task(name, payload, priority, 0, max_retries, timeout_seconds)
        schedule = Schedule(cron=cron, every=every)
        job_key = name if key is None else check_unique_key(key)
        if len(job_key) > MAX_JOB_KEY_LENGTH:
            raise InvalidTaskError(
                f"a periodic job key has at most {MAX_JOB_KEY_LENGTH} characters, got {key!r:.80}"
            )
        job = _Job(
            job_key,
            name,
            schedule,
            detached_payload(payload),
            priority,
            max_retries,
            timeout_seconds,
        )
        self._scheduler.add(job)
        logger.info(
            "periodic job %s: task %s, %s",
            job_key,
            name,
            schedule,
            extra={"katana_event": "periodic_added", "periodic_job": job_key},
        )
        return next(view for view in self._scheduler.jobs() if view.key == job_key)

    @property
    def periodic_jobs(self) -> list[PeriodicJob]:
        """The periodic jobs (``add_periodic``) by key: task name, schedule and next run."""
        return self._scheduler.jobs()

    async def _fire_periodic(self, job: _Job, slot_key: str, ttl_seconds: float) -> bool:
        """Enqueue the task of a periodic slot, unless another process took the slot."""
        task = self._new_task(
            job.name, job.payload, job.priority, 0, job.max_retries, job.timeout_seconds
        )
        task.unique_key = slot_key  # names the slot it was made for
        if not await self._send((task,), self.broker.enqueue_in_slot(task, slot_key, ttl_seconds)):
            return False
        log_task_event(
            logging.INFO,
            "task_created",
            task,
            "task %s (%s) created for periodic slot %s",
            task.id,
            task.name,
            slot_key,
        )
        return True

    async def wait_for(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait until the task finishes and return its result.

        Raises:
            TaskFailedError: it ended FAILED or DEAD; ``.task`` has the error and history.
            TaskCancelledError: it was cancelled.
            TimeoutError: it did not finish within ``timeout`` seconds.
            TaskNotFoundError: no task has this id (a ``KeyError``, as it was before).
            ValueError: ``timeout`` is NaN or infinite (``None`` waits without a limit).
        """
        timeout = check_wait_seconds(timeout, "timeout")
        # The deadline is enforced here, around a cancel-safe wait: a broker's own timer could
        # fire inside a driver call that swallows it (see _cancelling).
        async with asyncio.timeout(timeout):
            task = await cancel_safe(self.broker.wait_finished(task_id, timeout))
        if task is None:
            raise TaskNotFoundError.for_id(task_id)
        if task.status is TaskStatus.COMPLETED:
            return task.result
        if task.status is TaskStatus.CANCELLED:
            raise TaskCancelledError(task)
        raise TaskFailedError(task)

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task; returns whether this call's request took effect (idempotent).

        A pending or delayed task never runs. A running one is stopped in whichever process
        runs it (its coroutine is cancelled) and ends CANCELLED, not FAILED, and is not
        retried. Cancelling a finished or unknown task, or one whose cancellation was asked
        already, changes nothing and returns ``False``: of concurrent calls, exactly one
        returns ``True``.
        """
        return await cancel_safe(self.broker.cancel(task_id))

    async def dead_letters(self, *, limit: int = 100, offset: int = 0) -> list[Task]:
        """FAILED and DEAD tasks (failed for good), most recently finished first."""
        _, failed = await self.broker.list_finished(TaskStatus.FAILED, limit=offset + limit)
        _, dead = await self.broker.list_finished(TaskStatus.DEAD, limit=offset + limit)
        letters = sorted(failed + dead, key=_finished_at, reverse=True)
        return letters[offset : offset + limit]

    async def redrive(self, task_id: str) -> bool:
        """Queue a FAILED or DEAD task again, due now; ``False`` if it is not one.

        It gets its full retry budget again (``attempts`` starts at 0, ``errors`` is kept) and
        retakes its ``unique_key``. Raises ``TaskStateError``, and leaves the task as it is,
        if another unfinished task holds that key.
        """
        task = await self.get_task(task_id)
        if task is None or task.status not in (TaskStatus.FAILED, TaskStatus.DEAD):
            return False
        await cancel_safe(self.broker.update_task_status(task_id, TaskStatus.PENDING))
        log_task_event(logging.INFO, "task_redriven", task, "task %s queued again", task_id)
        return True

    async def redrive_all(self) -> int:
        """Queue every dead letter again; returns how many.

        Dead letters whose ``unique_key`` another unfinished task holds are left as they are.
        """
        return await self._each_dead_letter(self._redrive_if_key_free)

    async def _redrive_if_key_free(self, task_id: str) -> bool:
        try:
            return await self.redrive(task_id)
        except TaskStateError:
            return False

    async def purge_dead_letters(self) -> int:
        """Delete every FAILED and DEAD task; returns how many."""
        return await self._each_dead_letter(self.broker.delete_task)

    async def _each_dead_letter(self, action: Callable[[str], Awaitable[bool]]) -> int:
        done = 0
        for status in (TaskStatus.FAILED, TaskStatus.DEAD):
            kept = 0  # tasks the action left as they were stay listed: read on past them
            while True:
                _, page = await self.broker.list_finished(status, limit=500, offset=kept)
                acted = [task for task in page if await action(task.id)]
                done += len(acted)
                kept += len(page) - len(acted)
                if len(page) < 500 or not acted:
                    break
        return done

    async def get_task(self, task_id: str) -> Task | None:
        """The task as the broker has it now, or ``None`` for an unknown id."""
        return await cancel_safe(self.broker.get_task(task_id))

    # -- consuming -----------------------------------------------------------------------

    def start_workers(self, num_workers: int) -> list[asyncio.Task[None]]:
        """Start ``num_workers`` worker coroutines on the running loop; returns their tasks."""
        if type(num_workers) is not int or num_workers < 1:
            raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
        if self._state in (ServiceState.STOPPING, ServiceState.STOPPED):
            raise ServiceStateError(f"cannot start workers: the service is {self._state.value}")
        if self._state is ServiceState.CREATED:
            self.broker.add_cancel_listener(self._cancel_running)
            self._scheduler.start()
        self._state = ServiceState.RUNNING
        started = [self._start_slot() for _ in range(num_workers)]
        if self._presence is None:
            self._presence = Presence(
                self.broker,
                concurrency=lambda: sum(1 for task in self._worker_tasks if not task.done()),
                current_task_ids=self._current_task_ids,
                processed=lambda: self._processed,
                task_names=self.task_names,
                now=self._now,
            )
            self._presence.start()
        logger.info("started %d workers", num_workers, extra={"katana_event": "workers_started"})
        return started

    def _start_slot(self) -> asyncio.Task[None]:
        self._slots_started += 1  # names stay unique across replacements
        worker = Worker(
            f"worker-{self._slots_started}",
            self.broker,
            self._executors,
            self._policies,
            should_stop=self._stopping,
            on_task_done=self._on_task_done,
            on_abandoned=self._slot_abandoned,
        )
        worker_task = asyncio.create_task(worker.run(), name=f"katana-{worker.name}")
        self._workers.append(worker)
        self._worker_tasks.append(worker_task)
        worker_task.add_done_callback(functools.partial(self._slot_ended, worker))
        return worker_task

    def _slot_ended(self, worker: Worker, worker_task: asyncio.Task[None]) -> None:
        """A worker slot ended while the service runs: log it, and replace it if it crashed."""
        if worker.retired or self._state is not ServiceState.RUNNING:
            # A retired slot was replaced already; shutdown() stops the slots and waits.
            return
        index = self._worker_tasks.index(worker_task)
        del self._workers[index], self._worker_tasks[index]
        if worker_task.cancelled():
            # Someone cancelled the task start_workers() returned (or the loop is closing):
            # that is a request to stop this slot, so it is not replaced.
            logger.warning(
                "worker %s was cancelled outside shutdown(); %d worker slots remain",
                worker.name,
                len(self._workers),
                extra={"katana_event": "worker_stopped"},
            )
        elif (error := worker_task.exception()) is not None:
            replacement = self._start_slot()
            logger.error(
                "worker %s died (%s: %s); %s replaces it",
                worker.name,
                type(error).__name__,
                error,
                replacement.get_name().removeprefix("katana-"),
                exc_info=error,
                extra={"katana_event": "worker_died"},
            )
        # Returned normally: the broker was closed, which it logged.
        if self._presence is not None:
            self._presence.refresh()  # the record shows the live slots

    def _slot_abandoned(self, worker: Worker, recording: asyncio.Task[None] | None) -> None:
        """``worker`` gave up on an executor that ignored its cancel: replace the slot.

        The slot's asyncio task keeps running the abandoned coroutine; nothing waits for it,
        and it takes no other task. ``recording`` writes the outcome the cancel stood for
        (``None``: the slot was stuck outside its executor, its lease will hand the task back).
        """
        if recording is not None:
            self._recording.add(recording)
            recording.add_done_callback(self._recording.discard)
        index = self._workers.index(worker)
        worker_task = self._worker_tasks[index]
        del self._workers[index], self._worker_tasks[index]
        self._abandoned.add(worker_task)
        worker_task.add_done_callback(self._abandoned.discard)
        if self._state is ServiceState.RUNNING:
            replacement = self._start_slot()
            logger.error(
                "worker %s is retired with an executor that ignored its cancellation; %s "
                "replaces it",
                worker.name,
                replacement.get_name().removeprefix("katana-"),
                extra={"katana_event": "worker_retired"},
            )
        if self._presence is not None:
            self._presence.refresh()

    @property
    def abandoned_executors(self) -> int:
        """How many executor coroutines ignored their cancellation and still run.

        Their tasks' outcomes were recorded when the worker gave up on them
        (``CANCEL_GRACE_SECONDS`` after the cancel); when one ends its outcome is dropped.
        """
        return len(self._abandoned)

    def _cancel_running(self, task_id: str) -> None:
        for worker in self._workers:
            worker.cancel_current(task_id)

    def _stopping(self) -> bool:
        return self._state is not ServiceState.RUNNING

    def _now(self) -> datetime:
        return utcnow() if self._clock is None else datetime.fromtimestamp(self._clock(), UTC)

    def _current_task_ids(self) -> list[str]:
        return [worker.current.id for worker in self._workers if worker.current is not None]

    @property
    def worker_id(self) -> str | None:
        """This process's id in the broker's worker listing, once workers started."""
        return None if self._presence is None else self._presence.id

    def _on_task_done(self) -> None:
        self._processed += 1
        if not self._task_done.is_set():
            self._task_done.set()

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the periodic scheduler and the workers; idempotent.

        Workers waiting for work stop at once. Running tasks get ``timeout`` seconds to finish;
        those still running then are interrupted and handed back to the queue as PENDING, so
        no task is dropped or left PROCESSING. An executor that ignores that cancellation
        for ``CANCEL_GRACE_SECONDS`` is abandoned (its task is handed back all the same), so
        this returns within ``timeout`` plus that grace whatever executors do. ``ValueError``
        for a ``timeout`` that is not a finite number (NaN would never run out).
        """
        grace = check_wait_seconds(timeout, "timeout")
        if grace is None:
            raise ValueError("shutdown needs a finite timeout, got None")
        timeout = grace
        if self._state in (ServiceState.STOPPING, ServiceState.STOPPED):
            await asyncio.gather(*self._worker_tasks, *self._recording, return_exceptions=True)
            return
        self._state = ServiceState.STOPPING
        await self._scheduler.stop()
        busy = sum(1 for worker in self._workers if not worker.idle)
        logger.info(
            "shutting down: %d workers busy, grace period %.1fs",
            busy,
            timeout,
            extra={"katana_event": "shutdown"},
        )
        for worker, worker_task in zip(self._workers, self._worker_tasks, strict=True):
            if worker.idle:
                worker_task.cancel()
        running = [task for task in self._worker_tasks if not task.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=timeout)
            for worker_task in late:
                worker_task.cancel()
        await self._wait_slots_or_abandon()
        if self._recording:
            await asyncio.gather(*self._recording, return_exceptions=True)
        with contextlib.suppress(BrokerError):  # else their leases expire and hand them back
            await self.broker.release_claimed_ahead()
        if self._presence is not None:
            await self._presence.stop()
        self._state = ServiceState.STOPPED
        logger.info("shutdown complete", extra={"katana_event": "shutdown_complete"})

    async def _wait_slots_or_abandon(self) -> None:
        """Wait for the cancelled slots; abandon those that ignore it past the grace."""
        live = [task for task in self._worker_tasks if not task.done()]
        if live:
            _, stuck = await asyncio.wait(live, timeout=CANCEL_GRACE_SECONDS)
            for worker, worker_task in list(zip(self._workers, self._worker_tasks, strict=True)):
                if worker_task in stuck:
                    worker.abandon_if_stuck()  # calls _slot_abandoned
        await asyncio.gather(*self._worker_tasks, return_exceptions=True)

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until no task is PENDING or PROCESSING in the broker.

        Delayed tasks count as pending, so this waits for them too. Raises ``TimeoutError``
        after ``timeout`` seconds, and ``ValueError`` for a NaN or infinite one.
        """
        timeout = check_wait_seconds(timeout, "timeout")
        async with asyncio.timeout(timeout):
            while True:
                self._task_done.clear()
                if any(worker.current is not None for worker in self._workers):
                    await self._task_done.wait()  # our own workers are busy: not idle yet
                    continue
                counts = await cancel_safe(self.broker.count_by_status())
                if counts[TaskStatus.PENDING] == 0 and counts[TaskStatus.PROCESSING] == 0:
                    return
                try:
                    async with asyncio.timeout(_IDLE_RECHECK_SECONDS):
                        await self._task_done.wait()
                except TimeoutError:
                    pass


def _in_thread(function: Callable[[Task], Any]) -> TaskExecutor:
    @functools.wraps(function)
    async def run_in_thread(task: Task) -> Any:
        result = await asyncio.to_thread(function, task)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            result = await result
        return result

    return run_in_thread


def _finished_at(task: Task) -> datetime:
    return task.finished_at or task.created_at

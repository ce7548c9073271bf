"""SqliteBroker: a durable queue in one file, shared by the processes of one host; no server.

Standard library ``sqlite3`` only. Each broker has one thread holding its connection, so no
call blocks the event loop. The file is in WAL mode (readers never wait for the writer); every
state change is one ``BEGIN IMMEDIATE`` transaction written once in ``broker.sql``.

Many processes: a claim carries a lease (``lease_until``) and a fresh claim token; the heartbeat
of each consuming process renews its own leases and hands the expired leases of any process
back to the queue (DEAD after ``max_deliveries``), so a killed process's tasks come back and a
frozen one's late outcome is refused. Outcomes wait for the next claim or the next turn of the
loop and are written with it in one transaction; concurrent enqueues share one (``Coalescer``).

Waking: a consumer in this process is woken at once; one in another process by a datagram
(``_sqlite_wake``), with a slow safety look (``PRAGMA data_version``) should one be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from .._validation import could_be_task_id
from ..errors import BrokerClosedError, BrokerError, StorageError, TaskNotFoundError
from ..listing import check_page
from ..models import TERMINAL_STATUSES, Task, TaskStatus
from ._batch import Coalescer
from ._sqlite_file import Database, Durability
from ._sqlite_leases import Leases
from ._sqlite_wake import WakeSockets
from .base import DEFAULT_RESULT_TTL_SECONDS, AbstractBroker, failed_outcome
from .sql import Outcome, from_us, to_us
from .sql import _reads as reads
from .sql import _steps as steps
from .sql._codec import MalformedRowError
from .sql._outcomes import Batch, OutcomeQueue

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from datetime import datetime

    from ..listing import TaskPage, TaskQuery, WorkerInfo
    from .sql import Steps
    from .sql._steps import Beat

__all__ = ["SqliteBroker"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_WAKE = b"w"
_CANCEL = b"c"  # followed by the task id
_PROBE = b"p"  # "are you there?": a socket that refuses it belongs to a dead process
#: How often wait_finished looks again for a finish in another process: a doubling backoff.
_FINISH_LOOK_FIRST_SECONDS = 0.01
_FINISH_LOOK_MAX_SECONDS = 0.5
_BACKOFF_SECONDS = 0.5
#: The most enqueue calls one transaction carries.
_ENQUEUE_BATCH = 500


class SqliteBroker(AbstractBroker):
    """A broker on a SQLite file, for any number of processes on one host.

    Args:
        path: The database file; created (with its folder's ``<name>.wake`` beside it) if
            missing. A file that is not a Katana database is refused and left untouched.
        queue: Name of the queue; brokers on the same file and queue share it.
        durability: ``"full"`` (``synchronous=FULL``): ``add_task`` returns once the task is
            on disk, so no acknowledged task is lost on a crash of the process or the machine.
            ``"fast"`` (``synchronous=NORMAL``): commits reach the disk at WAL checkpoints, so a
            power cut or OS crash may lose the tasks acknowledged since the last checkpoint
            (a crash of the process alone loses nothing).
        lease_seconds: How long a claim lasts without a heartbeat before the task is handed
            to another worker.
        heartbeat_seconds: How often leases are renewed and expired ones recovered (default:
            a third of the lease).
        max_deliveries: After this many deliveries whose lease expired, the task is DEAD.
        busy_timeout_seconds: How long a write waits for another process's write lock before
            it fails with ``BrokerUnavailableError``.
        safety_look_seconds: How often an idle consumer checks the file for changes it was
            not told about (a lost datagram); one ``PRAGMA data_version``, no write lock.
        claim_batch: The most tasks one claim transaction takes.
        result_ttl_seconds: How long finished tasks are kept; ``None`` keeps them.
        clock: Returns the current POSIX time; every process must agree on it.
    """

    capabilities = frozenset({"leases", "multi_process"})

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        queue: str = "default",
        durability: Durability = "full",
        lease_seconds: float = 30.0,
        heartbeat_seconds: float | None = None,
        max_deliveries: int = 3,
        busy_timeout_seconds: float = 5.0,
        safety_look_seconds: float = 1.0,
        claim_batch: int = 100,
        result_ttl_seconds: float | None = DEFAULT_RESULT_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if durability not in ("full", "fast"):
            raise ValueError(f"durability must be 'full' or 'fast', got {durability!r}")
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}")
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, got {max_deliveries!r}")
        self.path = os.fspath(path)
        #: As ``katana worker --broker`` takes it (``sqlite:////abs.db`` for an absolute path).
        self.url = f"sqlite:///{self.path}"
        self.queue = queue
        self.durability = durability
        self.lease_seconds = float(lease_seconds)
        self.heartbeat_seconds = (
            heartbeat_seconds if heartbeat_seconds is not None else self.lease_seconds / 3
        )
        self.max_deliveries = max_deliveries
        self.safety_look_seconds = safety_look_seconds
        self.result_ttl_seconds = result_ttl_seconds
        self._claim_batch = claim_batch
        self._clock = clock
        self._db = Database(
            self.path, durability=durability, busy_timeout_seconds=busy_timeout_seconds
        )
        # One thread, one connection: sqlite3 connections are not shared between threads.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="katana-sqlite")
        self._wakes = WakeSockets(self.path)
        self._closed = False
        self._closing = False
        self._waiters: deque[asyncio.Future[Task]] = deque()
        self._leases = Leases(
            heartbeat_seconds=self.heartbeat_seconds,
            max_deliveries=max_deliveries,
            beat=self._beat,
            dead_owners=self._dead_owners,
            forget=self._wakes.forget,
            on_requeued=self._notify,
            on_cancel_requested=self._cancel_requested,
            on_lost=self._stop_run,
        )
        # The claims this broker holds (id -> claim token), which its heartbeat renews.
        self._held = self._leases.held
        self._outcomes = OutcomeQueue(self._write_outcomes, self._notify, self._changed)
        # Concurrent enqueue calls share a transaction (one commit, one fsync): (task, unique).
        self._enqueues: Coalescer[tuple[Task, bool], Task | Exception | None] = Coalescer(
            self._enqueue_batch, max_batch=_ENQUEUE_BATCH
        )
        # Task id -> futures of wait_finished calls, woken when this process changes it.
        self._finish_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._cancel_listeners: list[Callable[[str], None]] = []
        add_listener = getattr(clock, "add_listener", None)
        if add_listener is not None:  # a testing.FakeClock: look again when it moves
            add_listener(self._wake.set)

    def __repr__(self) -> str:
        return f"SqliteBroker({self.path!r}, queue={self.queue!r})"

    # -- plumbing ------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise BrokerClosedError(f"{self!r} is closed")

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    def _run_job(self, run: Callable[[Steps[_T]], _T], job: Steps[_T]) -> _T:
        """In the broker's thread: open the file on first use, then run ``job``."""
        self._db.open(self.queue)
        return run(job)

    def _submit_job(self, run: Callable[[Steps[_T]], _T], job: Steps[_T]) -> asyncio.Future[_T]:
        self._ensure_open()
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._run_job, run, job)

    async def _write(self, job: Steps[_T]) -> _T:
        return await self._submit_job(self._db.write, job)

    async def _read(self, job: Steps[_T]) -> _T:
        return await self._submit_job(self._db.read, job)

    async def _data_version(self) -> int:
        self._ensure_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._db.data_version)

    async def connect(self) -> None:
        self._ensure_open()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._db.open, self.queue)

    def _stopping(self) -> bool:
        return self._closing

    def _notify(self, message: bytes = _WAKE) -> None:
        """Tell this process's consumers and every other process's that something changed."""
        self._wake.set()
        self._wakes.send(message)

    def _on_datagram(self, message: bytes) -> None:
        if message == _PROBE:
            return
        if message.startswith(_CANCEL):
            self._cancel_requested(message[len(_CANCEL) :].decode(errors="replace"))
        self._wake.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(BrokerClosedError(f"{self!r} closed while waiting"))
        await self._enqueues.wait_sent()  # enqueues already accepted are answered first
        with contextlib.suppress(BrokerError):
            await self._outcomes.flush()  # tasks handed back included
        self._closed = True
        for task_id in list(self._finish_waiters):
            self._changed(task_id)  # they look again, and hear that the broker closed
        self._wakes.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._db.close)
        self._executor.shutdown(wait=False)

    # -- writing -------------------------------------------------------------------------

    async def enqueue(self, task: Task) -> Task | None:
        return await self._enqueue(task, unique=False)

    async def _enqueue(self, task: Task, *, unique: bool) -> Task | None:
        """Through the coalescer: committed (with the calls made meanwhile) before it returns."""
        self._ensure_open()
        answer = await self._enqueues.submit((task, unique))
        if isinstance(answer, MalformedRowError):  # as a transaction of its own would say
            raise StorageError(f"SQLite database {self.path}: {answer}") from answer
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _enqueue_batch(
        self, requests: list[tuple[Task, bool]]
    ) -> list[Task | Exception | None]:
        answers = await self._write(steps.enqueue_each(self.queue, requests))
        if any(answer is None for answer in answers):
            self._notify()
        return answers

    async def enqueue_many(self, tasks: Iterable[Task]) -> None:
        await self._write(steps.enqueue(self.queue, list(tasks)))
        self._notify()

    async def enqueue_unique(self, task: Task) -> Task | None:
        return await self._enqueue(task, unique=True)

    async def enqueue_in_slot(self, task: Task, key: str, ttl_seconds: float) -> bool:
        ttl_us = steps.slot_ttl_us(ttl_seconds)
        job = steps.enqueue_in_slot(self.queue, task, key, ttl_us, self._now_us())
        took = await self._write(job)
        if took:
            self._notify()
        return took

    async def claim_slot(self, key: str, ttl_seconds: float) -> bool:
        ttl_us = steps.slot_ttl_us(ttl_seconds)
        return await self._write(steps.claim_slot(self.queue, key, ttl_us, self._now_us()))

    # -- claiming ------------------------------------------------------------------------

    async def dequeue(self, timeout: float | None = None) -> Task | None:
        self._ensure_open()
        self._start_consuming()
        if timeout is not None and timeout <= 0:
            claimed, _ = await self._claim(1)
            return claimed[0] if claimed else None
        waiter: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait((waiter,))
        except TimeoutError:
            pass
        except BaseException:
            task = self._withdraw(waiter)
            if task is not None:  # woken for a task it will not take: pass it on
                self._deliver(task)
            raise
        return self._withdraw(waiter)

    def _withdraw(self, waiter: asyncio.Future[Task]) -> Task | None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not waiter.done():
            waiter.cancel()
            return None
        return waiter.result()  # raises BrokerClosedError if the broker closed meanwhile

    def _deliver(self, task: Task) -> None:
        """Hand ``task`` to the first consumer still waiting, or back to the queue."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(task)
                return
        future = self._submit(Outcome("release", task.id, task.claim_token))
        future.add_done_callback(_retrieve)

    def _start_consuming(self) -> None:
        if self._background or self._closing:
            return
        loop = asyncio.get_running_loop()
        try:
            self._wakes.listen(loop, self._on_datagram)
        except OSError as exc:
            raise StorageError(
                f"cannot listen for wake-ups of SQLite database {self.path} in "
                f"{self._wakes.folder}: {exc}"
            ) from exc
        self._background = [
            loop.create_task(self._fetch_loop(), name="katana-sqlite-fetch"),
            loop.create_task(self._leases.keep(), name="katana-sqlite-heartbeat"),
        ]

    async def _claim(self, count: int) -> tuple[list[Task], int | None]:
        """Write the outcomes waiting and claim up to ``count`` tasks, in one transaction.

        If the caller is cancelled meanwhile, what the transaction claimed goes back.
        """
        batch = self._outcomes.take()
        token_prefix = f"{os.urandom(6).hex()}:"
        job = self._submit_job(
            self._db.write,
            steps.claim_with_outcomes(
                self.queue,
                [outcome for outcome, _ in batch],
                count,
                self._now_us(),
                int(self.lease_seconds * 1_000_000),
                token_prefix,
                self._wakes.name,
            ),
        )
        job.add_done_callback(partial(self._settle_claim, batch))
        try:
            _, claimed, next_due = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(self._give_back)
            raise
        return claimed, next_due

    def _settle_claim(self, batch: Batch, job: Any) -> None:
        if job.cancelled() or job.exception() is not None:
            self._outcomes.settle(batch, job.exception() or BrokerError("claim interrupted"))
            return
        codes, claimed, _ = job.result()
        self._outcomes.settle(batch, codes)
        for task in claimed:
            self._held[task.id] = task.claim_token

    def _give_back(self, job: Any) -> None:
        if job.cancelled() or job.exception() is not None:
            return
        for task in job.result()[1]:
            self._deliver(task)

    async def _fetch_loop(self) -> None:
        """Claim for the waiting consumers; in between, wait to be woken (no polling)."""
        seen_version: int | None = None
        while not self._stopping():
            waiting = sum(1 for waiter in self._waiters if not waiter.done())
            if not waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._wake.clear()
            try:
                claimed, next_due = await self._claim(min(waiting, self._claim_batch))
                if not claimed:
                    seen_version = await self._data_version()
            except StorageError as exc:  # e.g. a row it cannot read: the claim was rolled back
                logger.error("claiming failed: %s", exc, extra={"katana_event": "broker_error"})
                self._fail_waiters(exc)  # waiting would not mend it
                await self._back_off()
                continue
            except BrokerError as exc:  # e.g. the file stayed locked: waiting may mend it
                if self._stopping():
                    return
                logger.warning(
                    "claiming failed (%s); trying again",
                    exc,
                    extra={"katana_event": "broker_error"},
                )
                await self._back_off()
                continue
            except Exception as exc:  # a bug: the consumers hear of it rather than hang
                logger.exception("claiming failed", extra={"katana_event": "broker_error"})
                self._fail_waiters(BrokerError(f"claiming failed: {exc!r}"))
                await self._back_off()
                continue
            for task in claimed:
                self._deliver(task)
            if not claimed:
                await self._sleep(next_due, seen_version)

    def _fail_waiters(self, exc: BrokerError) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(exc)

    async def _back_off(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_BACKOFF_SECONDS):
                await self._wake.wait()

    async def _sleep(self, next_due_us: int | None, seen_version: int | None) -> None:
        """Until woken, the next task is due, or the safety look finds another commit."""
        while not self._wake.is_set():
            wait = self.safety_look_seconds
            if next_due_us is not None:
                until_due = (next_due_us - self._now_us()) / 1_000_000
                if until_due <= wait:
                    wait = max(until_due, 0.0)
                    due = True
                else:
                    due = False
            else:
                due = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            if self._wake.is_set() or due:
                return
            version = await self._data_version()
            if version != seen_version:
                return

    # -- outcomes ------------------------------------------------------------------------

    def _submit(self, outcome: Outcome) -> asyncio.Future[bool]:
        """Queue ``outcome``: written with the next claim, or else on the next loop turn."""
        self._ensure_open()
        self._held.pop(outcome.task_id, None)
        return self._outcomes.submit(outcome)

    async def _write_outcomes(self, outcomes: list[Outcome]) -> list[int]:
        return await self._write(steps.apply_outcomes(self.queue, outcomes, self._now_us()))

    def complete_soon(
        self, task_id: str, result: Any = None, *, claim_token: str | None = None
    ) -> asyncio.Future[bool]:
        try:
            encoded = None if result is None else orjson.dumps(result).decode()
        except TypeError as exc:  # orjson's JSONEncodeError is a TypeError
            return failed_outcome(exc)
        return self._submit(Outcome("complete", task_id, claim_token, encoded))

    async def mark_complete(
        self, task_id: str, result: Any = None, *, claim_token: str | None = None
    ) -> bool:
        return await self.complete_soon(task_id, result, claim_token=claim_token)

    async def mark_failed(
        self,
        task_id: str,
        error: str,
        *,
        traceback: str | None = None,
        claim_token: str | None = None,
    ) -> bool:
        return await self._submit(Outcome("fail", task_id, claim_token, error, traceback))

    async def requeue(
        self,
        task_id: str,
        *,
        delay_seconds: float = 0.0,
        claim_token: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        delay_us = int(delay_seconds * 1_000_000)
        outcome = Outcome("requeue", task_id, claim_token, error, traceback, delay_us)
        return await self._submit(outcome)

    async def hand_back(self, task_id: str, *, claim_token: str) -> bool:
        # A release: the claim is undone (attempts as before, its old place in the queue),
        # or CANCELLED if its cancellation was requested meanwhile.
        return await self._submit(Outcome("release", task_id, claim_token))

    async def mark_cancelled(self, task_id: str, *, claim_token: str | None = None) -> bool:
        return await self._submit(Outcome("cancel", task_id, claim_token))

    async def set_progress(
        self, task_id: str, fraction: float, message: str, *, claim_token: str | None = None
    ) -> bool:
        code = await self._write(
            steps.set_progress(self.queue, task_id, claim_token, float(fraction), message)
        )
        if code <= 0 and claim_token is not None:
            # The claim is gone: no need to wait for the heartbeat to find out.
            self._leases.lost(task_id, claim_token)
        if code < 0:
            raise TaskNotFoundError.for_id(task_id)
        return code == 1

    async def extend_lease(self, task_id: str, claim_token: str) -> bool:
        until = self._now_us() + int(self.lease_seconds * 1_000_000)
        return await self._write(steps.extend_lease(self.queue, task_id, claim_token, until))

    async def cancel(self, task_id: str) -> bool:
        if not could_be_task_id(task_id):  # not encodable: no task has it
            self._ensure_open()
            return False
        code = await self._write(steps.cancel(self.queue, task_id, self._now_us()))
        if code == 1:
            self._changed(task_id)
        if code == 2:  # running: whoever runs it stops it, here or in another process
            self._cancel_requested(task_id)
            self._wakes.send(_CANCEL + task_id.encode())
        return code > 0

    def add_cancel_listener(self, listener: Callable[[str], None]) -> None:
        self._cancel_listeners.append(listener)

    def _cancel_requested(self, task_id: str) -> None:
        if task_id in self._held:
            self._stop_run(task_id)

    def _stop_run(self, task_id: str) -> None:
        """The cancel listeners stop the run of ``task_id`` in this process, if any."""
        for listener in list(self._cancel_listeners):
            listener(task_id)

    async def update_task_status(self, task_id: str, status: TaskStatus) -> None:
        status = TaskStatus(status)
        lease_us = int(self.lease_seconds * 1_000_000)
        job = steps.set_status(self.queue, task_id, status, self._now_us(), lease_us)
        if not await self._write(job):
            raise TaskNotFoundError.for_id(task_id)
        if status is TaskStatus.PENDING:
            self._notify()
        else:
            self._held.pop(task_id, None)
            self._changed(task_id)

    # -- leases --------------------------------------------------------------------------

    async def heartbeat(self, dead_owners: Sequence[str] = ()) -> None:
        """Renew this broker's leases, recover expired ones of any process (and at once the
        claims of ``dead_owners``), prune old tasks.

        Runs by itself every ``heartbeat_seconds`` once this broker consumes, and as soon as
        a process holding claims is found gone.
        """
        await self._leases.heartbeat(dead_owners)

    async def _beat(self, held: list[tuple[str, str]], dead_owners: Sequence[str]) -> Beat:
        ttl = self.result_ttl_seconds
        return await self._write(
            steps.heartbeat(
                self.queue,
                held,
                self._now_us(),
                int(self.lease_seconds * 1_000_000),
                self.max_deliveries,
                None if ttl is None else int(ttl * 1_000_000),
                dead_owners,
            )
        )

    def _dead_owners(self) -> list[str]:
        """The processes whose wake-up socket refuses a probe: they died holding it open."""
        return self._wakes.dead_peers(_PROBE)

    def _changed(self, task_id: str) -> None:
        """This process changed the task: its ``wait_finished`` callers look again now."""
        for waiter in self._finish_waiters.pop(task_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def wait_finished(self, task_id: str, timeout: float | None = None) -> Task | None:
        """Woken at once by a finish recorded in this process; a finish in another one is
        seen by looking again with a backoff from 10 ms to 0.5 s."""
        self._ensure_open()
        loop = asyncio.get_running_loop()
        pause = _FINISH_LOOK_FIRST_SECONDS
        async with asyncio.timeout(timeout):
            while True:
                waiter: asyncio.Future[None] = loop.create_future()
                self._finish_waiters.setdefault(task_id, []).append(waiter)
                try:
                    task = await self.get_task(task_id)
                    if task is None or task.status in TERMINAL_STATUSES:
                        return task
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(pause):
                            await waiter
                finally:
                    waiters = self._finish_waiters.get(task_id, [])
                    if waiter in waiters:
                        waiters.remove(waiter)
                        if not waiters:
                            del self._finish_waiters[task_id]
                pause = min(pause * 2, _FINISH_LOOK_MAX_SECONDS)

    # -- reading -------------------------------------------------------------------------

    async def get_task(self, task_id: str) -> Task | None:
        if not could_be_task_id(task_id):  # not encodable: no task has it
            self._ensure_open()
            return None
        return await self._read(reads.get_task(self.queue, task_id))

    async def list_tasks(self, query: TaskQuery, *, limit: int = 50, offset: int = 0) -> TaskPage:
        check_page(limit, offset)
        return await self._read(reads.list_tasks(self.queue, query, limit, offset, self._now_us()))

    async def oldest_due_at(self) -> datetime | None:
        due = await self._read(reads.oldest_due_at(self.queue, self._now_us()))
        return None if due is None else from_us(due)

    async def finished_counts(self, edges: Sequence[datetime]) -> list[int]:
        return await self._read(reads.finished_counts(self.queue, [to_us(e) for e in edges]))

    async def count_by_status(self) -> dict[TaskStatus, int]:
        return await self._read(reads.count_by_status(self.queue))

    async def set_paused(self, paused: bool) -> None:
        await self._write(reads.set_paused(self.queue, paused))
        if not paused:
            self._notify()

    async def is_paused(self) -> bool:
        return await self._read(reads.is_paused(self.queue))

    async def record_worker(self, info: WorkerInfo) -> None:
        await self._write(reads.record_worker(self.queue, info, to_us(info.expires_at)))

    async def remove_worker(self, worker_id: str) -> None:
        await self._write(reads.remove_worker(self.queue, worker_id))

    async def list_workers(self) -> list[WorkerInfo]:
        return await self._write(reads.list_workers(self.queue, self._now_us()))

    async def delete_task(self, task_id: str) -> bool:
        if not could_be_task_id(task_id):  # not encodable: no task has it
            self._ensure_open()
            raise TaskNotFoundError.for_id(task_id)
        code = await self._write(steps.delete_task(self.queue, task_id))
        if code < 0:
            raise TaskNotFoundError.for_id(task_id)
        return code == 1


def _retrieve(future: asyncio.Future[bool]) -> None:
    """Done callback of a write nobody awaits: its failure is logged, not left unretrieved."""
    if not future.cancelled() and future.exception() is not None:
        logger.warning("handing a task back failed: %s", future.exception())

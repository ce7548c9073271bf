"""`katana worker` processes on a real Redis: SIGKILL chaos, a poison pill, SIGTERM, CLI basics.

The SIGKILL chaos and the orphan tests run on a SQLite file too (``backend`` "sqlite").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import re
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from katana.task_queue import __version__
from katana.task_queue.errors import TaskCancelledError
from katana.task_queue.models import TERMINAL_STATUSES, TaskStatus

from ._processes import POLL_SECONDS, WorkerProcess, WorkerProcesses, read_until, wait_until
from .chaos_app import (
    LedgerBroker,
    LedgerEntry,
    SqliteLedgerBroker,
    build_service,
    ledger_key,
    parse_ledger,
    starts_key,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from katana.task_queue.service import TaskQueueService

pytestmark = pytest.mark.usefixtures("redis_url")

logger = logging.getLogger(__name__)

#: Extra seconds allowed for anything another process does on this (loaded, 2-core) machine.
SLACK = 5.0
#: How long a worker process may take to start, import the app and connect.
STARTUP_SECONDS = 20.0


@dataclass
class Chaos:
    """One queue, the chaos app's service on it, its ledger, and the CLI workers serving it."""

    queue: str
    service: TaskQueueService
    workers: WorkerProcesses
    redis: aioredis.Redis = field(repr=False)

    @property
    def broker(self) -> LedgerBroker | SqliteLedgerBroker:
        broker = self.service.broker
        assert isinstance(broker, LedgerBroker | SqliteLedgerBroker)
        return broker

    def start_worker(self, *args: str) -> WorkerProcess:
        return self.workers.start("--log-level", "WARNING", *args)

    async def ledger(self) -> list[LedgerEntry]:
        raw = await self.redis.lrange(ledger_key(self.queue), 0, -1)
        return parse_ledger(raw)

    async def starts_by(self, pid: int) -> int:
        raw = await self.redis.hget(starts_key(self.queue), str(pid))
        return int(raw or 0)

    async def counts(self) -> dict[TaskStatus, int]:
        return await self.broker.count_by_status()

    async def wait_for_starts(self, count: int, timeout: float) -> list[LedgerEntry]:
        """Wait until executors have started ``count`` tasks; returns those start entries."""

        async def started() -> bool:
            return len([e for e in await self.ledger() if e.event == "start"]) >= count

        await wait_until(started, timeout, f"{count} executors to start")
        return [entry for entry in await self.ledger() if entry.event == "start"]

    async def close(self) -> None:
        try:
            self.workers.stop_all()
            if isinstance(self.broker, LedgerBroker):  # a SQLite file goes with tmp_path
                await self.broker.purge()
            await self.redis.delete(ledger_key(self.queue), starts_key(self.queue))
        finally:
            await self.broker.close()
            await self.redis.aclose()


@pytest.fixture
async def make_chaos(
    redis_url: str, queue_name: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Chaos]]:
    """Makes the test's Chaos; kills its workers and deletes its keys at the end."""
    made: list[Chaos] = []

    def make(
        lease_seconds: float, heartbeat_seconds: float | None = None, *, backend: str = "redis"
    ) -> Chaos:
        heartbeat = heartbeat_seconds if heartbeat_seconds is not None else lease_seconds / 3
        sqlite_path = str(tmp_path / "chaos.db") if backend == "sqlite" else ""
        service = build_service(
            redis_url,
            queue_name,
            lease_seconds=lease_seconds,
            heartbeat_seconds=heartbeat,
            sqlite_path=sqlite_path,
        )
        env = {
            "CHAOS_REDIS_URL": redis_url,
            "CHAOS_QUEUE": queue_name,
            "CHAOS_LEASE": str(lease_seconds),
            "CHAOS_HEARTBEAT": str(heartbeat),
            "CHAOS_SQLITE_PATH": sqlite_path,
        }
        chaos = Chaos(
            queue=queue_name,
            service=service,
            workers=WorkerProcesses(tmp_path, env),
            redis=aioredis.Redis.from_url(redis_url),
        )
        made.append(chaos)
        return chaos

    try:
        yield make
    finally:
        for chaos in made:
            await chaos.close()


def _is_clean(counts: dict[TaskStatus, int], completed: int) -> bool:
    return counts == {**dict.fromkeys(TaskStatus, 0), TaskStatus.COMPLETED: completed}


# -- 1. SIGKILL chaos ---------------------------------------------------------------------------

CHAOS_TASKS = 10_000
CHAOS_WORKERS = 4
CHAOS_CONCURRENCY = 8
CHAOS_KILLS = 3
CHAOS_LEASE = 2.0
CHAOS_HEARTBEAT = 0.5
CHAOS_SEED = 20_261_127


@dataclass
class LedgerReport:
    """What the ledger says about who ran what, given which workers were killed when."""

    starts: dict[str, list[LedgerEntry]]
    #: Tasks whose executor started more than once.
    rerun: set[str]
    #: Killed pid -> tasks it was running when it died: these must run again.
    interrupted: dict[int, set[str]]
    #: Killed pid -> tasks it finished but died before Redis recorded: these may run again.
    unrecorded: dict[int, set[str]]
    acks: collections.Counter[str]
    #: Seconds from each kill to the next start, elsewhere, of each task it interrupted.
    rerun_delays: list[float]

    @property
    def all_interrupted(self) -> set[str]:
        return set().union(*self.interrupted.values())

    @property
    def all_unrecorded(self) -> set[str]:
        return set().union(*self.unrecorded.values())


def _read_ledger(entries: list[LedgerEntry], kills: dict[int, float]) -> LedgerReport:
    starts: dict[str, list[LedgerEntry]] = collections.defaultdict(list)
    finished: set[tuple[str, int]] = set()
    acked: set[tuple[str, int]] = set()
    acks: collections.Counter[str] = collections.Counter()
    for entry in entries:
        if entry.event == "start":
            starts[entry.task_id].append(entry)
        elif entry.event == "done":
            finished.add((entry.task_id, entry.pid))
        else:
            acked.add((entry.task_id, entry.pid))
            acks[entry.task_id] += 1
    rerun = {task_id for task_id, runs in starts.items() if len(runs) > 1}
    interrupted: dict[int, set[str]] = {pid: set() for pid in kills}
    unrecorded: dict[int, set[str]] = {pid: set() for pid in kills}
    delays: list[float] = []
    for task_id, runs in starts.items():
        for index, run in enumerate(runs):
            if run.pid not in kills or (task_id, run.pid) in acked:
                continue
            if (task_id, run.pid) not in finished:
                interrupted[run.pid].add(task_id)
            elif task_id in rerun:
                unrecorded[run.pid].add(task_id)
            later = [other for other in runs[index + 1 :] if other.pid != run.pid]
            if later:
                delays.append(later[0].time - kills[run.pid])
    return LedgerReport(dict(starts), rerun, interrupted, unrecorded, acks, delays)


async def _warm_victim(
    chaos: Chaos, workers: list[WorkerProcess], rng: random.Random
) -> WorkerProcess | None:
    """A random running worker that has started tasks, so killing it interrupts some."""
    warm = [worker for worker in workers if await chaos.starts_by(worker.pid) > 0]
    return rng.choice(warm) if warm else None


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "backend",
    [
        "redis",
        pytest.param(
            "sqlite",
            # A known SqliteBroker bug (issue 11, open): in 1 of about 8 clean-clone runs a
            # task of a live worker ran twice. Kept running and reported, not hidden: the
            # marker goes once presence on SQLite no longer takes back a live process's claim.
            marks=pytest.mark.xfail(
                strict=False, reason="SqliteBroker: rare re-run of a live worker's task"
            ),
        ),
    ],
)
async def test_sigkilled_workers_lose_no_task_and_only_their_tasks_run_twice(
    make_chaos: Callable[..., Chaos], record_property: Callable[[str, object], None], backend: str
) -> None:
    chaos = make_chaos(CHAOS_LEASE, CHAOS_HEARTBEAT, backend=backend)
    # Given 10,000 short tasks and four CLI workers with a 2 s lease, renewed every 0.5 s
    await chaos.service.add_tasks([("chaos", {"n": n}) for n in range(CHAOS_TASKS)])
    options = ("-c", str(CHAOS_CONCURRENCY))
    workers = [chaos.start_worker(*options) for _ in range(CHAOS_WORKERS)]
    rng = random.Random(CHAOS_SEED)
    kill_after = sorted(rng.sample(range(CHAOS_TASKS // 10, CHAOS_TASKS * 6 // 10), CHAOS_KILLS))
    kills: dict[int, float] = {}

    # When three of them, at random points, are killed with SIGKILL and each is replaced
    deadline = time.monotonic() + 120
    while True:
        counts = await chaos.counts()
        if sum(counts[status] for status in TERMINAL_STATUSES) == CHAOS_TASKS:
            break
        for worker in workers:
            assert worker.alive(), f"worker {worker.pid} died on its own\n{worker.output()}"
        if kill_after and counts[TaskStatus.COMPLETED] >= kill_after[0]:
            victim = await _warm_victim(chaos, workers, rng)
            if victim is not None:
                victim.send(signal.SIGKILL)
                kills[victim.pid] = time.time()
                assert await victim.wait(10) == -signal.SIGKILL
                workers[workers.index(victim)] = chaos.start_worker(*options)
                kill_after.pop(0)
        assert time.monotonic() < deadline, f"not done after 120 s: {counts}, kills {kills}"
        await asyncio.sleep(POLL_SECONDS)

    # Then every task completed, exactly once as far as Redis is concerned
    assert len(kills) == CHAOS_KILLS
    counts = await chaos.counts()
    assert _is_clean(counts, CHAOS_TASKS), counts
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert await worker.wait(10 + SLACK) == 0, worker.output()
    if isinstance(chaos.broker, SqliteLedgerBroker):  # and the file survived the kills intact
        with contextlib.closing(sqlite3.connect(chaos.broker.path)) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    # And the tasks that ran twice are exactly those a killed worker had not finished, or had
    # finished without its completion reaching Redis yet
    report = _read_ledger(await chaos.ledger(), kills)
    assert len(report.starts) == CHAOS_TASKS
    interrupted, unrecorded = report.all_interrupted, report.all_unrecorded
    assert interrupted <= report.rerun, "a task interrupted by a kill never ran again"
    assert report.rerun <= interrupted | unrecorded, (
        "a task ran twice though no killed worker had it: "
        f"{sorted(report.rerun - interrupted - unrecorded)}"
    )
    assert max(report.acks.values()) == 1, "a completion was recorded twice"
    killed_starts = {
        task_id for task_id, runs in report.starts.items() if any(r.pid in kills for r in runs)
    }
    assert set(report.starts) - set(report.acks) <= killed_starts
    per_kill = {pid: (len(report.interrupted[pid]), len(report.unrecorded[pid])) for pid in kills}
    assert all(running <= CHAOS_CONCURRENCY for running, _ in per_kill.values()), per_kill
    # Outcomes ride on the next claim, so a kill also loses those of the tasks its workers
    # finished during the last claim round trip (tasks claimed ahead but not started had no
    # outcome and are no duplicates: they start once).
    assert all(lost <= 2 * CHAOS_CONCURRENCY for _, lost in per_kill.values()), per_kill
    duplicates = len(report.rerun)
    assert duplicates <= CHAOS_KILLS * 3 * CHAOS_CONCURRENCY, per_kill

    # And each interrupted task ran again within a lease and two heartbeats of the kill
    limit = CHAOS_LEASE + 2 * CHAOS_HEARTBEAT + SLACK
    assert len(report.rerun_delays) >= len(interrupted)
    assert all(0 < delay <= limit for delay in report.rerun_delays), report.rerun_delays
    record_property("duplicates", duplicates)
    record_property("rerun_delays", [round(delay, 3) for delay in report.rerun_delays])
    logger.info(
        "chaos: %d kills, %d tasks ran twice; (interrupted, finished but unrecorded) per kill: "
        "%s; re-run %.2f-%.2f s after the kill",
        len(kills),
        duplicates,
        list(per_kill.values()),
        min(report.rerun_delays, default=0.0),
        max(report.rerun_delays, default=0.0),
    )


# -- 2. A poison pill ---------------------------------------------------------------------------

POISON_NEIGHBOURS = 1_000
POISON_LEASE = 1.0
POISON_HEARTBEAT = 0.25


async def _supervise(
    chaos: Chaos, workers: list[WorkerProcess], options: tuple[str, ...], total: int
) -> list[tuple[int, int]]:
    """Replace each worker that dies until ``total`` tasks are finished; returns the dead
    workers' (pid, exit code), including those that died after the last task finished."""
    died: list[tuple[int, int]] = []
    deadline = time.monotonic() + 60
    while True:
        counts = await chaos.counts()
        finished = sum(counts[status] for status in TERMINAL_STATUSES) == total
        for index, worker in enumerate(workers):
            code = worker.popen.poll()
            if code is not None:
                died.append((worker.pid, code))
                workers[index] = chaos.start_worker(*options)
        if finished:
            return died
        assert time.monotonic() < deadline, f"not done after 60 s: {counts}, deaths {died}"
        await asyncio.sleep(POLL_SECONDS)


async def _assert_poison_dead(chaos: Chaos, poison_id: str, died: list[tuple[int, int]]) -> None:
    """The poison pill is DEAD after three deliveries, each of which cost a worker its life."""
    task = await chaos.service.get_task(poison_id)
    assert task is not None
    assert (task.status, task.attempts) == (TaskStatus.DEAD, 3)
    assert task.error is not None
    assert task.error.startswith("WorkerLost: delivered 3 times"), task.error
    runs = [e for e in await chaos.ledger() if e.event == "start" and e.task_id == poison_id]
    assert len({run.pid for run in runs}) == len(runs) == 3
    assert sorted(died) == sorted((run.pid, -signal.SIGKILL) for run in runs)


@pytest.mark.timeout(90)
async def test_a_task_that_kills_its_worker_is_dead_after_three_deliveries(
    make_chaos: Callable[..., Chaos],
) -> None:
    chaos = make_chaos(POISON_LEASE, POISON_HEARTBEAT)
    # Given a task that SIGKILLs whichever worker runs it, amid 1,000 ordinary tasks, and two
    # workers running one task at a time (see the next test for what happens with more)
    tasks: list[tuple[str, dict[str, Any] | None]] = [
        ("chaos", {"n": n}) for n in range(POISON_NEIGHBOURS)
    ]
    tasks.insert(POISON_NEIGHBOURS // 2, ("poison", None))
    created = await chaos.service.add_tasks(tasks)
    options = ("-c", "1")
    workers = [chaos.start_worker(*options) for _ in range(2)]

    # When a supervisor replaces every worker that dies, until no task is left to run
    died = await _supervise(chaos, workers, options, len(created))

    # Then the poison pill is DEAD after exactly three deliveries, and every other task completed
    await _assert_poison_dead(chaos, created[POISON_NEIGHBOURS // 2].id, died)
    counts = await chaos.counts()
    expected = {
        **dict.fromkeys(TaskStatus, 0),
        TaskStatus.COMPLETED: POISON_NEIGHBOURS,
        TaskStatus.DEAD: 1,
    }
    assert counts == expected
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert await worker.wait(10 + SLACK) == 0, worker.output()


@pytest.mark.timeout(90)
async def test_tasks_claimed_alongside_a_poison_pill_do_not_share_its_fate(
    make_chaos: Callable[..., Chaos],
) -> None:
    chaos = make_chaos(POISON_LEASE, POISON_HEARTBEAT)
    # Given a poison pill queued just before three 0.5 s tasks, and one worker at a time
    # running four tasks at once, so that it claims all four in one go
    created = await chaos.service.add_tasks([("poison", None)] + [("sleep", {"seconds": 0.5})] * 3)
    options = ("-c", "4")
    workers = [chaos.start_worker(*options)]

    # When a supervisor replaces the worker whenever it dies, until no task is left to run
    died = await _supervise(chaos, workers, options, len(created))

    # Then the poison pill is DEAD, and the tasks that happened to run beside it completed
    await _assert_poison_dead(chaos, created[0].id, died)
    workers[0].send(signal.SIGTERM)
    assert await workers[0].wait(10 + SLACK) == 0, workers[0].output()
    for task in created[1:]:
        stored = await chaos.service.get_task(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.COMPLETED, (stored.status, stored.error)


# -- 3. SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_sigterm_lets_running_tasks_finish_and_leaves_the_rest_queued(
    make_chaos: Callable[..., Chaos],
) -> None:
    chaos = make_chaos(60.0)
    # Given one worker running two 1 s tasks, with four more queued
    created = await chaos.service.add_tasks([("sleep", {"seconds": 1.0})] * 6)
    worker = chaos.start_worker("-c", "2", "--shutdown-timeout", "10")
    running = {entry.task_id for entry in await chaos.wait_for_starts(2, STARTUP_SECONDS)}

    # When it gets SIGTERM
    stopped_at = time.monotonic()
    worker.send(signal.SIGTERM)

    # Then it exits 0 once the two tasks are done, well before the 10 s timeout
    assert await worker.wait(10 + SLACK) == 0, worker.output()
    assert time.monotonic() - stopped_at < 1.0 + SLACK
    assert len(running) == 2
    for task in created:
        stored = await chaos.service.get_task(task.id)
        assert stored is not None
        if task.id in running:
            assert (stored.status, stored.attempts) == (TaskStatus.COMPLETED, 1)
        else:
            assert (stored.status, stored.attempts) == (TaskStatus.PENDING, 0)
    counts = await chaos.counts()
    assert (counts[TaskStatus.PENDING], counts[TaskStatus.PROCESSING]) == (4, 0)


@pytest.mark.timeout(60)
async def test_sigterm_hands_tasks_still_running_after_the_timeout_back_at_once(
    make_chaos: Callable[..., Chaos],
) -> None:
    # A 60 s lease: only the worker itself can have put the tasks back within the test
    chaos = make_chaos(60.0)
    # Given one worker running two 30 s tasks, with two more queued
    created = await chaos.service.add_tasks([("sleep", {"seconds": 30.0})] * 4)
    worker = chaos.start_worker("-c", "2", "--shutdown-timeout", "0.2")
    running = {entry.task_id for entry in await chaos.wait_for_starts(2, STARTUP_SECONDS)}

    # When it gets SIGTERM
    stopped_at = time.monotonic()
    worker.send(signal.SIGTERM)

    # Then it exits 0 after the 0.2 s timeout, and the two tasks are PENDING again already
    assert await worker.wait(0.2 + SLACK) == 0, worker.output()
    assert time.monotonic() - stopped_at < 0.2 + SLACK
    stored = {task.id: await chaos.service.get_task(task.id) for task in created}
    counts = await chaos.counts()
    assert (counts[TaskStatus.PENDING], counts[TaskStatus.PROCESSING]) == (4, 0)
    assert len(running) == 2
    for task in stored.values():
        assert task is not None
        assert task.status is TaskStatus.PENDING
        assert task.claim_token is None
        # The two running ones were handed back: an interrupted attempt does not count.
        assert task.attempts == 0
    assert not [entry for entry in await chaos.ledger() if entry.event != "start"]


# -- 4. CLI basics ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_burst_exits_0_once_the_queue_is_empty(make_chaos: Callable[..., Chaos]) -> None:
    chaos = make_chaos(10.0)
    await chaos.service.add_tasks([("chaos", {"n": n}) for n in range(200)])

    worker = chaos.start_worker("-c", "4", "--burst")

    assert await worker.wait(STARTUP_SECONDS + SLACK) == 0, worker.output()
    assert _is_clean(await chaos.counts(), 200)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("nosuchmodule:x", "cannot import 'nosuchmodule'"),
        ("tests.integration.chaos_app:not_there", "'tests.integration.chaos_app' has no attribute"),
        ("tests.integration.chaos_app", "expected module:attribute"),
    ],
)
def test_a_bad_app_exits_non_zero_with_a_clear_message(
    make_chaos: Callable[..., Chaos], app: str, message: str
) -> None:
    chaos = make_chaos(10.0)

    finished = chaos.workers.run(app, timeout=STARTUP_SECONDS)

    assert finished.returncode == 2
    assert f"Invalid value for APP: {message}" in finished.stderr
    assert "Traceback" not in finished.stderr


@pytest.mark.timeout(60)
def test_the_banner_shows_the_setup_with_the_password_masked(
    make_chaos: Callable[..., Chaos], redis_url: str
) -> None:
    chaos = make_chaos(10.0)
    parts = urlsplit(redis_url)
    secret_url = urlunsplit(parts._replace(netloc=f":s3cret@{parts.hostname}:{parts.port or 6379}"))

    worker = chaos.workers.start_piped(
        "tests.integration.chaos_app:make_service",
        "--broker",
        secret_url,
        "--queue",
        chaos.queue,
        "-c",
        "3",
    )
    assert worker.stderr is not None
    banner = read_until(worker.stderr, b"tasks:", STARTUP_SECONDS).decode()
    banner += read_until(worker.stderr, b"\n", SLACK).decode()
    worker.kill()

    masked = secret_url.replace(":s3cret@", ":***@")
    assert re.search(rf"^katana {re.escape(__version__)} worker on ", banner, re.MULTILINE)
    assert "s3cret" not in banner
    assert re.search(
        rf"broker: +RedisBroker {re.escape(masked)} \(from --broker\)$", banner, re.MULTILINE
    ), banner
    assert re.search(rf"queue: +{chaos.queue} \(from --queue\)$", banner, re.MULTILINE), banner
    assert re.search(r"processes: +1 x concurrency 3$", banner, re.MULTILINE), banner
    assert re.search(r"tasks: +block, chaos, poison, sleep$", banner, re.MULTILINE), banner


@pytest.mark.timeout(90)
async def test_two_processes_drain_the_queue_together_in_burst_mode(
    make_chaos: Callable[..., Chaos],
) -> None:
    chaos = make_chaos(10.0)
    # Given 80 tasks of 0.1 s: 4 s for one process at concurrency 2, so both get some
    await chaos.service.add_tasks([("sleep", {"seconds": 0.1})] * 80)

    parent = chaos.start_worker("-p", "2", "-c", "2", "--burst")

    assert await parent.wait(2 * STARTUP_SECONDS + SLACK) == 0, parent.output()
    assert _is_clean(await chaos.counts(), 80)
    pids = {entry.pid for entry in await chaos.ledger() if entry.event == "start"}
    assert len(pids) == 2
    assert parent.pid not in pids


def _runs(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody has reaped yet does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.timeout(90)
async def test_the_children_of_a_sigkilled_parent_stop_and_hand_their_tasks_back(
    make_chaos: Callable[..., Chaos],
) -> None:
    # A 60 s lease: only the children themselves can have put the tasks back within the test
    chaos = make_chaos(60.0)
    # Given `-p 2 -c 1` running two 30 s tasks, one in each child
    created = await chaos.service.add_tasks([("sleep", {"seconds": 30.0})] * 2)
    parent = chaos.start_worker("-p", "2", "-c", "1", "--shutdown-timeout", "0.2")
    starts = await chaos.wait_for_starts(2, 2 * STARTUP_SECONDS)
    children = {entry.pid for entry in starts}
    assert len(children) == 2
    assert parent.pid not in children

    # When the parent is killed with SIGKILL (it cannot pass anything on)
    parent.send(signal.SIGKILL)
    await parent.wait(SLACK)

    # Then both children exit, and the two tasks are PENDING again, not left to their lease
    async def children_gone() -> bool:
        return not any(_runs(pid) for pid in children)

    await wait_until(children_gone, 0.2 + SLACK, "the orphaned children to exit")
    counts = await chaos.counts()
    assert (counts[TaskStatus.PENDING], counts[TaskStatus.PROCESSING]) == (2, 0)
    for task in created:
        stored = await chaos.service.get_task(task.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.claim_token) == (TaskStatus.PENDING, 0, None)


# -- cancellation across processes -----------------------------------------------------------


@pytest.mark.timeout(90)
async def test_cancelling_a_task_running_in_another_process_stops_it(
    make_chaos: Callable[..., Chaos],
) -> None:
    # Given a 30 s task, with retries to spare, running in a CLI worker process
    chaos = make_chaos(5.0)
    worker = chaos.start_worker("-c", "2")
    task = await chaos.service.add_task("sleep", {"seconds": 30}, max_retries=3)
    await chaos.wait_for_starts(1, STARTUP_SECONDS)

    # When this process cancels it
    loop = asyncio.get_running_loop()
    asked = loop.time()
    assert await chaos.service.cancel(task.id) is True

    # Then it stops within about a second and ends CANCELLED, not FAILED, and is not retried
    with pytest.raises(TaskCancelledError):
        await chaos.service.wait_for(task.id, timeout=SLACK)
    assert loop.time() - asked < 2.0
    stored = await chaos.service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.error) == (TaskStatus.CANCELLED, 1, None)
    assert [entry.event for entry in await chaos.ledger() if entry.task_id == task.id] == ["start"]
    # ...cancelling again changes nothing, and the worker goes on with other tasks
    assert await chaos.service.cancel(task.id) is False
    after = await chaos.service.add_task("chaos")
    assert await chaos.service.wait_for(after.id, timeout=STARTUP_SECONDS) is None
    assert worker.alive()


# -- 5. Orphans: the tasks of a process that is gone ---------------------------------------------

#: The promise: with default settings, a killed process's tasks run again within this.
ORPHAN_RERUN_SECONDS = 5.0
#: RedisBroker's default lease (its heartbeat is a third of it, also the default).
DEFAULT_LEASE = 30.0


async def _wait_for_start(
    chaos: Chaos, task_id: str, *, other_than: int, timeout: float
) -> LedgerEntry:
    """The first start of ``task_id`` in a process other than ``other_than``."""

    def elsewhere(entries: list[LedgerEntry]) -> list[LedgerEntry]:
        return [
            e for e in entries if (e.event, e.task_id) == ("start", task_id) and e.pid != other_than
        ]

    async def started() -> bool:
        return bool(elsewhere(await chaos.ledger()))

    await wait_until(started, timeout, f"task {task_id} to start outside process {other_than}")
    return elsewhere(await chaos.ledger())[0]


async def _start_consuming_worker(chaos: Chaos, busy: WorkerProcess) -> WorkerProcess:
    """A second worker, known to consume: it ran a task while ``busy`` had no worker free."""
    worker = chaos.start_worker("-c", "1")
    probe = await chaos.service.add_task("chaos")
    start = await _wait_for_start(chaos, probe.id, other_than=busy.pid, timeout=STARTUP_SECONDS)
    assert start.pid == worker.pid
    return worker


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["redis", "sqlite"])
async def test_a_killed_processs_task_runs_again_within_5_s_with_default_settings(
    make_chaos: Callable[..., Chaos], record_property: Callable[[str, object], None], backend: str
) -> None:
    # (SqliteBroker's default lease is 30 s too; it finds a dead process by its wake socket.)
    chaos = make_chaos(DEFAULT_LEASE, backend=backend)
    # Given a worker process running a 60 s task under the default 30 s lease, and another one
    victim = chaos.start_worker("-c", "1")
    task = await chaos.service.add_task("sleep", {"seconds": 60})
    (first,) = await chaos.wait_for_starts(1, STARTUP_SECONDS)
    assert first.pid == victim.pid
    survivor = await _start_consuming_worker(chaos, victim)

    # When the first one is killed with SIGKILL
    killed_at = time.time()
    victim.send(signal.SIGKILL)
    assert await victim.wait(SLACK) == -signal.SIGKILL

    # Then the task starts again in the other process within 5 s of the kill, as its second
    # attempt (waiting a little longer, so that a late start fails on the measured delay)
    again = await _wait_for_start(
        chaos, task.id, other_than=victim.pid, timeout=ORPHAN_RERUN_SECONDS + SLACK
    )
    delay = again.time - killed_at
    record_property("orphan_rerun_seconds", round(delay, 3))
    assert again.pid == survivor.pid
    assert 0 < delay <= ORPHAN_RERUN_SECONDS, f"ran again {delay:.2f}s after the kill"
    stored = await chaos.service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.PROCESSING, 2)
    # And `katana task` tells the operator why a task with no retries runs a second time
    shown = chaos.workers.run_admin(
        "task", task.id, "--app", "tests.integration.chaos_app:make_service", timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    assert "attempts:   2 (1 allowed by retries; 1 more after a lost worker)" in shown.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("executor", "lease_seconds"),
    [
        # Awaits 8 s: past the 3 s liveness mark and four 2 s leases, renewed by heartbeats.
        ("sleep", 2.0),
        # Blocks its event loop 8 s (CPU work in an async def): the liveness mark, refreshed
        # from a thread, keeps the claim; only the lease, renewed by the loop, could lose it.
        ("block", DEFAULT_LEASE),
    ],
)
async def test_a_live_processs_long_task_is_not_run_again(
    make_chaos: Callable[..., Chaos], executor: str, lease_seconds: float
) -> None:
    chaos = make_chaos(lease_seconds)
    # Given a worker process running an 8 s task, and another worker process waiting for work
    runner = chaos.start_worker("-c", "1")
    task = await chaos.service.add_task(executor, {"seconds": 8})
    (first,) = await chaos.wait_for_starts(1, STARTUP_SECONDS)
    assert first.pid == runner.pid
    await _start_consuming_worker(chaos, runner)

    # When the task finishes
    assert await chaos.service.wait_for(task.id, timeout=8 + STARTUP_SECONDS) is None

    # Then it ran once, in the first process, and that process's completion was recorded
    # (the worker notes the "ack" in the ledger just after Redis confirmed the completion)
    async def acknowledged() -> bool:
        return any(e.event == "ack" and e.task_id == task.id for e in await chaos.ledger())

    await wait_until(acknowledged, SLACK, f"the completion of {task.id} in the ledger")
    runs = [(e.event, e.pid) for e in await chaos.ledger() if e.task_id == task.id]
    assert runs == [("start", runner.pid), ("done", runner.pid), ("ack", runner.pid)]
    stored = await chaos.service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.COMPLETED, 1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("backend", "lease_seconds"),
    [
        ("redis", DEFAULT_LEASE),
        # A frozen process's wake socket still takes datagrams: SqliteBroker cannot tell it
        # from a live one, so its tasks come back when its lease expires (2 s here).
        ("sqlite", 2.0),
    ],
)
async def test_a_frozen_processs_task_runs_elsewhere_and_its_late_outcome_is_rejected(
    make_chaos: Callable[..., Chaos], backend: str, lease_seconds: float
) -> None:
    chaos = make_chaos(lease_seconds, backend=backend)
    # Given a worker process running a 3 s task, and another worker process
    frozen = chaos.start_worker("-c", "1")
    task = await chaos.service.add_task("sleep", {"seconds": 3})
    (first,) = await chaos.wait_for_starts(1, STARTUP_SECONDS)
    assert first.pid == frozen.pid
    survivor = await _start_consuming_worker(chaos, frozen)

    # When the first one is frozen with SIGSTOP until the task runs again in the other one,
    # then thawed: its task's sleep is over, so it finishes at once
    frozen_at = time.time()
    frozen.send(signal.SIGSTOP)
    try:
        again = await _wait_for_start(
            chaos, task.id, other_than=frozen.pid, timeout=ORPHAN_RERUN_SECONDS + SLACK
        )
    finally:
        frozen.send(signal.SIGCONT)
    assert again.time - frozen_at <= ORPHAN_RERUN_SECONDS
    assert await chaos.service.wait_for(task.id, timeout=3 + SLACK) is None

    # Then only the second run's completion was recorded: the first process's claim was taken
    # back, so its late completion was refused
    runs = [(e.event, e.pid) for e in await chaos.ledger() if e.task_id == task.id]
    if backend == "redis":
        assert ("done", frozen.pid) in runs
    # (SqliteBroker's heartbeat, due as early as the run's end once thawed, may find the claim
    # lost first and stop the run: then there is no late outcome, which is fine too.)
    assert [pid for event, pid in runs if event == "ack"] == [survivor.pid]
    stored = await chaos.service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.COMPLETED, 2)
    assert frozen.alive()

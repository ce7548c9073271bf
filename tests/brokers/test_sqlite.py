"""SqliteBroker: the shared conformance suite, then what only a file shared by processes shows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker import sqlite as sqlite_module
from katana.task_queue.broker._sqlite_wake import wake_folder
from katana.task_queue.broker.sql import SCHEMA_VERSION
from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.listing import TaskQuery
from katana.task_queue.models import TaskStatus
from katana.task_queue.testing import BrokerContract
from katana.task_queue.testing._support import make_task, wait_for_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from katana.task_queue.broker._sqlite_file import Durability
    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.models import Task

#: The child is run as ``tests.brokers._sqlite_child`` from the repository root.
REPO_ROOT = Path(__file__).resolve().parents[2]


class TestSqliteBroker(BrokerContract):
    lease_seconds = 1.0

    @pytest.fixture
    async def broker(self, tmp_path: Path) -> AsyncIterator[SqliteBroker]:
        broker = SqliteBroker(tmp_path / "katana.db", lease_seconds=self.lease_seconds)
        await broker.connect()
        try:
            yield broker
        finally:
            await broker.close()

    async def stop_renewing(self, broker: AbstractBroker, task: Task) -> None:
        # The heartbeat renews exactly the claims this registry lists.
        assert isinstance(broker, SqliteBroker)
        broker._held.pop(task.id, None)


# -- SqliteBroker only: several brokers and processes on one file ------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "katana.db"


class Child:
    """A ``_sqlite_child`` process: its lines, read with a deadline; killed at the end."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self, timeout: float = 10.0) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            raw = await self.process.stdout.readline()
        assert raw, f"the child exited ({await self.process.wait()})"
        return raw.decode().strip()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


@pytest.fixture
async def children() -> AsyncIterator[Callable[..., Awaitable[Child]]]:
    started: list[Child] = []

    async def start(*args: str) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.brokers._sqlite_child",
            *args,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        child = Child(process)
        started.append(child)
        assert await child.line() == "ready"
        return child

    yield start
    for child in started:
        child.kill()
        await child.process.wait()


async def test_two_brokers_on_one_file_hand_each_task_out_once(db: Path) -> None:
    # Given two brokers on one file, four consumers on each
    async with SqliteBroker(db) as first, SqliteBroker(db) as second:
        received: list[str] = []
        tasks = [make_task(payload={"n": n}) for n in range(200)]
        done = asyncio.Event()

        async def consume(broker: SqliteBroker) -> None:
            while True:
                task = await broker.dequeue()
                assert task is not None
                received.append(task.id)
                if len(received) == len(tasks):
                    done.set()

        consumers = [asyncio.create_task(consume(b)) for b in (first, second) * 4]
        # When 200 tasks arrive through both
        await first.enqueue_many(tasks[:100])
        for task in tasks[100:]:
            await second.enqueue(task)
        try:
            await wait_for_event(done, consumers, 20)
        finally:
            for consumer in consumers:
                consumer.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)

        # Then each was handed out exactly once
        assert Counter(received) == Counter(task.id for task in tasks)
        assert (await first.count_by_status())[TaskStatus.PROCESSING] == 200


async def test_a_frozen_brokers_late_outcome_is_fenced_out(db: Path) -> None:
    # Given a task claimed by a broker that then froze (it renews nothing)
    async with (
        SqliteBroker(db, lease_seconds=0.3) as frozen,
        SqliteBroker(db, lease_seconds=0.3, heartbeat_seconds=0.05) as live,
    ):
        await frozen.enqueue(make_task())
        claimed = await frozen.dequeue(timeout=0)
        assert claimed is not None
        frozen._held.clear()

        # When its lease expires, Then the other broker's heartbeat gives the task back to it
        again = await live.dequeue(timeout=10)
        assert again is not None
        assert (again.id, again.attempts) == (claimed.id, 2)

        # And the frozen broker's late outcome is refused; the new owner's counts
        assert not await frozen.mark_complete(claimed.id, "late", claim_token=claimed.claim_token)
        assert await live.mark_complete(again.id, "on time", claim_token=again.claim_token)
        stored = await live.get_task(again.id)
        assert stored is not None
        assert (stored.status, stored.result) == (TaskStatus.COMPLETED, "on time")


async def test_a_killed_process_tasks_come_back_and_its_late_outcome_is_fenced(
    db: Path, children: Callable[..., Awaitable[Child]]
) -> None:
    # Given a task held by another process
    async with SqliteBroker(db, lease_seconds=0.5, heartbeat_seconds=0.1) as broker:
        child = await children("hold", str(db), "0.5")
        assert await child.line() == "asleep"
        await broker.enqueue(make_task())
        _, task_id, token = (await child.line()).split()

        # When that process is killed with SIGKILL
        child.kill()
        await child.process.wait()

        # Then the task comes back here once its lease expired, as a second attempt
        again = await broker.dequeue(timeout=10)
        assert again is not None
        assert (again.id, again.attempts) == (task_id, 2)
        # and an outcome under the dead process's claim changes nothing
        assert not await broker.mark_complete(task_id, "late", claim_token=token)
        assert await broker.mark_complete(task_id, "ok", claim_token=again.claim_token)


async def test_each_task_goes_to_exactly_one_of_two_processes(
    db: Path, children: Callable[..., Awaitable[Child]]
) -> None:
    # Given a consuming process, and consumers here too
    async with SqliteBroker(db) as broker:
        child = await children("consume", str(db))
        tasks = [make_task(payload={"n": n}) for n in range(100)]
        here: list[str] = []
        there: list[str] = []
        all_done = asyncio.Event()

        def count() -> None:
            if len(here) + len(there) >= len(tasks):
                all_done.set()

        async def consume() -> None:
            while True:
                task = await broker.dequeue()
                assert task is not None
                await broker.mark_complete(task.id, None, claim_token=task.claim_token)
                here.append(task.id)
                count()

        async def listen() -> None:
            while True:
                there.append((await child.line(timeout=60)).removeprefix("done "))
                count()

        helpers = [asyncio.create_task(consume()) for _ in range(2)]
        helpers.append(asyncio.create_task(listen()))
        try:
            # When 100 tasks arrive
            for task in tasks:
                await broker.enqueue(task)
            await wait_for_event(all_done, helpers, 30)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

        # Then all completed, each in one process only
        assert Counter(here + there) == Counter(task.id for task in tasks)
        assert (await broker.count_by_status())[TaskStatus.COMPLETED] == len(tasks)


async def test_a_task_enqueued_in_another_process_wakes_a_waiting_dequeue(
    db: Path, children: Callable[..., Awaitable[Child]]
) -> None:
    # Given a process waiting in dequeue, whose safety look is an hour away
    child = await children("hold", str(db))
    assert await child.line() == "asleep"

    # When a task is enqueued here
    task = make_task()
    async with SqliteBroker(db) as broker:
        await broker.enqueue(task)

        # Then its wake-up brings the task to it at once
        assert (await child.line(timeout=5)).split()[:2] == ["claimed", task.id]


async def test_cancelling_a_task_running_in_another_process_tells_that_process(
    db: Path, children: Callable[..., Awaitable[Child]]
) -> None:
    # Given a task running in another process
    child = await children("hold", str(db))
    assert await child.line() == "asleep"
    async with SqliteBroker(db) as broker:
        await broker.enqueue(make_task())
        _, task_id, _ = (await child.line()).split()

        # When it is cancelled here
        assert await broker.cancel(task_id)

        # Then that process's cancel listeners hear of it
        assert await child.line(timeout=5) == f"cancel {task_id}"


async def test_a_waiting_dequeue_is_woken_by_another_broker_on_the_file(db: Path) -> None:
    # Given a consumer whose safety look is an hour away
    async with (
        SqliteBroker(db, safety_look_seconds=3600) as waiting,
        SqliteBroker(db) as other,
    ):
        asleep = asyncio.Event()
        sleep = waiting._sleep

        async def sleep_and_tell(next_due_us: int | None, seen_version: int | None) -> None:
            asleep.set()
            await sleep(next_due_us, seen_version)

        waiting._sleep = sleep_and_tell  # type: ignore[method-assign]  # the test's probe
        consumer = asyncio.create_task(waiting.dequeue())
        await wait_for_event(asleep, [consumer], 10)

        # When another broker on the file enqueues
        task = make_task()
        await other.enqueue(task)

        # Then the datagram wakes the consumer
        async with asyncio.timeout(5):
            claimed = await consumer
        assert claimed is not None
        assert claimed.id == task.id


async def test_every_acknowledged_task_survives_a_killed_producer(
    db: Path, children: Callable[..., Awaitable[Child]]
) -> None:
    # Given a process adding tasks as fast as it can
    child = await children("produce", str(db))
    acknowledged = [(await child.line()).removeprefix("added ") for _ in range(50)]

    # When it is killed with SIGKILL in the middle of its work
    child.kill()
    await child.process.wait()
    assert child.process.stdout is not None
    rest = (await child.process.stdout.read()).decode().split()
    acknowledged += [word for word in rest if word != "added"]

    # Then every task it was told was stored is there (a last line may be cut short)
    async with SqliteBroker(db) as broker:
        missing = [
            task_id
            for task_id in acknowledged
            if len(task_id) == 32 and await broker.get_task(task_id) is None
        ]
        assert missing == []
        assert (await broker.count_by_status())[TaskStatus.PENDING] >= len(acknowledged) - 1


@pytest.mark.parametrize(("durability", "synchronous"), [("full", 2), ("fast", 1)])
async def test_durability_sets_how_commits_reach_the_disk(
    db: Path, durability: Durability, synchronous: int
) -> None:
    async with SqliteBroker(db, durability=durability) as broker:
        loop = asyncio.get_running_loop()
        setting = await loop.run_in_executor(broker._executor, _pragma, broker, "synchronous")

    assert setting == synchronous  # 2 is FULL, 1 NORMAL
    with contextlib.closing(sqlite3.connect(db)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _pragma(broker: SqliteBroker, name: str) -> object:
    return broker._db._connected().execute(f"PRAGMA {name}").fetchone()[0]


def test_an_unknown_durability_is_refused(db: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        SqliteBroker(db, durability="sometimes")  # type: ignore[arg-type]  # on purpose


async def test_brokers_starting_together_on_a_new_file_migrate_it_once(db: Path) -> None:
    brokers = [SqliteBroker(db) for _ in range(8)]
    try:
        await asyncio.gather(*(broker.connect() for broker in brokers))
    finally:
        for broker in brokers:
            await broker.close()

    with contextlib.closing(sqlite3.connect(db)) as raw:
        versions = [row[0] for row in raw.execute("SELECT version FROM katana_schema")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_a_killed_process_tasks_come_back_long_before_its_leases_expire(
    db: Path, children: Callable[..., Awaitable[Child]]
) -> None:
    # Given a task held by another process under a lease of a minute
    async with SqliteBroker(db, lease_seconds=60) as broker:
        child = await children("hold", str(db), "60")
        assert await child.line() == "asleep"
        await broker.enqueue(make_task())
        _, task_id, token = (await child.line()).split()

        # When that process is killed with SIGKILL
        child.kill()
        await child.process.wait()

        # Then its wake-up socket refuses the next presence probe, and the task is back in
        # seconds, not a minute
        again = await broker.dequeue(timeout=10)
        assert again is not None
        assert (again.id, again.attempts) == (task_id, 2)
        assert not await broker.mark_complete(task_id, "late", claim_token=token)
        # and the dead process's socket is gone, its claims recovered
        assert not any(name.startswith(f"{child.process.pid}-") for name in _sockets(db))


async def test_a_live_process_keeps_its_tasks(
    db: Path, children: Callable[..., Awaitable[Child]]
) -> None:
    # Given a task held by another process that is alive, under a lease of a minute
    async with SqliteBroker(db, lease_seconds=60, heartbeat_seconds=0.1) as broker:
        child = await children("hold", str(db), "60")
        assert await child.line() == "asleep"
        await broker.enqueue(make_task())
        _, task_id, token = (await child.line()).split()

        # When this process's heartbeat and presence look run several times
        for _ in range(3):
            await broker.heartbeat(broker._dead_owners())

        # Then the task stays with its owner
        stored = await broker.get_task(task_id)
        assert stored is not None
        assert (stored.status, stored.claim_token) == (TaskStatus.PROCESSING, token)


def _sockets(db: Path) -> list[str]:
    return os.listdir(wake_folder(str(db)))


async def test_a_write_that_ends_after_close_leaves_no_socket_open(db: Path) -> None:
    # Given a write that wakes consumers (a resume) held up in the broker's thread; not an
    # enqueue: close() waits for the enqueues already made
    broker = SqliteBroker(db)
    await broker.connect()
    gate = threading.Event()
    broker._executor.submit(gate.wait)
    adding = asyncio.create_task(broker.set_paused(False))

    # When the broker closes meanwhile, and only then the enqueue ends
    closing = asyncio.create_task(broker.close())
    for _ in range(100):
        if broker._closed:
            break
        await asyncio.sleep(0)
    assert broker._closed
    gate.set()
    async with asyncio.timeout(10):
        await adding
        await closing

    # Then its wake-up was not sent through a socket opened after close (and never closed)
    assert broker._wakes._sender is None


async def test_wait_finished_is_woken_by_a_finish_in_the_same_process(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker that would look again only after an hour
    monkeypatch.setattr(sqlite_module, "_FINISH_LOOK_FIRST_SECONDS", 3600.0)
    async with SqliteBroker(db) as broker:
        await broker.enqueue(make_task())
        claimed = await broker.dequeue(timeout=0)
        assert claimed is not None
        looked = asyncio.Event()
        get_task = broker.get_task

        async def get_task_and_tell(task_id: str) -> Task | None:
            task = await get_task(task_id)
            looked.set()  # from here the waiter parks without another await
            return task

        broker.get_task = get_task_and_tell  # type: ignore[method-assign]  # the test's probe
        waiting = asyncio.create_task(broker.wait_finished(claimed.id))
        await wait_for_event(looked, [waiting], 10)
        await asyncio.sleep(0)
        assert not waiting.done()

        # When the task completes here
        assert await broker.mark_complete(claimed.id, "ok", claim_token=claimed.claim_token)

        # Then the waiter has it at once, not an hour later
        async with asyncio.timeout(5):
            finished = await waiting
        assert finished is not None
        assert (finished.status, finished.result) == (TaskStatus.COMPLETED, "ok")


async def test_listing_counts_only_the_tasks_it_can_show(db: Path) -> None:
    # Given one good task and one whose row holds garbage
    good, bad = make_task(), make_task()
    async with SqliteBroker(db) as broker:
        await broker.enqueue_many([good, bad])
        with contextlib.closing(sqlite3.connect(db)) as raw:
            raw.execute("UPDATE katana_tasks SET payload = 'not json' WHERE id = ?", (bad.id,))
            raw.commit()

        # When every task is listed
        page = await broker.list_tasks(TaskQuery())

    # Then the total counts the task the page shows, no more (and the listing does not fail)
    assert (page.total, [task.id for task in page.tasks]) == (1, [good.id])

"""A worker that learns it lost its claim (SqliteBroker's heartbeat or a progress report) stops
the executor at once, as with RedisBroker (test_redis_lost_claim.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.context import report_progress
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService
from katana.task_queue.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

GUARD_SECONDS = 30.0
PROMPT_SECONDS = 5.0
LEASE_SECONDS = 30.0


class Stuck:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def run(self, task: Task) -> str:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            self.stopped.set()
        return "the first owner's result"

    async def quick(self, task: Task) -> str:
        return "quick"


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(start=time.time())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "katana.db"


@pytest.fixture
async def broker(path: Path, fake_clock: FakeClock) -> AsyncIterator[SqliteBroker]:
    # The heartbeat never runs by itself here: the test calls heartbeat() when it wants.
    async with SqliteBroker(
        path, lease_seconds=LEASE_SECONDS, heartbeat_seconds=3600, clock=fake_clock
    ) as broker:
        yield broker


def _change_row(path: Path, sql: str, task_id: str) -> None:
    """Change the task's row behind the broker's back, as another program could."""
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute(sql, (task_id,))
    finally:
        connection.close()


@pytest.fixture
async def running(
    broker: SqliteBroker, fake_clock: FakeClock
) -> AsyncIterator[tuple[TaskQueueService, Stuck, Task]]:
    stuck = Stuck()
    service = TaskQueueService(
        broker=broker, task_executors={"stuck": stuck.run, "quick": stuck.quick}, clock=fake_clock
    )
    task = await service.add_task("stuck")
    service.start_workers(1)
    await asyncio.wait_for(stuck.started.wait(), GUARD_SECONDS)
    yield service, stuck, task
    await service.shutdown(timeout=1)


async def test_a_claim_taken_over_after_lease_expiry_stops_the_executor(
    running: tuple[TaskQueueService, Stuck, Task],
    broker: SqliteBroker,
    path: Path,
    fake_clock: FakeClock,
) -> None:
    service, stuck, task = running
    # Given the running task's lease expired and another process took it over
    fake_clock.advance(LEASE_SECONDS + 1)
    async with SqliteBroker(path, heartbeat_seconds=3600, clock=fake_clock) as other:
        await other.heartbeat()  # recovers the expired lease
        taken = await other.dequeue(timeout=0)
        assert taken is not None
        assert taken.id == task.id

        # When the first process's heartbeat finds out
        await broker.heartbeat()

        # Then its executor is stopped at once, and nothing it did is recorded
        await asyncio.wait_for(stuck.stopped.wait(), PROMPT_SECONDS)
        assert await other.mark_complete(task.id, "new owner", claim_token=taken.claim_token)
    stored = await service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.result) == (TaskStatus.COMPLETED, "new owner")

    # And its worker goes on with the next task
    after = await service.add_task("quick")
    assert await service.wait_for(after.id, timeout=GUARD_SECONDS) == "quick"


async def test_a_claim_lost_to_an_overwritten_row_stops_the_executor(
    running: tuple[TaskQueueService, Stuck, Task], broker: SqliteBroker, path: Path
) -> None:
    service, stuck, task = running
    # Given the running task's row was changed under the worker (its claim overwritten)
    _change_row(path, "UPDATE katana_tasks SET claim_token = 'someone-else' WHERE id = ?", task.id)

    # When the heartbeat finds out, Then the executor is stopped at once
    await broker.heartbeat()
    await asyncio.wait_for(stuck.stopped.wait(), PROMPT_SECONDS)
    stored = await service.get_task(task.id)
    assert stored is not None
    assert (stored.status, stored.claim_token) == (TaskStatus.PROCESSING, "someone-else")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE katana_tasks SET claim_token = 'someone-else' WHERE id = ?",
        "DELETE FROM katana_tasks WHERE id = ?",
    ],
    ids=["overwritten", "deleted"],
)
async def test_report_progress_finding_the_claim_lost_stops_the_executor(
    broker: SqliteBroker, path: Path, fake_clock: FakeClock, sql: str
) -> None:
    reporting, stopped = asyncio.Event(), asyncio.Event()
    gate = asyncio.Event()

    async def reporter(task: Task) -> None:
        try:
            while True:
                # It carries on whatever the report says (False, or KeyError once deleted).
                with contextlib.suppress(KeyError):
                    await report_progress(0.5)
                reporting.set()
                await gate.wait()
                gate.clear()
        finally:
            stopped.set()

    service = TaskQueueService(broker=broker, task_executors={"r": reporter}, clock=fake_clock)
    task = await service.add_task("r")
    service.start_workers(1)
    try:
        await asyncio.wait_for(reporting.wait(), GUARD_SECONDS)
        # Given the running task's row changed under the worker (or was deleted)
        _change_row(path, sql, task.id)

        # When its next progress report finds out (no heartbeat runs here)
        gate.set()

        # Then the executor is stopped at once
        await asyncio.wait_for(stopped.wait(), PROMPT_SECONDS)
    finally:
        await service.shutdown(timeout=1)

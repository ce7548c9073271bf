"""`katana worker` stops on SIGTERM even while an executor ignores its cancellation."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import pytest

from katana.task_queue._worker import CANCEL_GRACE_SECONDS
from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.models import Task, TaskStatus

from ._processes import WorkerProcesses, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SHUTDOWN_TIMEOUT = 1.0
#: Room for the process to shut down its loop and exit, beyond what Katana promises.
SLACK_SECONDS = 3.0


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[WorkerProcesses]:
    started = WorkerProcesses(tmp_path, {})
    yield started
    started.stop_all()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_the_worker_exits_0_after_a_signal_and_hands_the_stuck_task_back(
    tmp_path: Path, processes: WorkerProcesses, signum: signal.Signals
) -> None:
    # Given a worker on a SQLite file running a task whose executor swallows every cancel
    path = tmp_path / "katana.db"
    task = Task(name="forever")
    async with SqliteBroker(path) as broker:
        await broker.enqueue(task)
        worker = processes.start(
            "--broker", f"sqlite:///{path}", "-c", "2",
            "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
            app="tests.integration.zombie_app:service",
        )  # fmt: skip

        async def running() -> bool:
            stored = await broker.get_task(task.id)
            return stored is not None and stored.status is TaskStatus.PROCESSING

        await wait_until(running, 20, "the task to run")

        # When the worker is told to stop
        sent = time.monotonic()
        worker.send(signum)

        # Then it exits 0 within its shutdown timeout plus the grace
        code = await worker.wait(SHUTDOWN_TIMEOUT + CANCEL_GRACE_SECONDS + SLACK_SECONDS)
        assert code == 0, worker.output()
        assert time.monotonic() - sent < SHUTDOWN_TIMEOUT + CANCEL_GRACE_SECONDS + SLACK_SECONDS
        # And the task is PENDING again, for another worker to run, and it says why
        stored = await broker.get_task(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.PENDING
        output = worker.output()
        assert "ignored its cancellation" in output
        assert "Traceback" not in output

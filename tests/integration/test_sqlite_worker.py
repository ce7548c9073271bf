"""`katana worker --broker sqlite:///...`: a worker process on a SQLite file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import TYPE_CHECKING

from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.models import Task, TaskStatus

from ._processes import REPO_ROOT

if TYPE_CHECKING:
    from pathlib import Path


def _worker(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "katana.task_queue.cli", "worker",
         "tests.integration.admin_app:seeded", "--broker", url, "--burst"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def _statuses(path: Path, tasks: list[Task]) -> list[TaskStatus]:
    async with SqliteBroker(path) as broker:
        stored = [await broker.get_task(task.id) for task in tasks]
    return [task.status for task in stored if task is not None]


def test_a_burst_worker_runs_the_tasks_stored_in_a_sqlite_file(tmp_path: Path) -> None:
    # Given a SQLite file holding a task that succeeds and one that fails
    path = tmp_path / "katana.db"
    tasks = [Task(name="send_email", payload={"to": "ann@example.com"}), Task(name="fail")]

    async def store() -> None:
        async with SqliteBroker(path) as broker:
            await broker.enqueue_many(tasks)

    asyncio.run(store())

    # When a burst worker runs on it (an absolute path: four slashes)
    done = _worker(f"sqlite:///{path}")

    # Then it ran both, and says which broker it used
    assert done.returncode == 0, done.stderr
    assert f"SqliteBroker sqlite:///{path}" in done.stderr
    statuses = asyncio.run(_statuses(path, tasks))
    assert statuses == [TaskStatus.COMPLETED, TaskStatus.FAILED]


def test_a_file_that_is_not_a_database_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("my notes\n")

    done = _worker(f"sqlite:///{path}")

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"Error: {path} is not a SQLite database; Katana leaves it alone"
    )
    assert path.read_text() == "my notes\n"


def test_a_sqlite_url_without_a_path_is_a_usage_error() -> None:
    done = _worker("sqlite://")

    assert done.returncode == 2
    assert (
        "Error: invalid SQLite URL 'sqlite://': expected sqlite:///<path>[?durability=full|fast]"
        in done.stderr.splitlines()
    )

"""`katana worker --broker sqlite:///...`: a worker process on a SQLite file; the admin commands
on a file Katana may not use."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.cli import main
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


@pytest.mark.parametrize(
    "command",
    [
        ["info"],
        ["enqueue", "send_email"],
        ["task", "abc"],
        ["retry", "abc"],
        ["cancel", "abc"],
        ["purge", "--status", "FAILED", "--yes"],
        ["redrive", "--status", "FAILED", "--yes"],
        ["pause"],
        ["resume"],
    ],
    ids=lambda command: command[0],
)
def test_every_admin_command_on_another_programs_database_is_bad_input(
    tmp_path: Path, command: list[str]
) -> None:
    # Given a SQLite database of another program
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE notes (text TEXT)")
    raw.close()

    # When an admin command is pointed at it
    env = {"KATANA_BROKER_URL": None}
    done = CliRunner(env=env).invoke(main, [*command, "--broker", f"sqlite:///{path}"])

    # Then it is one line and exit code 2 (StorageError is bad input), and the file is left alone
    assert done.exit_code == 2, done.output
    assert done.stderr.splitlines() == [
        f"Error: {path} is the database of another program (application_id 0x0, tables: "
        "notes); Katana leaves it alone"
    ]
    with sqlite3.connect(path) as raw:
        tables = raw.execute("SELECT name FROM sqlite_master").fetchall()
    raw.close()
    assert tables == [("notes",)]

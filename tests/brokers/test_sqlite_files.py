"""SqliteBroker on files it must not use: one clear error naming the path, nothing touched."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker.sql import SCHEMA_VERSION
from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.errors import BrokerUnavailableError, StorageError
from katana.task_queue.testing._support import make_task

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]


def _files(folder: Path) -> dict[str, bytes]:
    return {entry.name: entry.read_bytes() for entry in sorted(folder.iterdir())}


def _rows(path: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as raw:
        return raw.execute("SELECT id, status FROM katana_tasks ORDER BY id").fetchall()


async def _refused(
    path: Path, error: type[Exception], match: str, busy_timeout_seconds: float = 5.0
) -> str:
    """The message of the error ``connect()`` and ``enqueue`` raise, which must name ``path``."""
    for use in ("connect", "enqueue"):
        broker = SqliteBroker(path, busy_timeout_seconds=busy_timeout_seconds)
        call = broker.connect() if use == "connect" else broker.enqueue(make_task())
        try:
            with pytest.raises(error, match=match) as raised:
                await call
        finally:
            await broker.close()
        assert str(path) in str(raised.value)
    return str(raised.value)


async def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = _files(tmp_path)

    await _refused(path, StorageError, "not a SQLite database")

    assert _files(tmp_path) == before


async def test_a_database_of_another_program_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute("CREATE TABLE users (name TEXT)")
        raw.execute("INSERT INTO users VALUES ('ada')")
        raw.commit()
    before = _files(tmp_path)

    message = await _refused(path, StorageError, "another program")

    assert "users" in message
    assert _files(tmp_path) == before  # not even switched to WAL


async def test_a_database_with_a_foreign_application_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute("PRAGMA application_id = 1234")
    before = _files(tmp_path)

    await _refused(path, StorageError, "another program")

    assert _files(tmp_path) == before


async def test_a_newer_schema_is_refused_and_its_tasks_kept(tmp_path: Path) -> None:
    # Given a database a newer Katana wrote
    path = tmp_path / "katana.db"
    async with SqliteBroker(path) as broker:
        await broker.enqueue(make_task())
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute("INSERT INTO katana_schema VALUES (?)", (SCHEMA_VERSION + 1,))
        raw.commit()
    before = _rows(path)

    message = await _refused(path, StorageError, "newer")

    assert f"version {SCHEMA_VERSION + 1}" in message
    assert _rows(path) == before


async def test_a_file_locked_by_another_writer_past_the_busy_timeout(tmp_path: Path) -> None:
    # Given a Katana database, and another process holding its write lock
    path = tmp_path / "katana.db"
    async with SqliteBroker(path) as broker:
        await broker.enqueue(make_task())
    before = _rows(path)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")

        # When a broker writes, Then it gives up after its busy timeout, saying why
        message = await _refused(
            path, BrokerUnavailableError, "locked by another writer", busy_timeout_seconds=0.2
        )
        assert "0.2s" in message
        writer.execute("ROLLBACK")

    # And nothing changed; once the lock is gone, it works
    assert _rows(path) == before
    async with SqliteBroker(path) as broker:
        await broker.enqueue(make_task())
    assert len(_rows(path)) == 2


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write to (its mode is restored at the end for the cleanup)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    yield folder
    folder.chmod(0o755)


def _open_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    """Open ``path`` and add a task in a child without the root's right to ignore modes."""
    code = (
        "import asyncio, sys\n"
        "from katana.task_queue.broker.sqlite import SqliteBroker\n"
        "from katana.task_queue.models import Task\n"
        "async def main():\n"
        "    async with SqliteBroker(sys.argv[1]) as broker:\n"
        "        await broker.enqueue(Task(name='t'))\n"
        "try:\n"
        "    asyncio.run(main())\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__ + ': ' + str(exc))\n"
    )
    command = [sys.executable, "-c", code, str(path)]
    if os.geteuid() == 0:  # root writes anywhere unless it gives up CAP_DAC_OVERRIDE
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_new_file_in_a_read_only_folder_is_refused(read_only: Path) -> None:
    path = read_only / "katana.db"
    read_only.chmod(0o555)

    done = _open_in_child(path)

    assert done.stdout.startswith("StorageError: "), done.stdout + done.stderr
    assert str(path) in done.stdout
    assert list(read_only.iterdir()) == []


def test_a_database_in_a_read_only_folder_is_refused_and_kept(read_only: Path) -> None:
    # Given a Katana database holding a task, in a folder made read-only
    path = read_only / "katana.db"
    asyncio.run(_store_one(path))
    before = _rows(path)
    read_only.chmod(0o555)
    path.chmod(0o444)

    done = _open_in_child(path)

    assert done.stdout.startswith("StorageError: "), done.stdout + done.stderr
    assert str(path) in done.stdout
    assert _rows(path) == before


async def _store_one(path: Path) -> None:
    async with SqliteBroker(path) as broker:
        await broker.enqueue(make_task())


async def test_a_row_that_holds_no_task_is_a_storage_error_not_a_hang(tmp_path: Path) -> None:
    # Given a due task whose payload was overwritten by hand with something not JSON
    path = tmp_path / "katana.db"
    async with SqliteBroker(path) as broker:
        task = make_task()
        await broker.enqueue(task)
        with contextlib.closing(sqlite3.connect(path)) as raw:
            raw.execute("UPDATE katana_tasks SET payload = '{not json' WHERE id = ?", (task.id,))
            raw.commit()

        # When consumers ask for it, Then they are told what is wrong, naming the file
        with pytest.raises(StorageError, match=rf"{path}.*{task.id}.*malformed"):
            await broker.dequeue(timeout=0)
        async with asyncio.timeout(10):
            with pytest.raises(StorageError, match="malformed"):
                await broker.dequeue()

    # And the row is left as it was, for a person to look at
    assert _rows(path) == [(task.id, "PENDING")]

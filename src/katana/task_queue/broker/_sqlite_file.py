"""One SQLite file as SqliteBroker uses it: checks, pragmas, migrations, and running steps.

A ``Database`` belongs to one thread (the broker's executor): sqlite3 connections must not
be shared between threads, and this keeps every blocking call off the event loop.
"""

from __future__ import annotations

import os
import sqlite3
from typing import TYPE_CHECKING, Literal, TypeVar

from ..errors import BrokerUnavailableError, StorageError
from .sql import MIGRATIONS, SCHEMA_VERSION
from .sql._codec import MalformedRowError
from .sql._schema import VERSION_TABLE

if TYPE_CHECKING:
    from .sql import Steps

__all__ = ["APPLICATION_ID", "Database", "Durability"]

_T = TypeVar("_T")
#: ``PRAGMA application_id`` of a Katana database ("KTNA"), so ``file`` and other programs can
#: tell what it is, and Katana can tell a database of another program.
APPLICATION_ID = 0x4B544E41
#: ``"full"``: a commit is on disk before ``add_task`` returns. ``"fast"``: WAL with
#: ``synchronous=NORMAL``, which loses the last commits on a power cut or OS crash (never on a
#: crash of the process alone).
Durability = Literal["full", "fast"]
_SYNCHRONOUS = {"full": "FULL", "fast": "NORMAL"}


class Database:
    """The connection to ``path`` and the transactions on it; opened on first use."""

    def __init__(self, path: str, *, durability: Durability, busy_timeout_seconds: float) -> None:
        self.path = path
        self._synchronous = _SYNCHRONOUS[durability]
        self._busy = busy_timeout_seconds
        self._connection: sqlite3.Connection | None = None

    # -- opening -------------------------------------------------------------------------

    def open(self, queue: str) -> None:
        """Open the file (creating it), check it is Katana's, migrate it, add ``queue``."""
        if self._connection is not None:
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise StorageError(f"cannot open SQLite database {self.path}: {folder} is no folder")
        if os.path.isdir(self.path):
            raise StorageError(f"cannot open SQLite database {self.path}: it is a folder")
        try:
            connection = sqlite3.connect(
                self.path, timeout=self._busy, isolation_level=None, check_same_thread=True
            )
        except sqlite3.Error as exc:
            raise self.translate(exc) from exc
        try:
            self._check(connection)
            self._prepare(connection, queue)
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _check(self, connection: sqlite3.Connection) -> None:
        """Refuse, before writing anything, a file that is not a Katana database we know."""
        try:
            (application_id,) = connection.execute("PRAGMA application_id").fetchone()
            tables = {
                name
                for (name,) in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
            version = self._version(connection) if VERSION_TABLE in tables else 0
        except sqlite3.Error as exc:
            raise self.translate(exc) from exc
        if application_id not in (0, APPLICATION_ID) or (tables and VERSION_TABLE not in tables):
            listed = ", ".join(sorted(tables)[:5]) or "none"
            raise StorageError(
                f"{self.path} is the database of another program (application_id "
                f"{application_id:#x}, tables: {listed}); Katana leaves it alone"
            )
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} has Katana schema version {version}, newer than this Katana "
                f"knows ({SCHEMA_VERSION}); upgrade Katana to use it"
            )

    @staticmethod
    def _version(connection: sqlite3.Connection) -> int:
        row = connection.execute(f"SELECT MAX(version) FROM {VERSION_TABLE}").fetchone()
        return int(row[0] or 0)

    def _prepare(self, connection: sqlite3.Connection, queue: str) -> None:
        try:
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StorageError(f"SQLite database {self.path} cannot use WAL mode ({mode})")
            # Several processes may start together on a new file: the write lock makes one of
            # them migrate, and the others find the work done when they get the lock.
            connection.execute("BEGIN IMMEDIATE")
            try:
                self._check(connection)
                connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)"
                )
                version = self._version(connection)
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[number - 1]:
                        connection.execute(statement)
                    connection.execute(f"INSERT INTO {VERSION_TABLE} VALUES (?)", (number,))
                connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                connection.execute(
                    "INSERT INTO katana_queues (queue) VALUES (?) ON CONFLICT DO NOTHING", (queue,)
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self.translate(exc) from exc

    def translate(self, exc: sqlite3.Error) -> Exception:
        """The KatanaError for a sqlite3 error, naming the file."""
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith("SQLITE_BUSY") or "locked" in str(exc):
            return BrokerUnavailableError(
                f"SQLite database {self.path} is locked by another writer for longer than the "
                f"busy timeout ({self._busy:g}s); nothing was changed"
            )
        if name.startswith("SQLITE_READONLY") or "readonly" in str(exc):
            return StorageError(
                f"SQLite database {self.path} cannot be written (read-only file or folder): {exc}"
            )
        if name.startswith("SQLITE_CANTOPEN"):
            return StorageError(
                f"cannot open SQLite database {self.path} (missing or read-only folder?): {exc}"
            )
        if name.startswith("SQLITE_NOTADB"):
            return StorageError(f"{self.path} is not a SQLite database; Katana leaves it alone")
        return StorageError(f"SQLite database {self.path}: {exc}")

    # -- transactions --------------------------------------------------------------------

    def _connected(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StorageError(f"SQLite database {self.path} is not open")
        return self._connection

    def write(self, steps: Steps[_T]) -> _T:
        """Run ``steps`` in one write transaction (``BEGIN IMMEDIATE``: the write lock first,
        so two processes never both read and then both write)."""
        return self._transaction("BEGIN IMMEDIATE", steps)

    def read(self, steps: Steps[_T]) -> _T:
        """Run ``steps`` on one consistent snapshot."""
        return self._transaction("BEGIN", steps)

    def _transaction(self, begin: str, steps: Steps[_T]) -> _T:
        connection = self._connected()
        try:
            connection.execute(begin)
            try:
                result = _drive(connection, steps)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self.translate(exc) from exc
        except MalformedRowError as exc:  # rolled back: the row stays for a person to look at
            raise StorageError(f"SQLite database {self.path}: {exc}") from exc
        return result

    def data_version(self) -> int:
        """Changes whenever another connection commits: the cheap "anything new?" look."""
        try:
            return int(self._connected().execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise self.translate(exc) from exc

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _drive(connection: sqlite3.Connection, steps: Steps[_T]) -> _T:
    try:
        statement = next(steps)
        while True:
            if statement.many:
                connection.executemany(statement.sql, statement.params)
                rows = []
            else:
                rows = connection.execute(statement.sql, statement.params).fetchall()
            statement = steps.send(rows)
    except StopIteration as stop:
        result: _T = stop.value
        return result

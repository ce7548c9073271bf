"""The tables, as numbered migrations; types both SQLite (by affinity) and PostgreSQL accept."""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "VERSION_TABLE"]

#: Holds one row: the number of the last migration applied. A driver creates it, reads it
#: inside the write transaction that applies the missing migrations, and refuses a database
#: whose version is higher than ``SCHEMA_VERSION`` (written by a newer Katana).
VERSION_TABLE = "katana_schema"

#: Migration ``n`` (1-based) is ``MIGRATIONS[n - 1]``; never edit one that shipped, add one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # One row per queue: paused or not, and the arrival counter that orders equal
        # priorities and due times first in, first out.
        """CREATE TABLE katana_queues (
            queue TEXT PRIMARY KEY,
            paused INTEGER NOT NULL DEFAULT 0,
            seq BIGINT NOT NULL DEFAULT 0
        )""",
        # Instants are microseconds since the epoch. lease_until: when a PROCESSING task's
        # claim expires unless renewed; lost: deliveries whose worker stopped renewing it;
        # owner: the process (its presence name) that claimed it last.
        """CREATE TABLE katana_tasks (
            queue TEXT NOT NULL,
            id TEXT NOT NULL,
            name TEXT NOT NULL,
            payload TEXT NOT NULL,
            priority BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            scheduled_at BIGINT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            result TEXT,
            error TEXT,
            traceback TEXT,
            started_at BIGINT,
            finished_at BIGINT,
            claim_token TEXT,
            max_retries INTEGER NOT NULL,
            timeout_seconds DOUBLE PRECISION,
            errors TEXT NOT NULL,
            unique_key TEXT,
            progress DOUBLE PRECISION,
            progress_message TEXT,
            trace_context TEXT,
            seq BIGINT NOT NULL,
            lease_until BIGINT,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            lost INTEGER NOT NULL DEFAULT 0,
            owner TEXT,
            PRIMARY KEY (queue, id)
        )""",
        # The claim reads this index in run order.
        """CREATE INDEX katana_tasks_ready ON katana_tasks (queue, priority, scheduled_at, seq)
            WHERE status = 'PENDING'""",
        """CREATE INDEX katana_tasks_leases ON katana_tasks (queue, lease_until)
            WHERE status = 'PROCESSING'""",
        "CREATE INDEX katana_tasks_status ON katana_tasks (queue, status, finished_at)",
        "CREATE INDEX katana_tasks_created ON katana_tasks (queue, created_at)",
        """CREATE INDEX katana_tasks_unique ON katana_tasks (queue, unique_key)
            WHERE unique_key IS NOT NULL""",
        """CREATE TABLE katana_workers (
            queue TEXT NOT NULL,
            id TEXT NOT NULL,
            record TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (queue, id)
        )""",
        """CREATE TABLE katana_slots (
            queue TEXT NOT NULL,
            key TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (queue, key)
        )""",
    ),
    (
        # Attempts made before the task was last redriven (a redrive starts ``attempts``
        # again at 0): the attempt numbers in ``errors`` go on from there.
        "ALTER TABLE katana_tasks ADD COLUMN attempts_before INTEGER NOT NULL DEFAULT 0",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

"""The SQL core SqliteBroker shares with the SQL brokers to come: schema, codec, transitions.

Every state change is written once here as *steps*: a generator that yields one
``Statement`` at a time and receives the rows it returned, so it never touches a driver (the
"sans-I/O" shape of h11). A driver runs the steps inside one write transaction of its own
(``BEGIN IMMEDIATE`` on SQLite; ``SKIP LOCKED`` claims and ``NOTIFY`` would be PostgreSQL's)
and holds only what differs: connections, pragmas, locking and waking.

Statements use ``?`` placeholders and SQL that SQLite (3.35+) and PostgreSQL both accept:
``RETURNING``, ``ON CONFLICT ... DO UPDATE``, partial indexes. Instants are stored as integer
microseconds since the epoch, payloads and results as JSON text.
"""

from __future__ import annotations

from ._codec import from_us, to_us
from ._schema import MIGRATIONS, SCHEMA_VERSION
from ._steps import Outcome, Rows, Statement, Steps

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Outcome",
    "Rows",
    "Statement",
    "Steps",
    "from_us",
    "to_us",
]

"""The app `katana worker tests.integration.chaos_app:make_service` runs in the chaos tests.

Its broker is a RedisBroker, or a SqliteBroker when CHAOS_SQLITE_PATH names a file; the ledger
is in Redis either way.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.models import Task

__all__ = [
    "ChaosTasks",
    "Ledger",
    "LedgerBroker",
    "LedgerEntry",
    "SqliteLedgerBroker",
    "build_service",
    "ledger_key",
    "make_service",
    "parse_ledger",
    "starts_key",
]

# The ledger is a Redis list of "<event>|<task id>|<pid>|<time.time()>" entries, where event is
# "start" (the executor began), "done" (it is about to return) or "ack" (the broker recorded the
# completion), plus a hash of executor starts per pid. Both live outside the broker's keys.


def ledger_key(queue: str) -> str:
    return f"chaos:{{{queue}}}:ledger"


def starts_key(queue: str) -> str:
    return f"chaos:{{{queue}}}:starts"


class LedgerEntry:
    __slots__ = ("event", "pid", "task_id", "time")

    def __init__(self, event: str, task_id: str, pid: int, at: float) -> None:
        self.event = event
        self.task_id = task_id
        self.pid = pid
        self.time = at

    def __repr__(self) -> str:
        return f"LedgerEntry({self.event!r}, {self.task_id!r}, pid={self.pid}, t={self.time:.3f})"


def parse_ledger(raw: list[bytes | str]) -> list[LedgerEntry]:
    entries = []
    for item in raw:
        text = item.decode() if isinstance(item, bytes) else item
        event, task_id, pid, at = text.split("|")
        entries.append(LedgerEntry(event, task_id, int(pid), float(at)))
    return entries


class Ledger:
    """This process's connection to the ledger, opened on first use inside the event loop."""

    def __init__(self, url: str, queue: str) -> None:
        self._url = url
        self._key = ledger_key(queue)
        self._starts = starts_key(queue)
        self._client: aioredis.Redis | None = None

    def _entry(self, event: str, task_id: str) -> str:
        return f"{event}|{task_id}|{os.getpid()}|{time.time():.6f}"

    def _connection(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self._url)
        return self._client

    async def started(self, task_id: str) -> None:
        async with self._connection().pipeline(transaction=False) as pipe:
            pipe.rpush(self._key, self._entry("start", task_id))
            pipe.hincrby(self._starts, str(os.getpid()), 1)
            await pipe.execute()

    async def note(self, event: str, task_id: str) -> None:
        await self._connection().rpush(self._key, self._entry(event, task_id))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class ChaosTasks:
    """The executors, each writing to one ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def executors(self) -> dict[str, Callable[[Task], Awaitable[None]]]:
        return {
            "block": self.block,
            "chaos": self.chaos,
            "poison": self.poison,
            "sleep": self.sleep,
        }

    async def chaos(self, task: Task) -> None:
        """Logs its start, awaits 0-5 ms, logs that it is done."""
        await self.ledger.started(task.id)
        await asyncio.sleep(random.uniform(0, 0.005))
        await self.ledger.note("done", task.id)

    async def sleep(self, task: Task) -> None:
        """Logs its start, sleeps ``payload["seconds"]``, logs that it is done."""
        await self.ledger.started(task.id)
        await asyncio.sleep(float(task.payload["seconds"]))
        await self.ledger.note("done", task.id)

    async def block(self, task: Task) -> None:
        """Logs its start, blocks the event loop ``payload["seconds"]``, logs that it is done."""
        await self.ledger.started(task.id)
        # Blocking the loop is the point: CPU work in an ``async def`` executor.
        time.sleep(float(task.payload["seconds"]))  # noqa: ASYNC251
        await self.ledger.note("done", task.id)

    async def poison(self, task: Task) -> None:
        """Logs its start, then kills the worker process running it: on every attempt."""
        await self.ledger.started(task.id)
        os.kill(os.getpid(), signal.SIGKILL)


class Acks:
    """Adds an "ack" to the ledger for each completion the broker recorded."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._notes: set[asyncio.Future[None]] = set()

    def watch(self, task_id: str, outcome: asyncio.Future[bool]) -> asyncio.Future[bool]:
        outcome.add_done_callback(functools.partial(self._recorded, task_id))
        return outcome

    def _recorded(self, task_id: str, outcome: asyncio.Future[bool]) -> None:
        if not outcome.cancelled() and outcome.exception() is None and outcome.result():
            note = asyncio.ensure_future(self.ledger.note("ack", task_id))
            self._notes.add(note)
            note.add_done_callback(self._notes.discard)

    async def close(self) -> None:
        await asyncio.gather(*self._notes, return_exceptions=True)
        await self.ledger.close()


class LedgerBroker(RedisBroker):
    """A RedisBroker that adds an "ack" to the ledger for each completion Redis recorded."""

    def __init__(self, url: str, *, ledger: Ledger, **options: Any) -> None:
        super().__init__(url, **options)
        self.acks = Acks(ledger)

    def complete_soon(
        self, task_id: str, result: Any = None, *, claim_token: str | None = None
    ) -> asyncio.Future[bool]:
        outcome = super().complete_soon(task_id, result, claim_token=claim_token)
        return self.acks.watch(task_id, outcome)

    async def close(self) -> None:
        await super().close()
        await self.acks.close()


class SqliteLedgerBroker(SqliteBroker):
    """A SqliteBroker that adds an "ack" to the ledger for each completion it recorded."""

    def __init__(self, path: str, *, ledger: Ledger, **options: Any) -> None:
        super().__init__(path, **options)
        self.acks = Acks(ledger)

    def complete_soon(
        self, task_id: str, result: Any = None, *, claim_token: str | None = None
    ) -> asyncio.Future[bool]:
        outcome = super().complete_soon(task_id, result, claim_token=claim_token)
        return self.acks.watch(task_id, outcome)

    async def close(self) -> None:
        await super().close()
        await self.acks.close()


def build_service(
    url: str,
    queue: str,
    *,
    lease_seconds: float,
    heartbeat_seconds: float | None = None,
    max_deliveries: int = 3,
    sqlite_path: str | None = None,
) -> TaskQueueService:
    """The chaos tasks on a ledger broker for ``queue`` (on Redis at ``url``, or on the SQLite
    file ``sqlite_path``), writing to that queue's ledger in Redis."""
    ledger = Ledger(url, queue)
    options: dict[str, Any] = {
        "queue": queue,
        "lease_seconds": lease_seconds,
        "heartbeat_seconds": heartbeat_seconds,
        "max_deliveries": max_deliveries,
    }
    broker: AbstractBroker
    if sqlite_path:
        broker = SqliteLedgerBroker(sqlite_path, ledger=ledger, **options)
    else:
        broker = LedgerBroker(url, ledger=ledger, **options)
    return TaskQueueService(broker, ChaosTasks(ledger).executors())


def make_service() -> TaskQueueService:
    """The factory the CLI calls: CHAOS_REDIS_URL, CHAOS_QUEUE, CHAOS_LEASE, CHAOS_HEARTBEAT,
    CHAOS_SQLITE_PATH (unset or empty: Redis)."""
    heartbeat = os.environ.get("CHAOS_HEARTBEAT")
    return build_service(
        os.environ["CHAOS_REDIS_URL"],
        os.environ["CHAOS_QUEUE"],
        lease_seconds=float(os.environ.get("CHAOS_LEASE", "2")),
        heartbeat_seconds=float(heartbeat) if heartbeat else None,
        sqlite_path=os.environ.get("CHAOS_SQLITE_PATH") or None,
    )

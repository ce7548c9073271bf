"""RedisBroker with garbage written straight into its keys: quarantined and logged, never fatal.

Garbage in each key of a queue, one key at a time: tests/brokers/test_redis_garbage_keys.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.errors import BrokerError
from katana.task_queue.listing import TaskQuery
from katana.task_queue.management import QueueManager
from katana.task_queue.models import TaskStatus
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from katana.task_queue.models import Task

#: Valid tasks the main scenario interleaves with the garbage.
VALID_TASKS = 200
WAIT_SECONDS = 30.0


class Keys:
    """The queue's key layout, as a stranger writing into Redis would see it."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ready = f"{prefix}:ready"
        self.delayed = f"{prefix}:delayed"
        self.processing = f"{prefix}:processing"
        self.quarantine = f"{prefix}:quarantine"
        # Due a second ago, and numbered past anything the valid tasks reach.
        self.due_ms = int(time.time() * 1000) - 1000
        self._seq = 10**12

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    def member(self, task_id: str) -> str:
        """A well-formed ready member (``<due>:<seq>:<id>``) for ``task_id``."""
        self._seq += 1
        return f"{self.due_ms:015d}:{self._seq:016d}:{task_id}"


def record(member: str, **changes: str) -> dict[str, str]:
    """Task hash fields as RedisBroker writes them for a PENDING task, with ``changes``."""
    now = repr(time.time())
    fields = {
        "name": "ok",
        "payload": "{}",
        "priority": "0",
        "created_at": now,
        "scheduled_at": now,
        "status": "PENDING",
        "attempts": "0",
        "deliveries": "0",
        "member": member,
    }
    fields.update(changes)
    return fields


@dataclass
class Garbage:
    """One bad entry: what quarantine should list for it, and the id ``get_task`` is asked."""

    label: str
    entry: str
    reason: str
    task_id: str | None = None
    #: Words the log line about it must contain (the entry or its id).
    named_by: list[str] = field(default_factory=list)


def _id(label: str) -> str:
    return f"{label}-{os.urandom(4).hex()}"


async def ready_key_of_wrong_type(r: aioredis.Redis, keys: Keys) -> Garbage:
    await r.set(keys.ready, "not a sorted set")
    return Garbage("ready key is a string", keys.ready, "expected zset", named_by=[keys.ready])


async def delayed_key_of_wrong_type(r: aioredis.Redis, keys: Keys) -> Garbage:
    await r.rpush(keys.delayed, "not", "a", "sorted set")
    return Garbage("delayed key is a list", keys.delayed, "expected zset", named_by=[keys.delayed])


async def text_ready_member(r: aioredis.Redis, keys: Keys) -> Garbage:
    member = f"garbage {os.urandom(8).hex()}"
    await r.zadd(keys.ready, {member: 0})
    return Garbage("malformed ready member", member, "malformed ready entry", named_by=[member])


async def ready_member_without_record(r: aioredis.Redis, keys: Keys) -> Garbage:
    task_id = _id("norecord")
    member = keys.member(task_id)
    await r.zadd(keys.ready, {member: 0})
    return Garbage("no task record", member, "has no task record", task_id, [task_id])


def hash_with(label: str, reason: str, **changes: str) -> Callable[..., Awaitable[Garbage]]:
    async def write(r: aioredis.Redis, keys: Keys) -> Garbage:
        task_id = _id(label)
        member = keys.member(task_id)
        fields = record(member, **changes)
        await r.hset(keys.task(task_id), items=[x for pair in fields.items() for x in pair])
        await r.zadd(keys.ready, {member: 0})
        return Garbage(label, task_id, reason, task_id, [task_id])

    return write


def task_key_of_type(kind: str) -> Callable[..., Awaitable[Garbage]]:
    async def write(r: aioredis.Redis, keys: Keys) -> Garbage:
        task_id = _id(f"{kind}-key")
        if kind == "string":
            await r.set(keys.task(task_id), "not a hash")
        else:
            await r.rpush(keys.task(task_id), "not", "a", "hash")
        member = keys.member(task_id)
        await r.zadd(keys.ready, {member: 0})
        return Garbage(f"task key is a {kind}", member, f"Redis type {kind}", task_id, [task_id])

    return write


async def delayed_entry_without_record(r: aioredis.Redis, keys: Keys) -> Garbage:
    task_id = _id("delayed-norecord")
    await r.zadd(keys.delayed, {task_id: keys.due_ms})
    return Garbage("delayed, no record", task_id, "has no task record", task_id, [task_id])


#: In the order they are written, a batch of valid tasks after each: a queue key overwritten
#: while it holds valid tasks would lose them, so the ready key goes first, and the delayed
#: key is overwritten before the delayed entry is added.
MAIN_GARBAGE: list[Callable[..., Awaitable[Garbage]]] = [
    ready_key_of_wrong_type,
    text_ready_member,
    ready_member_without_record,
    hash_with("truncated", "JSONDecodeError", payload='{"to": "ann@example.com", "sub'),
    hash_with("priority", "ValueError", priority="high"),
    hash_with("list-payload", "payload is a JSON list", payload="[1, 2, 3]"),
    hash_with("trace-list", "trace_context is not", trace_context='["traceparent"]'),
    hash_with("trace-number", "trace_context is not", trace_context='{"traceparent": 1}'),
    task_key_of_type("string"),
    task_key_of_type("list"),
    delayed_key_of_wrong_type,
    delayed_entry_without_record,
]


# -- the scenario ------------------------------------------------------------------------


@dataclass
class Outcome:
    valid: list[str]
    garbage: list[Garbage]
    runs: Counter[str]
    workers: list[asyncio.Task[None]]
    seen_before_run: dict[str, Task | None]
    logs: list[logging.LogRecord]


class Queue:
    """A broker on a fresh queue, a raw client to write garbage with, and a worker service."""

    def __init__(self, url: str, name: str) -> None:
        self.broker = RedisBroker(url, queue=name, lease_seconds=5)
        self.raw = aioredis.Redis.from_url(url)
        self.keys = Keys(self.broker.prefix)
        self.runs: Counter[str] = Counter()
        self.service = TaskQueueService(self.broker, {"ok": self._run})

    async def _run(self, task: Task) -> int:
        self.runs[task.id] += 1
        return len(task.payload)

    async def close(self) -> None:
        await self.service.shutdown(timeout=5)
        await self.broker.purge()
        await self.broker.close()
        await self.raw.aclose()

    async def run(
        self,
        writers: list[Callable[..., Awaitable[Garbage]]],
        caplog: pytest.LogCaptureFixture,
        valid_tasks: int = VALID_TASKS,
    ) -> Outcome:
        """Write each garbage between batches of valid tasks, then let 4 workers drain it."""
        per_batch = valid_tasks // (len(writers) + 1)
        valid: list[str] = []
        garbage: list[Garbage] = []
        for writer in writers:
            garbage.append(await writer(self.raw, self.keys))
            valid += [(await self.service.add_task("ok", {"n": n})).id for n in range(per_batch)]
        while len(valid) < valid_tasks:
            valid.append((await self.service.add_task("ok")).id)
        # get_task's own warnings about the garbage do not count as the queue reporting it
        before = len(caplog.records)
        seen = {g.task_id: await self.service.get_task(g.task_id) for g in garbage if g.task_id}
        after = len(caplog.records)
        workers = self.service.start_workers(4)
        await self.service.wait_idle(timeout=WAIT_SECONDS)
        # The claim that popped the last garbage may be counted before its reply is read
        # and logged: give the consumer a bounded moment to read it.
        for _ in range(int(WAIT_SECONDS / 0.01)):
            outcome = Outcome(valid, garbage, self.runs, workers, seen, [])
            outcome.logs.extend(caplog.records[:before] + caplog.records[after:])
            if all(logged(outcome, g) for g in garbage if g.named_by):
                break
            await asyncio.sleep(0.01)
        return outcome


@pytest.fixture
async def queue(redis_url: str, queue_name: str) -> AsyncIterator[Queue]:
    queue = Queue(redis_url, queue_name)
    try:
        yield queue
    finally:
        await queue.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="katana")
    return caplog


def quarantine_entry(entries: list[dict[str, Any]], garbage: Garbage) -> dict[str, Any] | None:
    return next((e for e in entries if e.get("entry") == garbage.entry), None)


def logged(outcome: Outcome, garbage: Garbage) -> list[logging.LogRecord]:
    """WARNING or worse records from Katana that name ``garbage``."""
    return [
        r
        for r in outcome.logs
        if r.levelno >= logging.WARNING
        and r.name.startswith("katana")
        and all(word in r.getMessage() for word in garbage.named_by)
    ]


# -- tests -------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_garbage_is_quarantined_and_valid_tasks_complete(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    # Given garbage of every kind written into the queue's keys among 200 valid tasks
    # When four workers drain the queue
    outcome = await queue.run(MAIN_GARBAGE, logs)

    # Then every valid task ran exactly once and completed, and no worker crashed
    assert len(outcome.valid) == VALID_TASKS
    assert {task_id: outcome.runs[task_id] for task_id in outcome.valid} == dict.fromkeys(
        outcome.valid, 1
    )
    assert sum(outcome.runs.values()) == VALID_TASKS  # nothing else reached an executor
    for task_id in outcome.valid:
        task = await queue.broker.get_task(task_id)
        assert task is not None
        assert task.status is TaskStatus.COMPLETED
    counts = await queue.broker.count_by_status()
    assert counts[TaskStatus.COMPLETED] == VALID_TASKS
    assert counts[TaskStatus.FAILED] == counts[TaskStatus.DEAD] == 0
    assert not any(worker.done() for worker in outcome.workers)

    # ...each bad entry is in quarantine with its reason...
    entries = await queue.broker.quarantined(limit=1000)
    for garbage in outcome.garbage:
        entry = quarantine_entry(entries, garbage)
        assert entry is not None, f"{garbage.label}: {garbage.entry!r} not quarantined"
        assert garbage.reason in entry["reason"], (garbage.label, entry)
    assert len(entries) == len(outcome.garbage)

    # ...and get_task on a garbage id returns None, before and after the workers ran
    for garbage in outcome.garbage:
        if garbage.task_id is not None:
            assert outcome.seen_before_run[garbage.task_id] is None, garbage.label
            assert await queue.broker.get_task(garbage.task_id) is None, garbage.label
    assert await queue.broker.get_task(f"{outcome.garbage[3].task_id}:quarantined") is None

    # Records that could not be decoded are logged by the worker side, naming the task
    for garbage in outcome.garbage[3:6]:
        assert logged(outcome, garbage), garbage.label


@pytest.mark.timeout(90)
async def test_every_quarantined_entry_is_logged(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    outcome = await queue.run(MAIN_GARBAGE, logs, valid_tasks=40)

    unlogged = [g.label for g in outcome.garbage if not logged(outcome, g)]
    assert unlogged == []


async def test_record_with_unknown_status_is_quarantined(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    outcome = await queue.run(
        [hash_with("status", "status", status="MAYBE_LATER")], logs, valid_tasks=20
    )

    [garbage] = outcome.garbage
    assert outcome.seen_before_run[str(garbage.task_id)] is None
    assert sorted(outcome.runs) == sorted(outcome.valid)
    assert not any(worker.done() for worker in outcome.workers)
    assert quarantine_entry(await queue.broker.quarantined(), garbage) is not None
    assert logged(outcome, garbage)


async def random_bytes_member(r: aioredis.Redis, keys: Keys) -> Garbage:
    member = b"\xff\xfe" + os.urandom(40)  # never valid UTF-8
    await r.zadd(keys.ready, {member: 0})
    return Garbage("random bytes", member.decode(errors="replace"), "malformed ready entry")


async def test_random_bytes_in_the_ready_set_are_quarantined(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    outcome = await queue.run([random_bytes_member], logs, valid_tasks=20)

    # The part that holds today: the workers survive it and the valid tasks complete
    assert sorted(outcome.runs) == sorted(outcome.valid)
    assert not any(worker.done() for worker in outcome.workers)
    # The part that does not: the quarantine list cannot be read back
    entries = await queue.broker.quarantined()
    assert [e["reason"] for e in entries] == ["malformed ready entry"]


@pytest.mark.parametrize("key", ["ready", "delayed", "processing"])
async def test_count_by_status_with_a_queue_key_of_the_wrong_type(queue: Queue, key: str) -> None:
    await queue.raw.set(getattr(queue.keys, key), "not a sorted set")

    with contextlib.suppress(BrokerError):  # a Katana error is acceptable, a redis-py one not
        await queue.broker.count_by_status()


async def fail_always(task: Task) -> None:
    raise RuntimeError(f"task {task.id} fails")


async def test_garbage_in_the_monitoring_keys_never_breaks_listing_or_workers(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    prefix = queue.keys.prefix
    await queue.raw.set(f"{prefix}:all", "not a sorted set")
    await queue.raw.set(f"{prefix}:finished:FAILED", "not a sorted set either")
    await queue.raw.hset(f"{prefix}:workers", "ghost", b"\xff\xfe not json")
    manager = QueueManager(queue.broker, queue.service)
    queue.service.register("boom", fail_always)

    created = [(await queue.service.add_task("ok", {"n": n})).id for n in range(5)]
    doomed = [(await queue.service.add_task("boom", {"n": n})).id for n in range(2)]
    queue.service.start_workers(2)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)
    listing = await manager.tasks(TaskQuery())
    failed = await manager.tasks(TaskQuery(status=TaskStatus.FAILED))
    overview = await manager.overview()

    assert sorted(task.id for task in listing.tasks) == sorted(created + doomed)
    assert sorted(task.id for task in failed.tasks) == sorted(doomed)
    assert overview.counts[TaskStatus.COMPLETED] == 5
    assert overview.counts[TaskStatus.FAILED] == 2
    assert [worker.id for worker in overview.workers] == [queue.service.worker_id]
    assert any("worker record" in r.getMessage() for r in logs.records)
    entries = await queue.broker.quarantined()
    assert {f"{prefix}:all", f"{prefix}:finished:FAILED"} <= {entry["entry"] for entry in entries}

    await queue.raw.set(f"{prefix}:finished:DEAD", "garbage the retention sweep meets")
    await queue.broker.heartbeat()  # moves it aside instead of failing every heartbeat
    assert await queue.raw.type(f"{prefix}:finished:DEAD") in (b"none", b"zset")

    await queue.raw.delete(f"{prefix}:workers")
    await queue.raw.set(f"{prefix}:workers", "a string where a hash belongs")
    assert await manager.workers() == []
    await queue.broker.record_worker(overview.workers[0])  # moved aside, then written
    assert [worker.id for worker in await manager.workers()] == [queue.service.worker_id]


@pytest.mark.parametrize(
    ("key", "wanted"),
    [("processing", "zset"), ("counts", "hash"), ("unique", "hash"), ("quarantine", "list")],
)
async def test_queue_key_of_the_wrong_type_met_first_by_a_claim(
    queue: Queue, logs: pytest.LogCaptureFixture, key: str, wanted: str
) -> None:
    # Given queued tasks with unique keys, one malformed ready entry (so the claim writes to
    # the quarantine list), and one of the queue's own keys overwritten with a value of another
    # Redis type after the last add_task: the first script to meet it is a worker's claim
    # (the ready and delayed sets are left alone: overwriting them drops their tasks)
    ids = [(await queue.service.add_task("ok", {"n": n}, unique_key=f"u{n}")).id for n in range(20)]
    await queue.raw.zadd(queue.keys.ready, {"not-a-member": 0})
    name = f"{queue.broker.prefix}:{key}"
    await queue.raw.delete(name)
    await queue.raw.rpush(name, "garbage") if wanted != "list" else await queue.raw.set(name, "x")

    # When workers drain the queue
    workers = queue.service.start_workers(2)
    for _ in range(int(WAIT_SECONDS / 0.01)):
        if all(queue.runs[task_id] for task_id in ids):
            break
        await asyncio.sleep(0.01)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)

    # Then no claim failed on it (a failed script may have written half of its changes),
    # every task completed, no worker died, and the key was moved aside with a note
    failures = [r for r in logs.records if getattr(r, "katana_event", "") == "broker_error"]
    assert not failures, [r.getMessage() for r in failures]
    for task_id in ids:
        task = await queue.service.get_task(task_id)
        assert task is not None
        assert task.status is TaskStatus.COMPLETED
    assert not any(worker.done() for worker in workers)
    reasons = [e["reason"] for e in await queue.broker.quarantined() if e.get("entry") == name]
    assert reasons, await queue.broker.quarantined()
    assert f"expected {wanted}" in reasons[0]

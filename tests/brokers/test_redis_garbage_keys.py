"""Garbage in each key a Redis queue uses: quarantined or repaired, and no task is lost.

A Redis script is not a transaction: a script that fails halfway keeps its earlier writes.
Each case here writes garbage into one key while valid tasks wait in the queue (some due, some
delayed, so that the claim moving delayed tasks meets the garbage too), then checks that the
entry was quarantined (or the key repaired), that no operation failed, and that every valid
task completed exactly once, with the status counters right. Then: the arrival counter met
first by each script that queues a task, task records with each field garbage or missing in
each queue structure, stray entries, periodic slot keys, unique-key entries and the paused
key. (tests/brokers/test_redis_garbage.py has the mixed scenario with 200 valid tasks.)
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.errors import Retry
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService
from katana.task_queue.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    Writer = Callable[[aioredis.Redis, str], Awaitable[object]]

WAIT_SECONDS = 30.0
#: How far the delayed tasks are put off; the test then moves the clock past it.
DELAY_SECONDS = 60.0
BATCH = 4


class Queue:
    """A broker and a worker service on a fresh queue with a fake clock, and a raw client."""

    def __init__(self, url: str, name: str) -> None:
        self.clock = FakeClock(start=time.time())
        self.broker = RedisBroker(url, queue=name, lease_seconds=5, clock=self.clock)
        self.raw = aioredis.Redis.from_url(url)
        self.prefix = self.broker.prefix
        self.runs: Counter[str] = Counter()
        self.service = TaskQueueService(self.broker, {"ok": self._run}, clock=self.clock)

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    async def _run(self, task: Task) -> None:
        self.runs[task.id] += 1

    async def add(self, *, delayed: bool, unique: bool = False) -> list[str]:
        """Queue a batch of valid tasks, due now or delayed; returns their ids."""
        ids = []
        for n in range(BATCH):
            task = await self.service.add_task(
                "ok",
                {"n": n},
                delay_seconds=DELAY_SECONDS if delayed else 0,
                unique_key=f"u-{uuid.uuid4().hex}" if unique else None,
            )
            ids.append(task.id)
        return ids

    async def close(self) -> None:
        await self.service.shutdown(timeout=5)
        await self.broker.purge()
        await self.broker.close()
        await self.raw.aclose()


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


@dataclass
class Case:
    """Garbage for the queue key ``key``: ``write`` puts it there; the quarantine note on
    the key gives ``reason``."""

    key: str
    write: Writer
    reason: str
    #: The key held queued tasks when the garbage replaced it: those are gone.
    destroys_delayed: bool = False


def string(value: str) -> Writer:
    async def write(raw: aioredis.Redis, key: str) -> object:
        await raw.delete(key)
        return await raw.set(key, value)

    return write


async def a_list(raw: aioredis.Redis, key: str) -> object:
    await raw.delete(key)
    return await raw.rpush(key, "not", "what", "belongs", "here")


async def a_hash(raw: aioredis.Redis, key: str) -> object:
    await raw.delete(key)
    return await raw.hset(key, "not", "what belongs here")


def field(name: str, value: str) -> Writer:
    async def write(raw: aioredis.Redis, key: str) -> object:
        return await raw.hset(key, name, value)

    return write


CASES = {
    "seq is text": Case("seq", string("not-a-number"), "not-a-number"),
    "seq is negative": Case("seq", string("-5"), "'-5'"),
    "seq is a float": Case("seq", string("12.5"), "'12.5'"),
    "seq has a leading zero": Case("seq", string("007"), "'007'"),
    "seq is too large": Case("seq", string("9" * 20), "9" * 20),
    "seq is a hash": Case("seq", a_hash, "Redis type hash"),
    "ready is a string": Case("ready", string("x"), "expected zset"),
    "delayed is a list": Case("delayed", a_list, "expected zset", destroys_delayed=True),
    "processing is a string": Case("processing", string("x"), "expected zset"),
    "all is a hash": Case("all", a_hash, "expected zset"),
    "counts is a list": Case("counts", a_list, "expected hash"),
    "counts COMPLETED is text": Case("counts", field("COMPLETED", "lots"), "'lots'"),
    "counts FAILED is a float": Case("counts", field("FAILED", "1.5"), "'1.5'"),
    "counts COMPLETED is -0": Case("counts", field("COMPLETED", "-0"), "'-0'"),
    "unique is a string": Case("unique", string("x"), "expected hash"),
    "quarantine is a hash": Case("quarantine", a_hash, "expected list"),
    "finished:COMPLETED is a string": Case("finished:COMPLETED", string("x"), "expected zset"),
    "finished:CANCELLED is a list": Case("finished:CANCELLED", a_list, "expected zset"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_garbage_in_a_queue_key(
    queue: Queue, logs: pytest.LogCaptureFixture, case: Case
) -> None:
    # Given tasks that already completed, and delayed tasks (some with unique keys) waiting
    workers = queue.service.start_workers(2)
    done = await queue.add(delayed=False)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)
    waiting = await queue.add(delayed=True) + await queue.add(delayed=True, unique=True)

    # When garbage is written into one of the queue's keys, more tasks are added, and the
    # delayed ones come due (the first claim moves them to the ready set)
    key = queue.key(case.key)
    await case.write(queue.raw, key)
    later = await queue.add(delayed=False) + await queue.add(delayed=True, unique=True)
    queue.clock.advance(DELAY_SECONDS + 1)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)

    # Then every task still queued completed exactly once, and no operation failed
    valid = done + later + ([] if case.destroys_delayed else waiting)
    assert {task_id: queue.runs[task_id] for task_id in valid} == dict.fromkeys(valid, 1)
    for task_id in valid:
        task = await queue.broker.get_task(task_id)
        assert task is not None
        assert task.status is TaskStatus.COMPLETED
    failures = [r for r in logs.records if getattr(r, "katana_event", "") == "broker_error"]
    assert not failures, [r.getMessage() for r in failures]
    assert not any(worker.done() for worker in workers)
    # ...the counters agree with what ran...
    counts = await queue.broker.count_by_status()
    assert counts[TaskStatus.COMPLETED] == len(valid)
    assert counts[TaskStatus.PENDING] == counts[TaskStatus.PROCESSING] == 0
    # ...and the garbage is in quarantine, with its reason, and was logged
    notes = [n for n in await queue.broker.quarantined(limit=1000) if n.get("entry") == key]
    assert [case.reason in note["reason"] for note in notes] == [True], notes
    assert any(
        r.levelno == logging.WARNING and key in r.getMessage() and case.reason in r.getMessage()
        for r in logs.records
    ), [r.getMessage() for r in logs.records]


# -- the arrival counter, met first by each script that queues a task ----------------------


def quarantine_notes(logs: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]


async def assert_seq_repaired(queue: Queue, logs: pytest.LogCaptureFixture) -> None:
    """The garbage counter was quarantined and logged, and counts on from a whole number."""
    key = queue.key("seq")
    notes = [n for n in await queue.broker.quarantined() if n.get("entry") == key]
    assert len(notes) == 1, notes
    assert "'garbage'" in notes[0]["reason"]
    assert any(key in line and "'garbage'" in line for line in quarantine_notes(logs))
    assert int(await queue.raw.get(key) or b"0") >= 0
    failures = [r for r in logs.records if getattr(r, "katana_event", "") == "broker_error"]
    assert not failures, [r.getMessage() for r in failures]


async def test_garbage_seq_met_first_by_the_claim_that_moves_delayed_tasks(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    # Given delayed tasks, and garbage in the arrival counter once they were queued
    delayed = await queue.add(delayed=True)
    await queue.raw.set(queue.key("seq"), "garbage")

    # When they come due: the claim takes them out of the delayed set, for the ready set
    queue.clock.advance(DELAY_SECONDS + 1)
    queue.service.start_workers(2)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)

    # Then none of them was lost on the way: each ran once and completed
    assert {task_id: queue.runs[task_id] for task_id in delayed} == dict.fromkeys(delayed, 1)
    for task_id in delayed:
        task = await queue.broker.get_task(task_id)
        assert task is not None
        assert task.status is TaskStatus.COMPLETED
    await assert_seq_repaired(queue, logs)


async def test_garbage_seq_met_first_by_add_task(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    await queue.raw.set(queue.key("seq"), "garbage")

    # add_task neither fails nor leaves a record outside the queue's structures
    added = await queue.add(delayed=False)
    assert (await queue.broker.count_by_status())[TaskStatus.PENDING] == len(added)
    queue.service.start_workers(2)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)

    assert {task_id: queue.runs[task_id] for task_id in added} == dict.fromkeys(added, 1)
    await assert_seq_repaired(queue, logs)


async def test_garbage_seq_met_first_by_a_retry(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    # Given a task whose first attempt writes garbage into the counter and asks to run again
    attempts: list[int] = []

    async def flaky(task: Task) -> None:
        attempts.append(task.attempts)
        if len(attempts) == 1:
            await queue.raw.set(queue.key("seq"), "garbage")
            raise Retry(delay_seconds=0)

    queue.service.register("flaky", flaky)
    task = await queue.service.add_task("flaky", max_retries=1)

    # When the retry is written (it queues the task again, with a new arrival number)
    queue.service.start_workers(1)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)

    # Then it ran again and completed
    assert len(attempts) == 2
    stored = await queue.broker.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.COMPLETED
    await assert_seq_repaired(queue, logs)


async def test_garbage_seq_met_first_by_update_task_status(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    # Given a completed task, and garbage in the counter
    task_id = (await queue.service.add_task("ok")).id
    queue.service.start_workers(1)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)
    await queue.raw.set(queue.key("seq"), "garbage")

    # When it is set back to PENDING by hand, it is queued again and runs again
    await queue.broker.update_task_status(task_id, TaskStatus.PENDING)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)

    assert queue.runs[task_id] == 2
    await assert_seq_repaired(queue, logs)


async def test_garbage_seq_met_first_by_a_lease_recovery(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    # Given a task whose worker died while it ran (its lease runs out unrenewed)
    task_id = (await queue.service.add_task("ok")).id
    claimed = await queue.broker.dequeue(timeout=0)
    assert claimed is not None
    assert claimed.id == task_id
    queue.broker._held.pop(task_id)  # this process stops renewing it, as if it had died
    await queue.raw.set(queue.key("seq"), "garbage")

    # When the heartbeat finds the lease expired, it queues the task again
    queue.clock.advance(queue.broker.lease_seconds + 1)
    await queue.broker.heartbeat()

    # Then the task is PENDING in the ready set, and runs
    stored = await queue.broker.get_task(task_id)
    assert stored is not None
    assert stored.status is TaskStatus.PENDING
    assert (await queue.broker.count_by_status())[TaskStatus.PENDING] == 1
    await assert_seq_repaired(queue, logs)


# -- task records with a field that is garbage or missing, in each queue structure ---------

MISSING = ""  # a field value that stands for "delete the field"

#: Fields a claim reads or a worker decodes (those a claim writes, such as started_at, or
#: clears, such as progress, are repaired by it: see test_a_field_the_claim_clears).

FIELDS = {
    "name missing": ("name", MISSING),
    "payload missing": ("payload", MISSING),
    "payload not JSON": ("payload", "{'single': 'quotes'}"),
    "priority missing": ("priority", MISSING),
    "priority nan": ("priority", "nan"),
    "priority text": ("priority", "high"),
    "created_at text": ("created_at", "yesterday"),
    "scheduled_at missing": ("scheduled_at", MISSING),
    "scheduled_at nan": ("scheduled_at", "nan"),
    "status missing": ("status", MISSING),
    "status unknown": ("status", "MAYBE"),
    "attempts text": ("attempts", "once"),
    "deliveries text": ("deliveries", "twice"),
    "max_retries text": ("max_retries", "some"),
    "timeout_seconds text": ("timeout_seconds", "soon"),
    "result not JSON": ("result", "{"),
    "attempt error not JSON": ("err:1", "{"),
    "attempt error number": ("err:first", "{}"),
    "trace_context a list": ("trace_context", '["traceparent"]'),
}


async def write_record(queue: Queue, where: str, name: str, value: str) -> tuple[str, str]:
    """A task record written by hand into ``where`` with ``name`` set to ``value`` (or
    deleted); returns its id and its ready entry."""
    task_id = f"bad-{uuid.uuid4().hex}"
    now_ms = int(queue.clock() * 1000)
    member = f"{now_ms - 1000:015d}:{10**12:016d}:{task_id}"
    fields = {
        "name": "ok",
        "payload": "{}",
        "priority": "0",
        "created_at": repr(queue.clock()),
        "scheduled_at": repr(queue.clock()),
        "status": "PENDING",
        "attempts": "0",
        "deliveries": "0",
        "max_retries": "0",
    }
    if where == "ready":
        fields["member"] = member
        await queue.raw.zadd(queue.key("ready"), {member: 0})
    elif where == "delayed":
        await queue.raw.zadd(queue.key("delayed"), {task_id: now_ms - 1000})
    else:  # claimed by a worker that died: its lease ran out a second ago
        fields.update(status="PROCESSING", claim_token="gone:1", attempts="1", deliveries="1")
        fields["started_at"] = repr(queue.clock() - 10)
        await queue.raw.zadd(queue.key("processing"), {task_id: now_ms - 1000})
    if value == MISSING:
        fields.pop(name, None)
    else:
        fields[name] = value
    items = [x for pair in fields.items() for x in pair]
    await queue.raw.hset(queue.key(f"task:{task_id}"), items=items)
    return task_id, member


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["ready", "delayed", "processing"])
@pytest.mark.parametrize(("name", "value"), FIELDS.values(), ids=FIELDS.keys())
async def test_task_record_with_a_bad_field(
    queue: Queue, logs: pytest.LogCaptureFixture, where: str, name: str, value: str
) -> None:
    # Given valid tasks, and among them a task record with one bad field
    before = await queue.add(delayed=False)
    task_id, member = await write_record(queue, where, name, value)
    after = await queue.add(delayed=False)

    # When the heartbeat recovers expired leases and workers drain the queue
    await queue.broker.heartbeat()
    workers = queue.service.start_workers(2)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)

    # Then the valid tasks completed, nothing failed, and the bad record never ran...
    valid = before + after
    assert {task_id: queue.runs[task_id] for task_id in valid} == dict.fromkeys(valid, 1)
    assert queue.runs[task_id] == 0
    failures = [r for r in logs.records if getattr(r, "katana_event", "") == "broker_error"]
    assert not failures, [r.getMessage() for r in failures]
    assert not any(worker.done() for worker in workers)
    # ...it is in quarantine, logged by name, and no longer a task
    notes = await queue.broker.quarantined(limit=1000)
    assert [n for n in notes if n.get("entry") in (task_id, member)], notes
    assert any(r.levelno >= logging.WARNING and task_id in r.getMessage() for r in logs.records)
    assert await queue.broker.get_task(task_id) is None
    counts = await queue.broker.count_by_status()
    assert counts[TaskStatus.COMPLETED] == len(valid)
    assert counts[TaskStatus.PENDING] == counts[TaskStatus.PROCESSING] == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["ready", "delayed", "processing"])
async def test_a_field_the_claim_clears(queue: Queue, where: str) -> None:
    # Given a task record whose progress is garbage (each attempt starts without progress)
    task_id, _ = await write_record(queue, where, "progress", "half")

    # When the heartbeat recovers expired leases and a worker drains the queue
    await queue.broker.heartbeat()
    queue.service.start_workers(1)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)

    # Then the claim cleared the garbage and the task ran once, like any other
    assert queue.runs[task_id] == 1
    stored = await queue.broker.get_task(task_id)
    assert stored is not None
    assert (stored.status, stored.progress) == (TaskStatus.COMPLETED, None)


@pytest.mark.parametrize("where", ["ready", "delayed", "processing"])
async def test_stray_entry_for_a_finished_task(
    queue: Queue, logs: pytest.LogCaptureFixture, where: str
) -> None:
    # Given a completed task, and an entry for it in a queue structure (no transition leaves
    # one there: garbage)
    task_id, member = await write_record(queue, where, "status", "COMPLETED")

    # When the heartbeat and a claim meet the entry
    await queue.broker.heartbeat()
    assert await queue.broker.dequeue(timeout=0) is None

    # Then the entry is quarantined as stray, and the task record is left as it was
    notes = await queue.broker.quarantined()
    assert [n["reason"] for n in notes if n.get("entry") in (task_id, member)] == [
        f"stray {where} entry for a task in status COMPLETED"
    ]
    assert await queue.raw.hget(queue.key(f"task:{task_id}"), "status") == b"COMPLETED"


async def test_a_claim_given_back_with_garbage_counters_is_quarantined(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    # Given a task claimed ahead of need, whose attempts counter turns to garbage meanwhile
    task_id = (await queue.service.add_task("ok")).id
    claimed = await queue.broker.dequeue(timeout=0)
    assert claimed is not None
    await queue.raw.hset(queue.key(f"task:{task_id}"), "attempts", "many")

    # When no worker takes it and the claim is undone (attempts and deliveries wound back)
    given_back = await queue.broker._undo_claim(claimed)

    # Then the record is quarantined instead of half given back, and the queue is empty
    assert given_back is False
    notes = await queue.broker.quarantined()
    assert [n["entry"] for n in notes] == [task_id]
    assert await queue.broker.get_task(task_id) is None
    counts = await queue.broker.count_by_status()
    assert counts[TaskStatus.PENDING] == counts[TaskStatus.PROCESSING] == 0


@pytest.mark.parametrize("garbage", [string("x"), string("1"), a_hash], ids=["x", "1", "hash"])
async def test_garbage_in_a_periodic_slot_key(
    queue: Queue, logs: pytest.LogCaptureFixture, garbage: Writer
) -> None:
    # Given garbage (no expiry) under the key of a periodic slot that nobody took
    await garbage(queue.raw, queue.key("slot:periodic:job:2026-01-01T00:00:00"))

    # When the scheduler fires the slot, the task is stored (once), and runs
    task = Task(name="ok", payload={}, scheduled_at=datetime.fromtimestamp(queue.clock(), UTC))
    assert await queue.broker.enqueue_in_slot(task, "periodic:job:2026-01-01T00:00:00", 60)
    assert not await queue.broker.enqueue_in_slot(task, "periodic:job:2026-01-01T00:00:00", 60)
    queue.service.start_workers(1)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)
    assert queue.runs[task.id] == 1

    # Then the garbage was moved aside with a note
    key = queue.key("slot:periodic:job:2026-01-01T00:00:00")
    assert [n["entry"] for n in await queue.broker.quarantined()] == [key]
    assert 0 < await queue.raw.pttl(key) <= 60_000


async def test_garbage_in_the_unique_key_index(queue: Queue) -> None:
    # Given unique-key entries that point at no task, at garbage, and at a finished task
    done = await queue.service.add_task("ok", unique_key="done")
    queue.service.start_workers(2)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)
    await queue.raw.set(queue.key("task:not-a-hash"), "x")
    await queue.raw.hset(
        queue.key("unique"),
        items=["ghost", "no-such-task", "string", "not-a-hash", "done", done.id],
    )

    # When tasks with those unique keys are added, each is stored and runs
    added = [await queue.service.add_task("ok", unique_key=k) for k in ("ghost", "string", "done")]
    await queue.service.wait_idle(timeout=WAIT_SECONDS)

    assert len({task.id for task in added} | {done.id}) == 4
    assert all(queue.runs[task.id] == 1 for task in added)
    # ...and each entry was released when its task finished
    assert await queue.raw.hgetall(queue.key("unique")) == {}


async def test_garbage_under_the_paused_key_pauses_the_queue(queue: Queue) -> None:
    # The key's presence is the flag: garbage of any Redis type there reads as paused, and
    # resuming deletes it
    await a_hash(queue.raw, queue.key("paused"))
    assert await queue.broker.is_paused() is True

    await queue.broker.set_paused(False)
    added = await queue.add(delayed=False)
    queue.service.start_workers(2)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)
    assert all(queue.runs[task_id] == 1 for task_id in added)


@pytest.mark.parametrize("score", [-5, float("-inf")], ids=["negative", "-inf"])
async def test_delayed_entry_with_a_due_time_before_1970(
    queue: Queue, logs: pytest.LogCaptureFixture, score: float
) -> None:
    # Given a valid delayed task whose delayed entry's score was overwritten with garbage
    task_id = (await queue.service.add_task("ok", delay_seconds=DELAY_SECONDS)).id
    await queue.raw.zadd(queue.key("delayed"), {task_id: score})

    # When a claim moves it to the ready set, it is due at once, and runs
    queue.service.start_workers(1)
    await queue.service.wait_idle(timeout=WAIT_SECONDS)

    assert queue.runs[task_id] == 1
    assert await queue.broker.quarantined() == []


async def test_expired_lease_with_a_nan_lost_counter(queue: Queue) -> None:
    # Given a task whose worker died, with 'nan' in its count of lost workers
    task_id, _ = await write_record(queue, "processing", "lost", "nan")

    # When the heartbeat recovers its lease, the counter counts as used up: the task is DEAD
    await queue.broker.heartbeat()

    task = await queue.broker.get_task(task_id)
    assert task is not None
    assert task.status is TaskStatus.DEAD


async def test_quarantined_with_garbage_under_the_quarantine_key(
    queue: Queue, logs: pytest.LogCaptureFixture
) -> None:
    # Reading the notes does not fail on garbage there (no script has moved it aside yet)...
    await string("not a list")(queue.raw, queue.key("quarantine"))
    assert await queue.broker.quarantined() == []
    assert any("does not hold a quarantine list" in line for line in quarantine_notes(logs))

    # ...and the next script that writes moves it aside, with a note in a fresh list
    await queue.broker.count_by_status()
    [note] = await queue.broker.quarantined()
    assert note["entry"] == queue.key("quarantine")


async def test_expired_lease_of_a_task_with_no_record(queue: Queue) -> None:
    # Given a lease in the processing set for a task that has no record
    await queue.raw.zadd(queue.key("processing"), {"ghost": int(queue.clock() * 1000) - 1000})

    # When the heartbeat recovers expired leases, the entry goes to quarantine
    await queue.broker.heartbeat()

    notes = await queue.broker.quarantined()
    assert [(n["entry"], n["reason"]) for n in notes] == [
        ("ghost", "queue entry for task ghost has no task record")
    ]
    assert await queue.raw.zcard(queue.key("processing")) == 0

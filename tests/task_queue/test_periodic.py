"""Periodic tasks on every broker: slots fire once, on time, from any number of services."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.errors import (
    BrokerUnavailableError,
    InvalidTaskError,
    ServiceStateError,
    UnknownTaskError,
)
from katana.task_queue.listing import TaskQuery
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.models import Task
    from katana.task_queue.testing import FakeClock

GUARD_SECONDS = 10.0


class SchedulerLog(logging.Handler):
    """The slots schedulers fired or found taken, as they log them."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[tuple[str, str]] = []
        self._pending: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "katana_event", "")
        if event.startswith("periodic_"):
            entry = (event, str(getattr(record, "periodic_slot", "")))
            self.records.append(entry)
            self._pending.put_nowait(entry)

    async def next(self, *events: str) -> tuple[str, str]:
        """The next of ``events`` a scheduler logs."""
        async with asyncio.timeout(GUARD_SECONDS):
            while True:
                entry = await self._pending.get()
                if entry[0] in events:
                    return entry

    def count(self, event: str) -> int:
        return sum(1 for logged, _ in self.records if logged == event)


@pytest.fixture
def scheduler_log() -> Iterator[SchedulerLog]:
    log = SchedulerLog()
    katana_logger = logging.getLogger("katana.task_queue")
    level = katana_logger.level
    katana_logger.setLevel(logging.DEBUG)
    katana_logger.addHandler(log)
    yield log
    katana_logger.removeHandler(log)
    katana_logger.setLevel(level)


async def _noop(task: Task) -> None:
    return None


@pytest.fixture
async def service(broker: AbstractBroker, clock: FakeClock) -> AsyncIterator[TaskQueueService]:
    service = TaskQueueService(broker, {"tick": _noop, "report": _noop}, clock=clock)
    yield service
    await service.shutdown(timeout=1)


def _at(clock: FakeClock) -> datetime:
    return datetime.fromtimestamp(clock(), UTC)


def _move_to(clock: FakeClock, instant: datetime) -> None:
    clock.advance(instant.timestamp() - clock())


def _next_minute(clock: FakeClock) -> datetime:
    return datetime.fromtimestamp(math.floor(clock() / 60) * 60 + 60, UTC)


async def _unique_keys(broker: AbstractBroker, name: str) -> list[str]:
    page = await broker.list_tasks(TaskQuery(name=name), limit=100)
    return sorted(task.unique_key or "" for task in page.tasks)


def _slot_key(job: str, slot: datetime) -> str:
    return f"periodic:{job}:{slot.isoformat()}"


async def test_an_every_60_job_fires_once_per_minute_as_the_clock_moves(
    service: TaskQueueService, broker: AbstractBroker, clock: FakeClock, scheduler_log: SchedulerLog
) -> None:
    # Given a job every 60 s, the workers (and so the scheduler) running
    service.add_periodic("tick", every=60, payload={"n": 1})
    first = _next_minute(clock)
    service.start_workers(1)

    # When the clock moves three minutes, one at a time
    for _ in range(3):
        clock.advance(60)
        await scheduler_log.next("periodic_fired")

    # Then there are exactly three tasks, one per minute on the minute, with the payload
    slots = [first + timedelta(minutes=i) for i in range(3)]
    assert await _unique_keys(broker, "tick") == [_slot_key("tick", slot) for slot in slots]
    page = await broker.list_tasks(TaskQuery(name="tick"))
    assert all(task.payload == {"n": 1} for task in page.tasks)
    assert service.periodic_jobs[0].next_run_at == slots[-1] + timedelta(minutes=1)


async def test_a_cron_job_fires_at_its_utc_instants(
    service: TaskQueueService, broker: AbstractBroker, clock: FakeClock, scheduler_log: SchedulerLog
) -> None:
    # Given a job every five minutes by cron, and the next five-minute mark
    service.add_periodic("report", cron="*/5 * * * *")
    mark = datetime.fromtimestamp(math.floor(clock() / 300) * 300 + 300, UTC)
    assert service.periodic_jobs[0].next_run_at == mark
    service.start_workers(1)

    # When the clock reaches the mark, then the next one, then the one after by way of a
    # second before it
    _move_to(clock, mark - timedelta(seconds=1))
    clock.advance(1)
    assert await scheduler_log.next("periodic_fired") == (
        "periodic_fired",
        _slot_key("report", mark),
    )
    _move_to(clock, mark + timedelta(minutes=5))
    await scheduler_log.next("periodic_fired")
    _move_to(clock, mark + timedelta(minutes=9, seconds=59))
    _move_to(clock, mark + timedelta(minutes=10))
    await scheduler_log.next("periodic_fired")

    # Then it fired at exactly those marks, and at nothing in between
    marks = [mark + timedelta(minutes=m) for m in (0, 5, 10)]
    assert await _unique_keys(broker, "report") == [_slot_key("report", m) for m in marks]
    assert all(m.minute % 5 == 0 and m.second == 0 for m in marks)


async def test_two_services_sharing_a_queue_create_one_task_per_slot(
    service: TaskQueueService, broker: AbstractBroker, clock: FakeClock, scheduler_log: SchedulerLog
) -> None:
    # Given a second service on the same queue (the same in-memory broker, or another
    # RedisBroker on the same Redis queue), both scheduling the same job
    other_broker = broker
    if isinstance(broker, RedisBroker):
        other_broker = RedisBroker(broker.url, queue=broker.queue, clock=clock)
    other = TaskQueueService(other_broker, {"tick": _noop}, clock=clock)
    try:
        for each in (service, other):
            each.add_periodic("tick", every=timedelta(minutes=1))
            each.start_workers(1)

        # When three minutes pass, each service having its say on each slot
        for _ in range(3):
            clock.advance(60)
            outcomes = {
                (await scheduler_log.next("periodic_fired", "periodic_slot_lost"))[0]
                for _ in range(2)
            }
            assert outcomes == {"periodic_fired", "periodic_slot_lost"}
    finally:
        await other.shutdown(timeout=1)
        if other_broker is not broker:
            await other_broker.close()

    # Then each slot made one task
    first = _next_minute(clock) - timedelta(minutes=3)
    slots = [first + timedelta(minutes=i) for i in range(3)]
    assert await _unique_keys(broker, "tick") == [_slot_key("tick", slot) for slot in slots]


async def test_a_scheduler_starts_at_the_next_slot_and_skips_to_the_latest_one_it_missed(
    service: TaskQueueService, broker: AbstractBroker, clock: FakeClock, scheduler_log: SchedulerLog
) -> None:
    # Given a job every minute, started half a minute past a minute
    _move_to(clock, _next_minute(clock) + timedelta(seconds=30))
    service.add_periodic("tick", every=60)
    service.start_workers(1)

    # When the process is "blocked" for ten minutes
    clock.advance(600)
    await scheduler_log.next("periodic_fired")

    # Then only the latest slot fired, once, and the skipped ones were reported
    latest = _next_minute(clock) - timedelta(minutes=1)
    assert latest == _at(clock).replace(second=0, microsecond=0)
    assert await _unique_keys(broker, "tick") == [_slot_key("tick", latest)]
    assert scheduler_log.count("periodic_slots_skipped") == 1
    assert service.periodic_jobs[0].next_run_at == latest + timedelta(minutes=1)


async def test_a_broker_outage_is_logged_and_the_slot_fired_once_it_is_back(
    service: TaskQueueService,
    broker: AbstractBroker,
    clock: FakeClock,
    scheduler_log: SchedulerLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a broker whose first slot claim fails
    enqueue_in_slot = broker.enqueue_in_slot
    failures = [BrokerUnavailableError("down")]

    async def flaky_enqueue(task: Task, key: str, ttl_seconds: float) -> bool:
        if failures:
            raise failures.pop()
        return await enqueue_in_slot(task, key, ttl_seconds)

    monkeypatch.setattr(broker, "enqueue_in_slot", flaky_enqueue)
    service.add_periodic("tick", every=60)
    slot = _next_minute(clock)
    service.start_workers(1)

    # When the slot comes, fails, and the scheduler tries again (the clock moving wakes it)
    clock.advance(60)
    await scheduler_log.next("periodic_fire_failed")
    clock.advance(0.001)
    await scheduler_log.next("periodic_fired")

    # Then the slot made its one task
    assert await _unique_keys(broker, "tick") == [_slot_key("tick", slot)]


async def test_a_job_added_while_running_fires_from_its_next_slot(
    service: TaskQueueService, broker: AbstractBroker, clock: FakeClock, scheduler_log: SchedulerLog
) -> None:
    service.start_workers(1)
    job = service.add_periodic("tick", every=60, key="tick-live")

    clock.advance(60)
    await scheduler_log.next("periodic_fired")

    assert await _unique_keys(broker, "tick") == [_slot_key("tick-live", job.next_run_at)]


async def test_shutdown_stops_the_scheduler(
    service: TaskQueueService, broker: AbstractBroker, clock: FakeClock
) -> None:
    service.add_periodic("tick", every=60)
    service.start_workers(1)
    (scheduler,) = [t for t in asyncio.all_tasks() if t.get_name() == "katana-scheduler"]

    await service.shutdown(timeout=1)
    clock.advance(600)

    assert scheduler.done()
    assert await _unique_keys(broker, "tick") == []
    with pytest.raises(ServiceStateError):
        service.add_periodic("report", every=60)


async def test_periodic_jobs_lists_each_job_with_its_schedule_and_next_run(
    service: TaskQueueService, clock: FakeClock
) -> None:
    service.add_periodic("tick", every=30)
    service.add_periodic("report", cron="0 9 * * 1", key="weekly-report")

    jobs = service.periodic_jobs

    assert [(job.key, job.name, job.schedule) for job in jobs] == [
        ("tick", "tick", "every 30s"),
        ("weekly-report", "report", "cron 0 9 * * 1"),
    ]
    assert jobs[0].next_run_at == datetime.fromtimestamp(math.floor(clock() / 30) * 30 + 30, UTC)
    assert jobs[1].next_run_at.weekday() == 0
    assert (jobs[1].next_run_at.hour, jobs[1].next_run_at.minute) == (9, 0)
    assert jobs[1].next_run_at > _at(clock)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of cron= .* or every="),
        ({"cron": "* * * * *", "every": 60}, "exactly one of cron="),
        ({"cron": "not a cron"}, "bad cron expression 'not a cron'"),
        ({"cron": "61 * * * *"}, "bad cron expression"),
        ({"every": 0}, "every must be a positive interval"),
        ({"every": -5}, "every must be a positive interval"),
        ({"every": timedelta(0)}, "every must be a positive interval"),
        ({"every": math.nan}, "every must be a positive interval"),
        ({"every": True}, "every must be a number of seconds or a timedelta"),
        ({"every": "60"}, "every must be a number of seconds or a timedelta"),
        ({"every": 60, "priority": 1.5}, "priority"),
        ({"every": 60, "payload": {"x": {1, 2}}}, "payload"),
        ({"every": 60, "key": ""}, "unique_key"),
        ({"every": 60, "key": "k" * 401}, "at most 400 characters"),
    ],
)
async def test_invalid_periodic_arguments_raise(
    service: TaskQueueService, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidTaskError, match=message):
        service.add_periodic("tick", **kwargs)

    assert service.periodic_jobs == []


async def test_a_periodic_task_must_be_registered_and_its_key_unused(
    service: TaskQueueService,
) -> None:
    with pytest.raises(UnknownTaskError, match="'nope'"):
        service.add_periodic("nope", every=60)
    service.add_periodic("tick", every=60)
    with pytest.raises(InvalidTaskError, match="key 'tick' exists already"):
        service.add_periodic("tick", cron="* * * * *")

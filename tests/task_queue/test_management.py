"""QueueManager on each broker: overview, listings, single and bulk actions, pause."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from katana.task_queue.errors import (
    InvalidTaskError,
    TaskFailedError,
    TaskNotFoundError,
    TaskStateError,
    UnknownTaskError,
)
from katana.task_queue.listing import MAX_PAGE_SIZE, TaskQuery
from katana.task_queue.management import QueueManager
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock


async def succeed(task: Task) -> str:
    return f"done {task.payload.get('n')}"


async def fail(task: Task) -> None:
    raise ValueError(f"bad input {task.payload.get('n')}")


@pytest.fixture
async def service(broker: AbstractBroker, clock: FakeClock) -> AsyncIterator[TaskQueueService]:
    service = TaskQueueService(broker, {"ok": succeed, "bad": fail}, clock=clock)
    yield service
    await service.shutdown(timeout=5)


@pytest.fixture
def manager(broker: AbstractBroker, service: TaskQueueService, clock: FakeClock) -> QueueManager:
    return QueueManager(broker, service, clock=clock)


async def run_all(service: TaskQueueService) -> None:
    service.start_workers(2)
    await service.wait_idle(timeout=10)


async def test_overview_counts_waiting_age_finishes_and_workers(
    manager: QueueManager, service: TaskQueueService, clock: FakeClock
) -> None:
    for n in range(3):
        await service.add_task("ok", {"n": n})
    await service.add_task("bad", {"n": 9})
    clock.advance(42)

    before = await manager.overview(minutes=5)

    assert before.counts[TaskStatus.PENDING] == 4
    assert 42 <= before.oldest_pending_age_seconds < 43
    assert before.finished_per_minute == [0] * 5
    assert before.workers == []
    assert not before.paused

    await run_all(service)
    await service.add_task("ok", {"n": 10}, delay_seconds=3600)
    after = await manager.overview(minutes=5)

    assert after.counts[TaskStatus.COMPLETED] == 3
    assert after.counts[TaskStatus.FAILED] == 1
    assert after.counts[TaskStatus.PENDING] == 1  # the delayed one
    assert after.oldest_pending_age_seconds == 0
    assert sum(after.finished_per_minute) == 4
    assert after.finished_per_minute[-1] == 4  # all in the current minute
    [worker] = after.workers
    assert worker.id == service.worker_id
    assert worker.concurrency == 2
    assert sorted(worker.task_names) == ["bad", "ok"]


async def test_overview_refuses_a_bad_window(manager: QueueManager) -> None:
    with pytest.raises(ValueError, match="minutes"):
        await manager.overview(minutes=0)


async def test_task_detail_and_unknown_ids(
    manager: QueueManager, service: TaskQueueService
) -> None:
    task = await service.add_task("bad", {"n": 1})
    await run_all(service)

    detail = await manager.task(task.id)

    assert detail.status is TaskStatus.FAILED
    assert detail.error == "ValueError: bad input 1"
    assert detail.traceback is not None
    assert "raise ValueError" in detail.traceback
    with pytest.raises(TaskNotFoundError, match="no task has id 'nope'"):
        await manager.task("nope")


async def test_retry_runs_a_failed_task_again_and_refuses_unfinished_ones(
    manager: QueueManager, service: TaskQueueService, clock: FakeClock
) -> None:
    failed = await service.add_task("bad", {"n": 1})
    waiting = await service.add_task("ok", {"n": 2}, delay_seconds=60)
    service.start_workers(1)
    with pytest.raises(TaskFailedError, match="bad input 1"):
        await service.wait_for(failed.id, timeout=10)

    again = await manager.retry(failed.id)

    assert again.status in (TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.FAILED)
    with pytest.raises(TaskFailedError, match="bad input 1"):
        await service.wait_for(failed.id, timeout=10)
    # Its second run had the full budget again; the history holds both runs' failures.
    rerun = await manager.task(failed.id)
    assert (rerun.attempts, [entry["attempt"] for entry in rerun.errors]) == (1, [1, 2])
    with pytest.raises(TaskStateError, match="only finished tasks retry"):
        await manager.retry(waiting.id)
    with pytest.raises(TaskNotFoundError):
        await manager.retry("missing")


async def test_cancel_and_delete(manager: QueueManager, service: TaskQueueService) -> None:
    scheduled = await service.add_task("ok", {"n": 1}, delay_seconds=60)

    cancelled = await manager.cancel(scheduled.id)

    assert cancelled.status is TaskStatus.CANCELLED
    with pytest.raises(TaskStateError, match="already finished"):
        await manager.cancel(scheduled.id)
    pending = await service.add_task("ok", {"n": 2}, delay_seconds=60)
    with pytest.raises(TaskStateError, match="cancel it before deleting"):
        await manager.delete(pending.id)
    await manager.delete(scheduled.id)
    with pytest.raises(TaskNotFoundError):
        await manager.task(scheduled.id)


async def test_bulk_actions_report_what_they_skipped(
    manager: QueueManager, service: TaskQueueService
) -> None:
    first = await service.add_task("ok", {"n": 1}, delay_seconds=60)
    second = await service.add_task("ok", {"n": 2}, delay_seconds=60)

    cancelled = await manager.cancel_many([first.id, second.id, first.id, "ghost"])

    assert cancelled.done == [first.id, second.id]
    assert list(cancelled.skipped) == ["ghost"]  # the repeated id is acted on once
    deleted = await manager.delete_many([first.id, "ghost"])
    assert deleted.done == [first.id]
    retried = await manager.retry_many([second.id])
    assert retried.done == [second.id]
    assert (await manager.task(second.id)).status is TaskStatus.PENDING


async def test_dead_letters_are_redriven_or_purged_by_filter(
    manager: QueueManager, service: TaskQueueService
) -> None:
    for n in range(4):
        await service.add_task("bad", {"n": n, "group": "a" if n % 2 else "b"})
    await run_all(service)
    letters = await manager.dead_letters()
    assert letters.total == 4

    purged = await manager.delete_matching(TaskQuery(status=TaskStatus.FAILED, text='"group":"a"'))

    assert purged == 2
    left = await manager.dead_letters(limit=10)
    assert sorted(task.payload["n"] for task in left.tasks) == [0, 2]
    redriven = await manager.retry_matching(TaskQuery(name="bad"))
    assert redriven == 2
    await service.wait_idle(timeout=10)  # they ran, and failed, once more each
    again = await manager.dead_letters(limit=10)
    assert sorted((task.payload["n"], len(task.errors)) for task in again.tasks) == [(0, 2), (2, 2)]
    with pytest.raises(TaskStateError, match="finished tasks only"):
        await manager.retry_matching(TaskQuery(status=TaskStatus.PENDING))


async def test_dead_letters_of_both_statuses_are_listed_and_acted_on_past_one_page(
    manager: QueueManager, broker: AbstractBroker
) -> None:
    # Given more FAILED tasks than one page holds, and two DEAD ones
    failed = [Task(name="bad") for _ in range(MAX_PAGE_SIZE + 5)]
    dead = [Task(name="bad") for _ in range(2)]
    await broker.enqueue_many([*failed, *dead])
    for task in failed:
        await broker.update_task_status(task.id, TaskStatus.FAILED)
    for task in dead:
        await broker.update_task_status(task.id, TaskStatus.DEAD)

    # When the last page of all dead letters is read, Then it holds the last seven
    page = await manager.dead_letters(limit=10, offset=MAX_PAGE_SIZE)
    assert (page.total, len(page.tasks)) == (MAX_PAGE_SIZE + 7, 7)
    only_dead = await manager.dead_letters(TaskQuery(status=TaskStatus.DEAD))
    assert {task.id for task in only_dead.tasks} == {task.id for task in dead}

    # When they are all deleted, Then every one of both statuses is gone
    assert await manager.delete_matching(TaskQuery()) == MAX_PAGE_SIZE + 7
    assert (await manager.dead_letters()).total == 0


async def test_dead_letters_refuse_a_filter_outside_failed_and_dead(manager: QueueManager) -> None:
    with pytest.raises(TaskStateError, match="not COMPLETED"):
        await manager.dead_letters(TaskQuery(status=TaskStatus.COMPLETED))
    with pytest.raises(TaskStateError, match="due time"):
        await manager.dead_letters(TaskQuery(scheduled=True))


async def test_scheduled_lists_tasks_not_yet_due(
    manager: QueueManager, service: TaskQueueService
) -> None:
    later = await service.add_task("ok", {"n": 1}, delay_seconds=600)
    sooner = await service.add_task("ok", {"n": 2}, delay_seconds=60)
    await service.add_task("ok", {"n": 3})

    page = await manager.scheduled()

    assert [task.id for task in page.tasks] == [sooner.id, later.id]


async def test_pause_stops_workers_claiming_until_resumed(
    manager: QueueManager, service: TaskQueueService
) -> None:
    await manager.pause()
    task = await service.add_task("ok", {"n": 1})
    service.start_workers(1)
    with pytest.raises(TimeoutError):
        await service.wait_for(task.id, timeout=0.3)
    assert (await manager.task(task.id)).status is TaskStatus.PENDING
    assert (await manager.overview()).paused

    await manager.resume()

    assert await service.wait_for(task.id, timeout=5) == "done 1"


async def test_enqueue_checks_names_against_the_service(manager: QueueManager) -> None:
    task = await manager.enqueue("ok", {"n": 1}, priority=3, delay_seconds=5)
    assert (task.priority, task.status) == (3, TaskStatus.PENDING)
    with pytest.raises(UnknownTaskError):
        await manager.enqueue("nope", {})


@pytest.mark.parametrize(
    ("name", "payload", "priority", "message"),
    [
        ("", {}, 0, "task name"),
        ("x" * 201, {}, 0, "task name"),
        ("job", {"bad": object()}, 0, "JSON"),
        ("job", {}, "high", "priority"),
    ],
)
async def test_enqueue_without_a_service_still_checks_its_input(
    broker: AbstractBroker, name: str, payload: dict[str, Any], priority: Any, message: str
) -> None:
    manager = QueueManager(broker)
    with pytest.raises(InvalidTaskError, match=message):
        await manager.enqueue(name, payload, priority=priority)
    assert (await broker.list_tasks(TaskQuery())).total == 0


async def test_enqueue_without_a_service_accepts_any_name(broker: AbstractBroker) -> None:
    task = await QueueManager(broker).enqueue("runs.elsewhere", {"a": 1})
    stored = await broker.get_task(task.id)
    assert stored is not None
    assert (stored.name, stored.payload) == ("runs.elsewhere", {"a": 1})


@pytest.mark.parametrize("with_service", [True, False])
async def test_enqueue_with_a_task_id_twice_returns_the_first_task(
    broker: AbstractBroker, service: TaskQueueService, with_service: bool
) -> None:
    manager = QueueManager(broker, service if with_service else None)

    first = await manager.enqueue("ok", {"n": 1}, task_id="relay-7")
    again = await manager.enqueue("ok", {"n": 2}, task_id="relay-7")

    assert (first.id, again.id, again.payload) == ("relay-7", "relay-7", {"n": 1})
    assert (await broker.list_tasks(TaskQuery())).total == 1
    with pytest.raises(InvalidTaskError, match="task_id"):
        await manager.enqueue("ok", task_id="no spaces")

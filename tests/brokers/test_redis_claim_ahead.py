"""RedisBroker's claim-ahead: what a consuming process holds beyond its waiting workers.

Each test first runs a few tasks that finish at once, so the broker has seen short tasks and a
backlog and claims one task ahead of its (single) consumer; the tests then check where that
task goes: to the next ``dequeue`` in priority order, back to its place in the queue after the
hold time, on ``pause()``, at shutdown, or to CANCELLED when it is cancelled.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker import redis as redis_broker_module
from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.models import TaskStatus
from katana.task_queue.testing._support import make_task

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from katana.task_queue.models import Task

FAST_TASKS = 5
QUEUED = 20


@pytest.fixture
async def broker(redis_url: str, queue_name: str) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_url, queue=queue_name)
    yield broker
    if not broker._closed:
        await broker.purge()
        await broker.close()
    async with RedisBroker(redis_url, queue=queue_name) as cleaner:
        await cleaner.purge()


@pytest.fixture
def long_hold(broker: RedisBroker) -> None:
    """Tasks claimed ahead stay claimed for the whole test unless something gives them back."""
    broker._ahead.hold_seconds = 60.0


async def eventually(check: Callable[[], object], what: str, timeout: float = 3.0) -> None:
    """Wait until ``check()`` (sync or async) is true, failing with ``what`` after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            outcome = check()
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
            if outcome:
                return
            await asyncio.sleep(0.01)
    pytest.fail(f"timed out waiting until {what}")  # pragma: no cover


async def run_fast_tasks(broker: RedisBroker) -> list[Task]:
    """Queue ``QUEUED`` tasks, then take and complete ``FAST_TASKS`` of them at once."""
    queued = [make_task(payload={"n": n}) for n in range(QUEUED)]
    await broker.enqueue_many(queued)
    outcomes = []
    for _ in range(FAST_TASKS):
        task = await broker.dequeue(timeout=5)
        assert task is not None
        outcomes.append(broker.complete_soon(task.id, None, claim_token=task.claim_token))
    assert all(await asyncio.gather(*outcomes))
    return queued


async def processing(broker: RedisBroker) -> int:
    return (await broker.count_by_status())[TaskStatus.PROCESSING]


async def claimed_ahead(broker: RedisBroker, queued: list[Task]) -> Task:
    """The one task this consumer claimed ahead: PROCESSING in Redis, never handed to it."""
    await eventually(lambda: broker._ahead, "the broker claimed a task ahead")
    await eventually(
        lambda: _counts_are(broker, processing=1, completed=FAST_TASKS),
        "Redis shows the fast tasks COMPLETED and one task PROCESSING",
    )
    ahead = queued[FAST_TASKS]  # the next one in FIFO order
    stored = await broker.get_task(ahead.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.PROCESSING, 1)
    return ahead


async def _counts_are(broker: RedisBroker, *, processing: int, completed: int) -> bool:
    counts = await broker.count_by_status()
    return (counts[TaskStatus.PROCESSING], counts[TaskStatus.COMPLETED]) == (processing, completed)


async def test_a_task_claimed_ahead_goes_to_the_next_dequeue(
    broker: RedisBroker, long_hold: None
) -> None:
    queued = await run_fast_tasks(broker)
    ahead = await claimed_ahead(broker, queued)

    task = await broker.dequeue(timeout=0)

    assert task is not None
    assert task.id == ahead.id
    assert await broker.mark_complete(task.id, claim_token=task.claim_token)


async def test_tasks_claimed_ahead_are_handed_out_by_priority(broker: RedisBroker) -> None:
    # Given a routine task claimed first and an urgent one claimed after it
    routine, urgent = make_task(priority=5), make_task(priority=0)
    await broker.enqueue(routine)
    first = await broker.dequeue(timeout=0)
    await broker.enqueue(urgent)
    second = await broker.dequeue(timeout=0)
    assert first is not None
    assert second is not None
    assert (first.id, second.id) == (routine.id, urgent.id)
    # When both wait in the process for a worker (as tasks claimed ahead do)
    broker._deliver(first)
    broker._deliver(second)
    # Then the urgent one goes out first
    taken = [await broker.dequeue(timeout=0), await broker.dequeue(timeout=0)]
    assert [task.id for task in taken if task is not None] == [urgent.id, routine.id]


async def test_a_task_claimed_ahead_that_no_worker_takes_goes_back_in_its_place(
    broker: RedisBroker, redis_url: str, queue_name: str
) -> None:
    broker._ahead.hold_seconds = 0.2
    queued = await run_fast_tasks(broker)
    ahead = await claimed_ahead(broker, queued)

    # When no worker asks for it within the hold time, it is PENDING again, as if never
    # claimed: no attempt, no delivery counted, and first in line again
    await eventually(lambda: not broker._ahead, "the task claimed ahead was given back")
    await eventually(lambda: _counts_are(broker, processing=0, completed=FAST_TASKS), "released")
    stored = await broker.get_task(ahead.id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.started_at) == (TaskStatus.PENDING, 0, None)
    async with RedisBroker(redis_url, queue=queue_name, claim_ahead=False) as other:
        task = await other.dequeue(timeout=1)
        assert task is not None
        assert (task.id, task.attempts) == (ahead.id, 1)
        assert await other.mark_complete(task.id, claim_token=task.claim_token)


async def test_cancelling_a_task_claimed_ahead_ends_it_without_running_it(
    broker: RedisBroker, long_hold: None
) -> None:
    queued = await run_fast_tasks(broker)
    ahead = await claimed_ahead(broker, queued)

    assert await broker.cancel(ahead.id)

    finished = await broker.wait_finished(ahead.id, timeout=3)
    assert finished is not None
    assert finished.status is TaskStatus.CANCELLED
    assert not broker._ahead
    # And the consumer never gets it: the rest of the queue comes out, without it
    handed: list[str] = []
    while (task := await broker.dequeue(timeout=0.5)) is not None:
        handed.append(task.id)
        assert await broker.complete_soon(task.id, None, claim_token=task.claim_token)
    assert ahead.id not in handed
    assert len(handed) == QUEUED - FAST_TASKS - 1


async def test_pausing_from_another_process_gives_back_what_was_claimed_ahead(
    broker: RedisBroker, redis_url: str, queue_name: str, long_hold: None
) -> None:
    queued = await run_fast_tasks(broker)
    ahead = await claimed_ahead(broker, queued)

    async with RedisBroker(redis_url, queue=queue_name) as admin:
        await admin.set_paused(True)

    await eventually(lambda: not broker._ahead, "the pause message reached the consumer")
    await eventually(lambda: _counts_are(broker, processing=0, completed=FAST_TASKS), "released")
    stored = await broker.get_task(ahead.id)
    assert stored is not None
    assert stored.status is TaskStatus.PENDING
    assert await broker.dequeue(timeout=0) is None  # paused: nothing handed out


@pytest.mark.parametrize("how", ["release_claimed_ahead", "close"])
async def test_stopping_gives_back_what_was_claimed_ahead_at_once(
    broker: RedisBroker, redis_url: str, queue_name: str, long_hold: None, how: str
) -> None:
    queued = await run_fast_tasks(broker)
    ahead = await claimed_ahead(broker, queued)

    await getattr(broker, how)()  # what TaskQueueService.shutdown and the worker CLI call

    async with RedisBroker(redis_url, queue=queue_name) as reader:
        stored = await reader.get_task(ahead.id)
        assert stored is not None
        assert (stored.status, stored.attempts) == (TaskStatus.PENDING, 0)
        assert (await reader.count_by_status())[TaskStatus.PROCESSING] == 0


async def test_claims_ahead_only_while_tasks_are_short(broker: RedisBroker) -> None:
    await broker.enqueue_many([make_task() for _ in range(10)])
    # Before any task has finished, the process cannot know: it claims nothing ahead
    task = await broker.dequeue(timeout=5)
    assert task is not None
    assert broker._wanted_ahead(waiting=0) == 0
    # After short tasks, one per worker (the running one here)
    assert await broker.complete_soon(task.id, None, claim_token=task.claim_token)
    task = await broker.dequeue(timeout=5)
    assert task is not None
    assert broker._wanted_ahead(waiting=0) == 1
    # After a task far longer than the limit, none again
    await asyncio.sleep(3 * redis_broker_module._CLAIM_AHEAD_MAX_RUN_SECONDS / 0.2)
    outcome = broker.complete_soon(task.id, None, claim_token=task.claim_token)
    assert broker._wanted_ahead(waiting=1) == 0
    assert await outcome


async def test_claim_ahead_can_be_turned_off(redis_url: str, queue_name: str) -> None:
    async with RedisBroker(redis_url, queue=queue_name, claim_ahead=False) as broker:
        await broker.enqueue_many([make_task() for _ in range(10)])
        for _ in range(3):
            task = await broker.dequeue(timeout=5)
            assert task is not None
            assert await broker.complete_soon(task.id, None, claim_token=task.claim_token)
        assert broker._wanted_ahead(waiting=1) == 0
        await broker.purge()

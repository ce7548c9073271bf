"""Dead letters: failed-for-good tasks listed with their history, redriven, purged."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from katana.task_queue.config import RetryPolicy
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService

from ._clockwork import RetryLog, finish

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

GUARD_SECONDS = 30.0


class Flaky:
    """Fails until ``healed``; counts its runs."""

    def __init__(self) -> None:
        self.healed = False
        self.runs = 0

    async def __call__(self, task: Task) -> str:
        self.runs += 1
        if not self.healed:
            raise ValueError(f"attempt {task.attempts} failed")
        return "healed"


@pytest.fixture
async def flaky() -> Flaky:
    return Flaky()


@pytest.fixture
async def service(
    broker: AbstractBroker, flaky: Flaky, clock: FakeClock
) -> AsyncIterator[TaskQueueService]:
    service = TaskQueueService(broker=broker, clock=clock)
    fast = RetryPolicy(max_retries=2, backoff_base_seconds=0.01, jitter=False)
    service.register("flaky", flaky, retry=fast)
    service.start_workers(2)
    yield service
    await service.shutdown(timeout=1)


async def test_a_task_that_always_fails_is_a_dead_letter_and_redrive_runs_it_again(
    service: TaskQueueService, flaky: Flaky, clock: FakeClock, retries: RetryLog
) -> None:
    # Given a task that failed all 1 + 2 attempts
    task = await finish(service, clock, retries, await service.add_task("flaky"))

    # Then it is listed as a dead letter, with its history
    [letter] = await service.dead_letters()
    assert (letter.id, letter.status, letter.attempts) == (task.id, TaskStatus.FAILED, 3)
    assert [entry["error"] for entry in letter.errors] == [
        f"ValueError: attempt {n} failed" for n in (1, 2, 3)
    ]

    # When it is redriven once the cause is fixed, it runs again and completes
    flaky.healed = True
    assert await service.redrive(task.id) is True
    assert await service.wait_for(task.id, timeout=GUARD_SECONDS) == "healed"
    assert flaky.runs == 4
    assert await service.dead_letters() == []
    assert await service.redrive(task.id) is False  # not a dead letter any more


async def test_a_redriven_task_gets_its_full_retry_budget_again(
    service: TaskQueueService, flaky: Flaky, clock: FakeClock, retries: RetryLog
) -> None:
    # Given a task that failed all 1 + 2 attempts
    task = await finish(service, clock, retries, await service.add_task("flaky"))
    assert flaky.runs == 3

    # When it is redriven while still failing
    assert await service.redrive(task.id) is True
    again = await finish(service, clock, retries, task)

    # Then it ran 1 + 2 attempts again (not one), and its history holds all six, in order
    assert flaky.runs == 6
    assert (again.status, again.attempts) == (TaskStatus.FAILED, 3)
    assert [entry["attempt"] for entry in again.errors] == [1, 2, 3, 4, 5, 6]
    assert [entry["error"] for entry in again.errors] == [
        f"ValueError: attempt {n} failed" for n in (1, 2, 3, 1, 2, 3)
    ]


async def test_redrive_all_and_purge(service: TaskQueueService, flaky: Flaky) -> None:
    tasks = [await service.add_task("flaky", max_retries=0) for _ in range(3)]
    await service.wait_idle(timeout=GUARD_SECONDS)
    assert {letter.id for letter in await service.dead_letters()} == {t.id for t in tasks}
    assert len(await service.dead_letters(limit=2)) == 2
    assert len(await service.dead_letters(limit=2, offset=2)) == 1

    assert await service.redrive_all() == 3
    await service.wait_idle(timeout=GUARD_SECONDS)
    assert len(await service.dead_letters()) == 3  # still failing: back among the letters

    assert await service.purge_dead_letters() == 3
    assert await service.dead_letters() == []
    assert [await service.get_task(task.id) for task in tasks] == [None, None, None]
    counts = await service.broker.count_by_status()
    assert counts[TaskStatus.FAILED] == 0


async def test_unfinished_tasks_are_not_deleted(service: TaskQueueService) -> None:
    task = await service.add_task("flaky", delay_seconds=60)

    assert await service.broker.delete_task(task.id) is False
    with pytest.raises(KeyError):
        await service.broker.delete_task("no-such-task")
    with pytest.raises(ValueError, match="final status"):
        await service.broker.list_finished(TaskStatus.PENDING)

"""wait_for: results, recorded failures and timeouts, without polling hard, on every broker."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.errors import TaskCancelledError, TaskFailedError, TaskNotFoundError
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

GUARD_SECONDS = 30.0


@pytest.fixture
async def service(broker: AbstractBroker, clock: FakeClock) -> AsyncIterator[TaskQueueService]:
    release = asyncio.Event()

    async def add(task: Task) -> int:
        await release.wait()
        return int(task.payload["a"]) + int(task.payload["b"])

    async def explode(task: Task) -> None:
        raise RuntimeError("boom")

    service = TaskQueueService(
        broker=broker, task_executors={"add": add, "explode": explode}, clock=clock
    )
    service.release = release  # type: ignore[attr-defined]  # the tests open the gate
    service.start_workers(2)
    yield service
    release.set()
    await service.shutdown(timeout=1)


async def test_wait_for_returns_the_result_once_the_task_completes(
    service: TaskQueueService, caplog: pytest.LogCaptureFixture
) -> None:
    # Every lifecycle event is kept, so that a failure shows where the task stopped (this
    # test timed out once in a clean-clone CI run on Redis and never again since).
    caplog.set_level(logging.DEBUG, logger="katana")
    task = await service.add_task("add", {"a": 2, "b": 3})
    waiting = asyncio.create_task(service.wait_for(task.id, timeout=GUARD_SECONDS))
    await asyncio.sleep(0.05)  # the waiter is parked while the task is held back
    assert not waiting.done()

    service.release.set()  # type: ignore[attr-defined]

    try:
        assert await waiting == 5
    except TimeoutError:
        stored = await service.get_task(task.id)
        pytest.fail(f"the task did not finish: {stored!r}; broker state: {_state(service)}")


def _state(service: TaskQueueService) -> dict[str, object]:
    """What a consuming broker holds, for a failure message."""
    broker = service.broker
    names = ("_held", "_ahead", "_outcomes", "_waiters", "_claims_in_flight", "_claim_mode")
    return {name: getattr(broker, name) for name in names if hasattr(broker, name)}


async def test_wait_for_raises_the_recorded_failure(service: TaskQueueService) -> None:
    task = await service.add_task("explode")

    with pytest.raises(TaskFailedError) as raised:
        await service.wait_for(task.id, timeout=GUARD_SECONDS)

    failed = raised.value.task
    assert (failed.id, failed.status, failed.error) == (
        task.id,
        TaskStatus.FAILED,
        "RuntimeError: boom",
    )
    assert failed.traceback is not None
    assert "RuntimeError: boom" in failed.traceback


async def test_wait_for_raises_for_a_cancelled_task(service: TaskQueueService) -> None:
    task = await service.add_task("add", {"a": 1, "b": 1}, delay_seconds=60)
    await service.broker.update_task_status(task.id, TaskStatus.CANCELLED)

    with pytest.raises(TaskCancelledError):
        await service.wait_for(task.id, timeout=GUARD_SECONDS)


async def test_wait_for_times_out_when_the_task_does_not_finish(
    service: TaskQueueService,
) -> None:
    task = await service.add_task("add", {"a": 1, "b": 1})
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(TimeoutError):
        await service.wait_for(task.id, timeout=0.3)

    assert 0.25 <= loop.time() - started < 5


async def test_wait_for_an_unknown_id_raises_task_not_found(service: TaskQueueService) -> None:
    with pytest.raises(TaskNotFoundError, match="no-such-task") as caught:
        await service.wait_for("no-such-task", timeout=GUARD_SECONDS)

    assert isinstance(caught.value, KeyError)  # what wait_for raised before: old callers
    assert str(caught.value) == "no task has id 'no-such-task'"  # not KeyError's quoted repr

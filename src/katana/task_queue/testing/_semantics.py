"""Conformance tests for the rules every broker decides alike: unique keys, redrives, cancels."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from ..errors import TaskStateError
from ..models import Task, TaskStatus
from ._support import ContractBase, claim

if TYPE_CHECKING:
    from ..broker.base import AbstractBroker

__all__ = ["SemanticsContract"]


def _keyed(name: str, key: str, *, max_retries: int = 0) -> Task:
    return Task(name=name, unique_key=key, max_retries=max_retries)


async def _fail(broker: AbstractBroker, expected: Task) -> None:
    """Claim ``expected`` (the only due task) and record a final failure of it."""
    claimed = await claim(broker)
    assert claimed.id == expected.id
    assert await broker.mark_failed(claimed.id, "boom", claim_token=claimed.claim_token)


def _attempt_numbers(task: Task | None) -> list[int]:
    assert task is not None
    return [entry["attempt"] for entry in task.errors]


class SemanticsContract(ContractBase):
    async def test_a_unique_key_is_per_queue_not_per_task_name(
        self, broker: AbstractBroker
    ) -> None:
        # Given a task of one name holding key K
        first = _keyed("send_email", "K")
        assert await broker.enqueue_unique(first) is None

        # When a task of another name asks for K
        holder = await broker.enqueue_unique(_keyed("send_sms", "K"))

        # Then it is refused: the key is the queue's, not the name's
        assert holder is not None
        assert holder.id == first.id
        assert (await broker.count_by_status())[TaskStatus.PENDING] == 1

    async def test_a_redriven_task_retakes_its_free_unique_key(
        self, broker: AbstractBroker
    ) -> None:
        # Given task A, holding K, failed for good (K is free)
        first = _keyed("t", "K")
        assert await broker.enqueue_unique(first) is None
        await _fail(broker, first)

        # When A is redriven
        await broker.update_task_status(first.id, TaskStatus.PENDING)

        # Then A holds K again: a new task with K is refused
        holder = await broker.enqueue_unique(_keyed("t", "K"))
        assert holder is not None
        assert holder.id == first.id
        assert (await broker.count_by_status())[TaskStatus.PENDING] == 1

    async def test_a_redrive_is_refused_while_another_task_holds_the_unique_key(
        self, broker: AbstractBroker
    ) -> None:
        # Given task A failed holding K, and task B created with K since
        first = _keyed("t", "K")
        assert await broker.enqueue_unique(first) is None
        await _fail(broker, first)
        second = _keyed("t", "K")
        assert await broker.enqueue_unique(second) is None

        # When A is redriven, it is refused and nothing changes
        with pytest.raises(TaskStateError, match=second.id):
            await broker.update_task_status(first.id, TaskStatus.PENDING)

        stored = await broker.get_task(first.id)
        assert stored is not None
        assert stored.status is TaskStatus.FAILED
        counts = await broker.count_by_status()
        assert (counts[TaskStatus.PENDING], counts[TaskStatus.FAILED]) == (1, 1)
        holder = await broker.enqueue_unique(_keyed("t", "K"))
        assert holder is not None
        assert holder.id == second.id
        # and once B finished, A can run again
        claimed = await claim(broker)
        assert claimed.id == second.id
        assert await broker.mark_complete(claimed.id, claim_token=claimed.claim_token)
        await broker.update_task_status(first.id, TaskStatus.PENDING)
        assert (await claim(broker)).id == first.id

    async def test_a_redriven_task_gets_its_full_retry_budget_again(
        self, broker: AbstractBroker
    ) -> None:
        # Given a task with one retry that used both attempts and failed
        task = Task(name="t", max_retries=1)
        await broker.enqueue(task)
        claimed = await claim(broker)
        assert await broker.requeue(
            claimed.id, claim_token=claimed.claim_token, error="first", traceback=None
        )
        await _fail(broker, task)
        assert _attempt_numbers(await broker.get_task(task.id)) == [1, 2]

        # When it is redriven
        await broker.update_task_status(task.id, TaskStatus.PENDING)

        # Then its budget starts again and its history stays, numbered on from there
        redriven = await broker.get_task(task.id)
        assert redriven is not None
        assert (redriven.status, redriven.attempts) == (TaskStatus.PENDING, 0)
        assert _attempt_numbers(redriven) == [1, 2]
        claimed = await claim(broker)
        assert claimed.attempts == 1
        assert await broker.mark_failed(claimed.id, "third", claim_token=claimed.claim_token)
        assert _attempt_numbers(await broker.get_task(task.id)) == [1, 2, 3]

    async def test_a_new_attempt_starts_without_progress(self, broker: AbstractBroker) -> None:
        # Given an attempt that reported progress and was handed back
        task = Task(name="t", max_retries=1)
        await broker.enqueue(task)
        claimed = await claim(broker)
        assert await broker.set_progress(claimed.id, 0.5, "half", claim_token=claimed.claim_token)
        assert await broker.requeue(claimed.id, claim_token=claimed.claim_token)

        # When the next attempt starts
        again = await claim(broker)

        # Then it has no progress yet
        stored = await broker.get_task(task.id)
        assert stored is not None
        for seen in (again, stored):
            assert (seen.progress, seen.progress_message) == (None, None)

    @pytest.mark.parametrize("running", [False, True], ids=["pending", "processing"])
    async def test_of_concurrent_cancels_exactly_one_returns_true(
        self, broker: AbstractBroker, running: bool
    ) -> None:
        task = Task(name="t")
        await broker.enqueue(task)
        if running:
            await claim(broker)

        answers = await asyncio.gather(*(broker.cancel(task.id) for _ in range(5)))

        assert sorted(answers) == [False, False, False, False, True]
        assert await broker.cancel(task.id) is False

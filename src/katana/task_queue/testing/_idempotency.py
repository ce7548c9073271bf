"""Conformance tests for enqueueing an id that is stored already, and for concurrent enqueues."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

from ..models import TaskStatus
from ._support import ContractBase, claim, make_task

if TYPE_CHECKING:
    from ..broker.base import AbstractBroker
    from ..models import Task

__all__ = ["IdempotencyContract"]

#: Concurrent enqueue calls in the burst test: past a thousand, the most tasks RedisBroker
#: sends in one script call, so coalesced calls span several batches.
_BURST = 2500


def _same_id(task: Task, name: str, payload: dict[str, object]) -> Task:
    """Another task under ``task``'s id, as a producer retrying with other arguments makes."""
    again = make_task(name, payload=payload)
    again.id = task.id
    return again


class IdempotencyContract(ContractBase):
    async def test_enqueueing_a_stored_id_returns_the_stored_task_unchanged(
        self, broker: AbstractBroker
    ) -> None:
        # Given a task that a worker holds
        task = make_task("first", payload={"version": 1})
        assert await broker.enqueue(task) is None
        await claim(broker)

        # When a task with the same id but another name and payload is enqueued
        existing = await broker.enqueue(_same_id(task, "second", {"version": 2}))

        # Then the stored task comes back, and nothing was stored or queued again
        assert existing is not None
        assert (existing.id, existing.name, existing.payload) == (task.id, "first", {"version": 1})
        assert existing.status is TaskStatus.PROCESSING
        counts = await broker.count_by_status()
        assert (counts[TaskStatus.PENDING], counts[TaskStatus.PROCESSING]) == (0, 1)
        assert await broker.dequeue(timeout=0) is None

    async def test_a_finished_task_keeps_its_id(self, broker: AbstractBroker) -> None:
        task = make_task()
        await broker.enqueue(task)
        claimed = await claim(broker)
        assert await broker.mark_complete(task.id, 7, claim_token=claimed.claim_token)

        existing = await broker.enqueue(_same_id(task, "contract", {}))

        assert existing is not None
        assert (existing.status, existing.result) == (TaskStatus.COMPLETED, 7)
        assert await broker.dequeue(timeout=0) is None

    async def test_the_returned_task_is_a_copy(self, broker: AbstractBroker) -> None:
        task = make_task(payload={"n": 1})
        await broker.enqueue(task)

        existing = await broker.enqueue(_same_id(task, "contract", {"n": 2}))
        assert existing is not None
        existing.payload["n"] = 3

        stored = await broker.get_task(task.id)
        assert stored is not None
        assert stored.payload == {"n": 1}

    async def test_enqueue_unique_with_a_stored_id_returns_that_task_and_leaves_the_key_free(
        self, broker: AbstractBroker
    ) -> None:
        key = f"contract:{uuid.uuid4().hex}"
        task = make_task("plain")
        await broker.enqueue(task)

        again = _same_id(task, "keyed", {})
        again.unique_key = key
        existing = await broker.enqueue_unique(again)

        assert existing is not None
        assert (existing.id, existing.name, existing.unique_key) == (task.id, "plain", None)
        other = make_task("keyed")
        other.unique_key = key
        assert await broker.enqueue_unique(other) is None

    async def test_enqueue_many_leaves_out_the_stored_ids(self, broker: AbstractBroker) -> None:
        stored = make_task("stored", payload={"version": 1})
        await broker.enqueue(stored)
        new = make_task("new")

        await broker.enqueue_many([_same_id(stored, "stored", {"version": 2}), new])

        first = await broker.get_task(stored.id)
        assert first is not None
        assert first.payload == {"version": 1}
        assert await broker.get_task(new.id) is not None
        assert (await broker.count_by_status())[TaskStatus.PENDING] == 2

    async def test_of_concurrent_enqueues_of_one_id_exactly_one_stores_it(
        self, broker: AbstractBroker
    ) -> None:
        task = make_task(payload={"copy": 0})
        copies = [_same_id(task, "contract", {"copy": n}) for n in range(50)]

        answers = await asyncio.gather(*(broker.enqueue(copy) for copy in copies))

        winners = [n for n, answer in enumerate(answers) if answer is None]
        assert len(winners) == 1
        assert {answer.payload["copy"] for answer in answers if answer is not None} == {winners[0]}
        assert (await broker.count_by_status())[TaskStatus.PENDING] == 1

    async def test_a_burst_of_concurrent_enqueues_gets_one_right_answer_each(
        self, broker: AbstractBroker
    ) -> None:
        # Given a stored task, and a unique key held by another
        stored = make_task("stored")
        await broker.enqueue(stored)
        key = f"contract:{uuid.uuid4().hex}"
        holder = make_task("holder")
        holder.unique_key = key
        assert await broker.enqueue_unique(holder) is None

        # When thousands of enqueues run at once: new tasks, the stored id again, and tasks
        # wanting the held key, mixed
        new = [make_task("new", payload={"n": n}) for n in range(_BURST)]
        repeats = [_same_id(stored, "repeat", {"n": n}) for n in range(_BURST // 10)]
        keyed = [make_task("keyed", payload={"n": n}) for n in range(_BURST // 10)]
        for task in keyed:
            task.unique_key = key
        calls = [broker.enqueue(task) for task in new]
        calls += [broker.enqueue(task) for task in repeats]
        calls += [broker.enqueue_unique(task) for task in keyed]
        answers = await asyncio.gather(*calls)

        # Then every new task was stored, and every other call got the task that kept it out
        assert answers[: len(new)] == [None] * len(new)
        rest = answers[len(new) :]
        assert [a.id if a else None for a in rest[: len(repeats)]] == [stored.id] * len(repeats)
        assert [a.id if a else None for a in rest[len(repeats) :]] == [holder.id] * len(keyed)
        assert (await broker.count_by_status())[TaskStatus.PENDING] == len(new) + 2

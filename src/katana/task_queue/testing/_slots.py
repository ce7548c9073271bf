"""Conformance tests for ``claim_slot`` and ``enqueue_in_slot``: exactly-once periodic tasks."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest

from ..models import TaskStatus
from ._support import ContractBase, make_task

if TYPE_CHECKING:
    from ..broker.base import AbstractBroker

__all__ = ["SlotContract"]

#: Time past a key's ttl after which the broker must treat it as expired.
_EXPIRY_MARGIN_SECONDS = 0.02


def _key() -> str:
    return f"contract:{uuid.uuid4().hex}"


class SlotContract(ContractBase):
    async def test_the_first_claim_of_a_slot_wins_and_the_next_loses(
        self, broker: AbstractBroker
    ) -> None:
        key = _key()

        assert await broker.claim_slot(key, 60) is True
        assert await broker.claim_slot(key, 60) is False
        assert await broker.claim_slot(key, 60) is False

    async def test_slots_of_different_keys_are_independent(self, broker: AbstractBroker) -> None:
        first, second = _key(), _key()

        assert await broker.claim_slot(first, 60) is True

        assert await broker.claim_slot(second, 60) is True
        assert await broker.claim_slot(first, 60) is False
        assert await broker.claim_slot(second, 60) is False

    async def test_exactly_one_of_many_concurrent_claims_wins(self, broker: AbstractBroker) -> None:
        key = _key()

        won = await asyncio.gather(*(broker.claim_slot(key, 60) for _ in range(20)))

        assert won.count(True) == 1

    async def test_a_slot_can_be_claimed_again_once_its_ttl_passed(
        self, broker: AbstractBroker
    ) -> None:
        # Given a slot taken for 50 ms (on the broker's own clock: real time in this suite)
        key = _key()
        assert await broker.claim_slot(key, 0.05) is True
        assert await broker.claim_slot(key, 60) is False

        # When its ttl has passed (a key is checked when read, so the margin can be small)
        await asyncio.sleep(0.05 + _EXPIRY_MARGIN_SECONDS)

        # Then it can be claimed again, and is taken again now
        assert await broker.claim_slot(key, 60) is True
        assert await broker.claim_slot(key, 60) is False

    async def test_enqueue_in_slot_stores_the_task_only_for_the_call_that_takes_the_slot(
        self, broker: AbstractBroker
    ) -> None:
        key = _key()
        first, second = make_task(payload={"n": 1}), make_task(payload={"n": 2})

        assert await broker.enqueue_in_slot(first, key, 60) is True
        assert await broker.enqueue_in_slot(second, key, 60) is False

        stored = await broker.get_task(first.id)
        assert stored is not None
        assert stored.status is TaskStatus.PENDING
        assert await broker.get_task(second.id) is None
        # The slot is the one claim_slot takes: the two share their keys
        assert await broker.claim_slot(key, 60) is False

    async def test_enqueue_in_slot_loses_to_a_slot_claimed_before(
        self, broker: AbstractBroker
    ) -> None:
        key = _key()
        assert await broker.claim_slot(key, 60) is True
        task = make_task()

        assert await broker.enqueue_in_slot(task, key, 60) is False

        assert await broker.get_task(task.id) is None

    async def test_exactly_one_of_many_concurrent_enqueues_in_a_slot_is_stored(
        self, broker: AbstractBroker
    ) -> None:
        key = _key()
        tasks = [make_task(payload={"n": n}) for n in range(10)]

        took = await asyncio.gather(*(broker.enqueue_in_slot(task, key, 60) for task in tasks))

        assert took.count(True) == 1
        stored = [await broker.get_task(task.id) for task in tasks]
        assert [task is not None for task in stored] == took
        counts = await broker.count_by_status()
        assert counts[TaskStatus.PENDING] == 1

    async def test_enqueue_in_slot_rejects_a_ttl_that_is_not_positive(
        self, broker: AbstractBroker
    ) -> None:
        with pytest.raises(ValueError, match="ttl_seconds"):
            await broker.enqueue_in_slot(make_task(), _key(), 0)

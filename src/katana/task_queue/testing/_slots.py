"""Conformance tests for ``claim_slot``: the atomic step behind exactly-once periodic tasks."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

from ._support import ContractBase

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

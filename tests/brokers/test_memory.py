"""InMemoryBroker: the conformance suite, plus what only an in-process broker can show."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker import AbstractBroker, InMemoryBroker
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.testing import BrokerContract

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class FakeClock:
    """A POSIX-timestamp clock that only moves when told to."""

    def __init__(self, start: float = datetime(2030, 1, 1, tzinfo=UTC).timestamp()) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def at(self, seconds_from_now: float) -> datetime:
        """The instant ``seconds_from_now`` on this clock, as an aware datetime."""
        return datetime.fromtimestamp(self.now + seconds_from_now, UTC)


class TestInMemoryBroker(BrokerContract):
    @pytest.fixture
    async def broker(self) -> AsyncIterator[InMemoryBroker]:
        async with InMemoryBroker() as broker:
            yield broker

    async def test_has_no_optional_capabilities(self, broker: AbstractBroker) -> None:
        assert broker.capabilities == frozenset()


class TestInMemoryBrokerWithAFakeClock:
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    async def broker(self, clock: FakeClock) -> AsyncIterator[InMemoryBroker]:
        async with InMemoryBroker(clock=clock) as broker:
            yield broker

    async def test_a_delayed_task_becomes_due_when_the_clock_says_so(
        self, broker: InMemoryBroker, clock: FakeClock
    ) -> None:
        task = Task(name="later", scheduled_at=clock.at(10))
        await broker.enqueue(task)

        clock.advance(9.999)
        assert await broker.dequeue(timeout=0) is None

        clock.advance(0.001)
        claimed = await broker.dequeue(timeout=0)
        assert claimed is not None
        assert claimed.id == task.id

    async def test_once_due_a_delayed_task_ranks_by_priority_and_due_time(
        self, broker: InMemoryBroker, clock: FakeClock
    ) -> None:
        # Given a routine task due now, and two urgent ones: one due now, one in 10 seconds
        routine_now = Task(name="routine", priority=5, scheduled_at=clock.at(0))
        urgent_later = Task(name="urgent-later", priority=0, scheduled_at=clock.at(10))
        urgent_now = Task(name="urgent-now", priority=0, scheduled_at=clock.at(0))
        await broker.enqueue_many([routine_now, urgent_later, urgent_now])

        # When the later one is due as well
        clock.advance(10)

        # Then it goes ahead of the routine task that has waited longer, after the urgent one
        claimed = [await broker.dequeue(timeout=0) for _ in range(3)]
        assert [t.name for t in claimed if t is not None] == [
            "urgent-now",
            "urgent-later",
            "routine",
        ]

    async def test_requeue_delay_is_measured_on_the_clock(
        self, broker: InMemoryBroker, clock: FakeClock
    ) -> None:
        await broker.enqueue(Task(name="retry", scheduled_at=clock.at(0)))
        claimed = await broker.dequeue(timeout=0)
        assert claimed is not None

        assert await broker.requeue(claimed.id, delay_seconds=5, claim_token=claimed.claim_token)

        stored = await broker.get_task(claimed.id)
        assert stored is not None
        assert stored.scheduled_at == clock.at(5)
        clock.advance(4.5)
        assert await broker.dequeue(timeout=0) is None
        clock.advance(0.5)
        again = await broker.dequeue(timeout=0)
        assert again is not None
        assert (again.id, again.attempts) == (claimed.id, 2)

    async def test_a_claimed_slot_is_free_again_exactly_when_its_ttl_passed_on_the_clock(
        self, broker: InMemoryBroker, clock: FakeClock
    ) -> None:
        assert await broker.claim_slot("periodic:report:1", 60)

        clock.advance(59.999)
        assert not await broker.claim_slot("periodic:report:1", 60)
        clock.advance(0.001)
        assert await broker.claim_slot("periodic:report:1", 60)

    async def test_expired_slots_are_dropped_as_new_ones_come(
        self, broker: InMemoryBroker, clock: FakeClock
    ) -> None:
        for slot in range(1500):
            assert await broker.claim_slot(f"periodic:tick:{slot}", 1)
            clock.advance(0.1)

        # Only the keys of the last second or so are left, plus what came since the sweep.
        assert len(broker._slots) <= 1010

    async def test_claim_slot_rejects_a_ttl_that_is_not_positive(
        self, broker: InMemoryBroker
    ) -> None:
        with pytest.raises(ValueError, match="ttl_seconds"):
            await broker.claim_slot("k", 0)


async def test_a_result_that_is_not_json_changes_nothing() -> None:
    async with InMemoryBroker() as broker:
        await broker.enqueue(Task(name="t"))
        claimed = await broker.dequeue(timeout=0)
        assert claimed is not None

        with pytest.raises(TypeError):
            await broker.mark_complete(claimed.id, {1, 2}, claim_token=claimed.claim_token)

        stored = await broker.get_task(claimed.id)
        assert stored is not None
        assert (stored.status, stored.claim_token) == (TaskStatus.PROCESSING, claimed.claim_token)
        assert await broker.mark_failed(claimed.id, "E", claim_token=claimed.claim_token)

"""Conformance tests for closing a broker and for its declared capabilities."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from ..errors import BrokerClosedError
from ..models import Task, TaskStatus
from ._support import ContractBase, claim, loop_time, make_task

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..broker.base import AbstractBroker

__all__ = ["LifecycleContract"]

#: Every broker call that must raise ``BrokerClosedError`` after ``close()``, given a task
#: that was claimed before the broker closed.
_CALLS_AFTER_CLOSE: dict[str, Callable[[AbstractBroker, Task], Awaitable[object]]] = {
    "enqueue": lambda broker, _: broker.enqueue(make_task()),
    "enqueue_many": lambda broker, _: broker.enqueue_many([make_task()]),
    "dequeue(timeout=0)": lambda broker, _: broker.dequeue(timeout=0),
    "dequeue(timeout=1)": lambda broker, _: broker.dequeue(timeout=1),
    "dequeue()": lambda broker, _: broker.dequeue(),
    "get_task": lambda broker, task: broker.get_task(task.id),
    "update_task_status": lambda broker, task: broker.update_task_status(
        task.id, TaskStatus.CANCELLED
    ),
    "mark_complete": lambda broker, task: broker.mark_complete(
        task.id, None, claim_token=task.claim_token
    ),
    "mark_failed": lambda broker, task: broker.mark_failed(
        task.id, "E: x", claim_token=task.claim_token
    ),
    "requeue": lambda broker, task: broker.requeue(task.id, claim_token=task.claim_token),
    "hand_back": lambda broker, task: broker.hand_back(task.id, claim_token=task.claim_token or ""),
    "count_by_status": lambda broker, _: broker.count_by_status(),
}


class LifecycleContract(ContractBase):
    """``close()``, the async context manager, and the ``capabilities`` set."""

    # -- closing -----------------------------------------------------------------------------

    async def test_close_is_idempotent(self, broker: AbstractBroker) -> None:
        await broker.close()
        await broker.close()

    @pytest.mark.parametrize("call", sorted(_CALLS_AFTER_CLOSE))
    async def test_a_method_after_close_raises_broker_closed_error(
        self, broker: AbstractBroker, call: str
    ) -> None:
        # Given a claimed task, and a closed broker
        await broker.enqueue(make_task())
        claimed = await claim(broker)
        await broker.close()

        # When the broker is used, Then it refuses
        async with asyncio.timeout(self.guard_seconds):
            with pytest.raises(BrokerClosedError):
                await _CALLS_AFTER_CLOSE[call](broker, claimed)

    async def test_extend_lease_after_close_raises_broker_closed_error(
        self, broker: AbstractBroker
    ) -> None:
        await broker.enqueue(make_task())
        claimed = await claim(broker)
        assert claimed.claim_token is not None
        await broker.close()

        with pytest.raises(BrokerClosedError):
            await broker.extend_lease(claimed.id, claimed.claim_token)

    @pytest.mark.parametrize("timeout", [None, 30.0])
    async def test_close_releases_a_waiting_dequeue(
        self, broker: AbstractBroker, timeout: float | None
    ) -> None:
        # Given a consumer waiting on an empty broker
        consumer = asyncio.create_task(broker.dequeue(timeout=timeout))
        await self.let_consumers_block()
        assert not consumer.done()

        # When the broker closes
        closed_at = loop_time()
        try:
            async with asyncio.timeout(self.guard_seconds):
                await broker.close()

                # Then the consumer stops waiting promptly: BrokerClosedError, or None
                try:
                    result = await consumer
                except BrokerClosedError:
                    result = None
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)  # nothing left unretrieved
        assert result is None
        latency = loop_time() - closed_at
        assert latency < self.wake_seconds, f"released {latency:.3f}s after close()"

    async def test_async_with_closes_the_broker(self, broker: AbstractBroker) -> None:
        async with broker as entered:
            assert entered is broker
            await broker.enqueue(make_task())

        with pytest.raises(BrokerClosedError):
            await broker.count_by_status()

    # -- capabilities ------------------------------------------------------------------------

    async def test_capabilities_is_a_frozenset_of_names(self, broker: AbstractBroker) -> None:
        assert isinstance(broker.capabilities, frozenset)
        assert all(isinstance(name, str) for name in broker.capabilities)

    async def test_extend_lease(self, broker: AbstractBroker) -> None:
        await broker.enqueue(make_task())
        claimed = await claim(broker)
        assert claimed.claim_token is not None

        assert await broker.extend_lease(claimed.id, claimed.claim_token) is True
        if "leases" in broker.capabilities:
            assert await broker.extend_lease(claimed.id, "forged-claim-token") is False
            await broker.mark_complete(claimed.id, None, claim_token=claimed.claim_token)
            assert await broker.extend_lease(claimed.id, claimed.claim_token) is False
        # Without leases there is nothing to renew, and a held claim is reported as held.

    async def test_a_claim_expires_only_with_leases(self, broker: AbstractBroker) -> None:
        # Given a claimed task whose claim nobody renews
        await broker.enqueue(make_task())
        claimed = await claim(broker)
        await self.stop_renewing(broker, claimed)

        if "leases" not in broker.capabilities:
            # Then without leases it stays claimed
            assert await broker.dequeue(timeout=0.2) is None
            stored = await broker.get_task(claimed.id)
            assert stored is not None
            assert stored.status is TaskStatus.PROCESSING
            return

        if self.lease_seconds is None:
            pytest.fail(f"{type(self).__name__} declares 'leases' but does not set lease_seconds")
        # Then with leases another consumer gets it once the lease expired...
        async with asyncio.timeout(self.lease_seconds + self.guard_seconds):
            again = await broker.dequeue(timeout=self.lease_seconds + self.wake_seconds)
        assert again is not None
        assert (again.id, again.attempts) == (claimed.id, 2)
        assert again.claim_token != claimed.claim_token
        # ...and the first claimant is fenced out
        late = await broker.mark_complete(claimed.id, None, claim_token=claimed.claim_token)
        assert late is False
        assert await broker.mark_complete(again.id, None, claim_token=again.claim_token) is True

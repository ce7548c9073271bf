"""Tunables, hooks and helpers shared by the parts of the broker conformance suite."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from ..models import Task, utcnow

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..broker.base import AbstractBroker

__all__ = [
    "ContractBase",
    "claim",
    "loop_time",
    "make_task",
    "wait_for_event",
]

#: How many times ``let_consumers_block`` hands the loop over: an in-process broker's
#: ``dequeue`` reaches its wait within one or two, the rest is margin.
_SETTLE_YIELDS = 20


class ContractBase:
    """What a broker's test class may tune; the tests themselves are in ``BrokerContract``."""

    #: Longest a waiting ``dequeue`` may take to return once a task is there for it (or once
    #: ``close()`` was called). Loose, so a loaded CI machine does not make the suite flaky.
    wake_seconds: float = 1.0
    #: Upper bound on anything that must happen eventually, so a broken broker fails a test
    #: instead of hanging it.
    guard_seconds: float = 10.0
    #: How coarse the broker's instants may be: one that keeps times to the millisecond may
    #: report ``started_at`` up to this much before ``scheduled_at``.
    timestamp_resolution_seconds: float = 0.001
    #: The lease the ``broker`` fixture's broker grants, in seconds; required when the broker
    #: declares the ``"leases"`` capability (keep it short: a test waits for one to expire).
    lease_seconds: float | None = None

    @pytest.fixture
    def broker(self) -> AbstractBroker:
        """Placeholder: subclasses supply an async fixture yielding a fresh, empty broker."""
        pytest.fail(
            f"{type(self).__name__} must define an async fixture named 'broker' that yields a "
            "fresh, empty, connected broker and closes it afterwards"
        )

    async def stop_renewing(self, broker: AbstractBroker, task: Task) -> None:
        """Make ``broker`` stop renewing its claim on ``task``, as if its process had frozen.

        The default does nothing, which suits brokers whose claims are renewed only through
        ``extend_lease``; a broker that renews its own claims overrides this.
        """

    async def let_consumers_block(self) -> None:
        """Give consumers started with ``asyncio.create_task`` the chance to wait in ``dequeue``.

        The default hands the event loop over a few times, which is enough for an in-process
        broker. The tests pass whether or not a consumer got that far, but they only prove
        that a *waiting* ``dequeue`` wakes up if it did; a networked broker's suite may
        override this to wait for the round trip that parks its consumers.
        """
        for _ in range(_SETTLE_YIELDS):
            await asyncio.sleep(0)


def make_task(
    name: str = "contract",
    *,
    payload: dict[str, Any] | None = None,
    priority: int = 0,
    delay_seconds: float | None = None,
    scheduled_at: datetime | None = None,
) -> Task:
    """A PENDING task, due now unless ``delay_seconds`` or ``scheduled_at`` says otherwise."""
    if delay_seconds is not None:
        scheduled_at = utcnow() + timedelta(seconds=delay_seconds)
    payload = {} if payload is None else payload
    if scheduled_at is None:
        return Task(name=name, payload=payload, priority=priority)
    return Task(name=name, payload=payload, priority=priority, scheduled_at=scheduled_at)


async def claim(broker: AbstractBroker) -> Task:
    """Dequeue without waiting, and fail the test if no task was due."""
    task = await broker.dequeue(timeout=0)
    assert task is not None, "dequeue(timeout=0) returned None although a task was due"
    return task


def loop_time() -> float:
    """The running event loop's monotonic clock."""
    return asyncio.get_running_loop().time()


async def wait_for_event(
    event: asyncio.Event, helpers: Iterable[asyncio.Task[Any]], timeout: float
) -> None:
    """Wait for ``event``, re-raising at once if one of the ``helpers`` tasks failed first."""
    waiter = asyncio.create_task(event.wait())
    pending = {waiter, *helpers}
    try:
        async with asyncio.timeout(timeout):
            while not waiter.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not waiter:
                        task.result()  # raises the helper's exception
    finally:
        waiter.cancel()

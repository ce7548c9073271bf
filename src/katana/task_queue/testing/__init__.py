"""BrokerContract: the conformance suite every broker passes, shipped for third-party brokers too.

Subclass it in a test module and supply an async fixture named ``broker`` that yields a fresh,
empty, connected broker and closes it afterwards::

    import pytest_asyncio  # or plain pytest.fixture under asyncio_mode = "auto"

    from katana.task_queue.testing import BrokerContract


    class TestMyBroker(BrokerContract):
        @pytest_asyncio.fixture
        async def broker(self) -> AsyncIterator[MyBroker]:
            async with MyBroker(...) as broker:
                yield broker

The suite uses the ``AbstractBroker`` interface only. Optional behaviours are read from the
broker's ``capabilities`` set, never skipped: with ``"leases"`` the suite checks that claims
expire (set ``lease_seconds`` to the lease the fixture configures), without it that they do
not. Timing bounds are loose class attributes (``wake_seconds``, ``guard_seconds``) a slow
backend may raise, and ``let_consumers_block`` is the hook a networked broker may override to
wait until its consumers are parked. This module imports pytest: it is meant for test code.
"""

from __future__ import annotations

import pytest

# pytest rewrites asserts only in test modules and modules it was told about before they were
# imported; without this, a failing contract test would say "AssertionError" and nothing more.
pytest.register_assert_rewrite(
    f"{__name__}._idempotency",
    f"{__name__}._lifecycle",
    f"{__name__}._management",
    f"{__name__}._queueing",
    f"{__name__}._semantics",
    f"{__name__}._slots",
    f"{__name__}._storage",
    f"{__name__}._support",
)

from ._clock import FakeClock  # noqa: E402  # after the rewrite registration above
from ._idempotency import IdempotencyContract  # noqa: E402  # after the rewrite registration above
from ._lifecycle import LifecycleContract  # noqa: E402  # after the rewrite registration above
from ._management import ManagementContract  # noqa: E402  # after the rewrite registration above
from ._queueing import QueueingContract  # noqa: E402  # after the rewrite registration above
from ._semantics import SemanticsContract  # noqa: E402  # after the rewrite registration above
from ._slots import SlotContract  # noqa: E402  # after the rewrite registration above
from ._storage import StorageContract  # noqa: E402  # after the rewrite registration above

__all__ = ["BrokerContract", "FakeClock"]


class BrokerContract(
    StorageContract,
    QueueingContract,
    IdempotencyContract,
    LifecycleContract,
    ManagementContract,
    SlotContract,
    SemanticsContract,
):
    """The broker conformance suite: a class of async pytest tests over a ``broker`` fixture.

    It pins what the ``AbstractBroker`` docstrings promise: payloads round-trip; the ordering
    contract (lowest priority number, then due time, then first in first out, and nothing
    before it is due); ``dequeue`` waits without polling, wakes for new and newly due tasks,
    and hands each task to exactly one consumer; claims are fenced by ``claim_token``; every
    transition shows in ``get_task``; returned tasks are copies; enqueueing an id that is
    stored already leaves the stored task alone and returns it, and each of many concurrent
    enqueues gets its own answer; ``claim_slot`` lets exactly one caller take a key until it
    expires, and ``enqueue_in_slot`` stores a task only with it; unique keys are per queue and
    a redrive retakes its key or is refused, with a fresh retry budget; of concurrent cancels
    exactly one returns ``True``; a new attempt starts without progress; ``close()`` is
    idempotent and ends all use.
    """

    # Marked here, not only through asyncio_mode = "auto", so the suite also runs in projects
    # that use pytest-asyncio's strict mode.
    pytestmark = pytest.mark.asyncio

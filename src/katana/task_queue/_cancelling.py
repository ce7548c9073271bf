"""Await broker calls so that a cancellation of the caller always takes effect.

On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that lands while the call it
awaits completes (CPython gh-86296, fixed in 3.12), and redis-py awaits every command through
it when a socket timeout is set. A cancel, a timeout (``asyncio.timeout`` cancels) or a shutdown
landing inside such a call would then be lost. Katana's deadlines and cancels therefore never
pass through a driver call: ``cancel_safe`` runs the call in its own task and awaits that at
Katana's own await point, where asyncio always delivers the cancellation.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from typing import Any

__all__ = ["cancel_safe"]

_T = TypeVar("_T")


async def cancel_safe(call: Awaitable[_T]) -> _T:
    """Await ``call``; if the caller is cancelled meanwhile, raise ``CancelledError`` for sure.

    The call runs in a task of its own, shielded: a cancellation of the caller interrupts only
    the caller's wait, which always raises. The call is then cancelled too, as a courtesy (a
    driver may swallow that one as well: it then ends on its own), and its outcome is dropped.
    """
    inner = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        inner.cancel()
        inner.add_done_callback(_drop_outcome)
        raise


def _drop_outcome(inner: asyncio.Future[Any]) -> None:
    # Nobody awaits an abandoned call: fetch its exception so asyncio does not log it as lost.
    if not inner.cancelled():
        inner.exception()

"""Coalescing: concurrent requests share round trips, one batch in flight at a time."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import BrokerClosedError, BrokerOutcomeUnknownError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

__all__ = ["Coalescer"]

_In = TypeVar("_In")
_Out = TypeVar("_Out")


class Coalescer(Generic[_In, _Out]):
    """Sends requests through ``send`` (a list in, one answer per request out, in order).

    A request made while nothing is in flight is sent at once, in the caller's own task, so a
    lone caller waits no longer than without coalescing. Requests made while a round trip is
    in flight wait for it to end and then go together in the next one (``max_batch`` at most
    per round trip). Each caller gets its own answer, or the exception its batch failed with.
    A caller cancelled before its request was sent takes it back; after that, the request
    is carried out or not (as with any request whose reply is lost).
    """

    def __init__(
        self, send: Callable[[list[_In]], Awaitable[Sequence[_Out]]], *, max_batch: int
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._waiting: deque[tuple[_In, asyncio.Future[_Out]]] = deque()
        self._busy = False
        self._idle = asyncio.Event()  # set while nothing is in flight (not busy)
        self._idle.set()
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, request: _In) -> _Out:
        if not self._busy:
            self._set_busy(True)
            try:
                (answer,) = await self._send([request])
            finally:
                self._pass_on()
            return answer
        future: asyncio.Future[_Out] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        return await future

    async def wait_sent(self) -> None:
        """Wait until every request made so far was answered (``close()`` calls it), those
        waiting behind a round trip made in a caller's own task included."""
        await self._idle.wait()  # failures went to the callers already

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        if busy:
            self._idle.clear()
        else:
            self._idle.set()

    def _pass_on(self) -> None:
        """The round trip in flight ended: the requests that came meanwhile go next."""
        if self._waiting:
            self._drainer = asyncio.create_task(self._drain(), name="katana-coalesced-send")
        else:
            self._set_busy(False)

    async def _drain(self) -> None:
        batch: list[tuple[_In, asyncio.Future[_Out]]] = []
        try:
            while self._waiting:
                batch = self._next_batch()
                if not batch:
                    continue
                try:
                    answers = await self._send([request for request, _ in batch])
                except Exception as exc:  # every caller of the batch gets it
                    _fail(batch, exc)
                    continue
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
                # One loop turn for the callers just answered: a producer that enqueues again
                # right away joins the next batch, instead of the first of them going out
                # alone (nothing in flight) while the rest wait behind it.
                await asyncio.sleep(0)
        except BaseException:
            # Cancelled (the event loop is closing): nobody must wait for an answer forever.
            _fail(batch, BrokerOutcomeUnknownError("the send was interrupted"))
            _fail(self._waiting, BrokerClosedError("the send was interrupted"))
            self._waiting.clear()
            raise
        finally:
            self._drainer = None
            self._set_busy(False)

    def _next_batch(self) -> list[tuple[_In, asyncio.Future[_Out]]]:
        batch: list[tuple[_In, asyncio.Future[_Out]]] = []
        while self._waiting and len(batch) < self._max_batch:
            request, future = self._waiting.popleft()
            if not future.done():  # its caller was cancelled: nothing is sent for it
                batch.append((request, future))
        return batch


def _fail(batch: Iterable[tuple[object, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)

"""Wakes ``RedisBroker.wait_finished`` callers when a script says their task finished.

Every script that puts a task in a final status publishes its id on ``<prefix>:finished``
(one message per claim for a batch). One subscriber per broker, started by the first waiter,
turns those messages into futures; waiters still look again every second, so a message lost
while the subscription was down costs at most that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.asyncio.client import PubSub

__all__ = ["FinishWatch"]

logger = logging.getLogger(__name__)

#: Longest a waiter waits for the subscription before it reads the task anyway.
_SUBSCRIBE_WAIT_SECONDS = 1.0
_BACKOFF_FIRST_SECONDS = 0.05
_BACKOFF_MAX_SECONDS = 2.0


class FinishWatch:
    """Futures that resolve when their task's id is published on the finished channel."""

    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel.encode()
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._subscribed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._closing = False

    def watch(self, task_id: str) -> asyncio.Future[None]:
        """A future that resolves once ``task_id`` is published (or the subscription drops)."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="katana-redis-finished")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, set()).add(future)
        return future

    def unwatch(self, task_id: str, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(task_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[task_id]
        if not future.done():
            future.cancel()

    async def subscribed(self) -> None:
        """Wait (briefly) until messages are being received, so none published after is missed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SUBSCRIBE_WAIT_SECONDS):
                await self._subscribed.wait()

    async def _listen(self) -> None:
        backoff = _BACKOFF_FIRST_SECONDS
        lost = False
        while not self._closing:
            pubsub: PubSub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                if lost:
                    self._wake_all()  # what was published while we were away is missed
                backoff = _BACKOFF_FIRST_SECONDS
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._wake(bytes(message["data"]).decode(errors="replace").split())
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                lost = True
                logger.debug("finished channel lost (%s); resubscribing", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py lacks the hint

    def _wake(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            for future in self._waiters.pop(task_id, ()):
                if not future.done():
                    future.set_result(None)

    def _wake_all(self) -> None:
        self._wake(list(self._waiters))

    async def close(self) -> None:
        """Stop listening; waiters still waiting look at their task once more and go on."""
        self._closing = True
        self._wake_all()
        listener = self._listener
        # Cancelling while redis-py reads can be swallowed (redis-py#2028): repeat until done.
        while listener is not None and not listener.done():
            listener.cancel()
            await asyncio.wait({listener}, timeout=0.1)

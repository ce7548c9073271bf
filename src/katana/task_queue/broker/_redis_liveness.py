"""A consumer process's liveness mark in Redis, refreshed from a thread of its own.

Every claim a RedisBroker makes is tagged with the broker's owner id, and the key
``<prefix>:alive:<owner>`` lives while the process does: this thread sets it again every
``ALIVE_REFRESH_SECONDS`` with an expiry of ``ALIVE_TTL_SECONDS``. When a process is killed
(or frozen by SIGSTOP, or cut off from Redis) the key expires, and the heartbeat of any other
consumer puts the claims tagged with that owner back in the queue (``heartbeat.lua``), long
before their leases would have expired.

A thread, not an asyncio task: an executor that blocks the event loop for a few seconds
(CPU work in ``async def``) must not make its own process look dead; that stays the lease's
job, which is renewed by the event loop and lasts much longer. Expiry is the Redis server's
own clock, so clock skew between hosts does not matter here.
"""

from __future__ import annotations

import logging
import threading

import redis
from redis.exceptions import RedisError

__all__ = ["ALIVE_REFRESH_SECONDS", "ALIVE_TTL_SECONDS", "LivenessMark"]

logger = logging.getLogger(__name__)

#: How often a consuming process sets its liveness mark again.
ALIVE_REFRESH_SECONDS = 1.0
#: How long a mark lives without a refresh: two refreshes may be late (a loaded host, a short
#: network hiccup) before the process's claims are taken back.
ALIVE_TTL_SECONDS = 3.0


class LivenessMark:
    """Keeps ``key`` set in Redis, expiring ``ttl_seconds`` after the latest refresh."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        ttl_seconds: float = ALIVE_TTL_SECONDS,
        refresh_seconds: float = ALIVE_REFRESH_SECONDS,
    ) -> None:
        self.key = key
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self._refresh_seconds = refresh_seconds
        # Its own connection: a refresh must never queue behind the event loop's commands.
        # A refresh that hangs longer than a refresh interval is as good as lost.
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=refresh_seconds, socket_timeout=refresh_seconds
        )
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._refresh_loop, name="katana-redis-liveness", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop refreshing and delete the mark (blocks for up to one refresh's timeout)."""
        self._stopping.set()
        if self._thread is None:  # never consumed: no mark, no connection
            return
        self._thread.join()
        self._thread = None
        try:
            # Whatever this process still holds is taken back at the next heartbeat anywhere.
            self._client.delete(self.key)
        except (RedisError, OSError) as exc:  # it expires by itself
            logger.debug("could not delete liveness mark %s: %s", self.key, exc)
        finally:
            self._client.close()

    def _refresh_loop(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                self._client.set(self.key, b"1", px=self._ttl_ms)
            except (RedisError, OSError) as exc:
                if not failing:  # once per outage, not once a second
                    logger.warning(
                        "cannot refresh this process's liveness mark (%s): other processes "
                        "take its tasks back if this lasts %.0fs",
                        exc,
                        self._ttl_ms / 1000,
                        extra={"katana_event": "broker_error"},
                    )
                failing = True
            else:
                failing = False
            self._stopping.wait(self._refresh_seconds)

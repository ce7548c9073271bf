"""RedisBroker's connections: a bounded pool, its timeouts, lost replies told from unsent ones."""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from hiredis import pack_command as _hiredis_pack_command
from redis.asyncio.connection import AbstractConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

__all__ = [
    "PoolSettings",
    "SetupRefusedError",
    "new_client",
    "request_was_sent",
    "settings_from_url",
]

#: The attribute set on a driver error that says whether the failed command left this process.
_SENT = "_katana_request_sent"
#: Errors after which a connection cannot be trusted: the socket broke or timed out.
_LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
#: Query parameters of the URL that are these settings (redis-py's names where it has one).
_URL_SETTINGS = {
    "max_connections": "max_connections",
    "socket_timeout": "socket_timeout_seconds",
    "socket_connect_timeout": "connect_timeout_seconds",
    "pool_timeout": "pool_timeout_seconds",
}


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """How RedisBroker connects; every field is a ``RedisBroker`` argument of the same name.

    Attributes:
        max_connections: Connections the broker opens at most; more concurrent commands wait
            for one to be free.
        socket_timeout_seconds: Longest wait for Redis to take a command or answer it.
        connect_timeout_seconds: Longest wait to open a connection.
        pool_timeout_seconds: Longest wait for a free connection when all are in use.
    """

    max_connections: int = 100
    socket_timeout_seconds: float = 10.0
    connect_timeout_seconds: float = 5.0
    pool_timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        if type(self.max_connections) is not int or self.max_connections < 1:
            raise ValueError(
                f"max_connections must be an int >= 1, got {self.max_connections!r:.40}"
            )
        for name in ("socket_timeout_seconds", "connect_timeout_seconds", "pool_timeout_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number of seconds, got {value!r:.40}")
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def settings_from_url(url: str, settings: PoolSettings) -> tuple[str, PoolSettings]:
    """Take the pool settings out of ``url``'s query string; they win over ``settings``.

    Returns the URL without them (the rest is redis-py's) and the settings. Raises
    ``ValueError`` for a value that is not a valid setting, naming the parameter.
    """
    parts = urlsplit(url)
    if not parts.query:
        return url, settings
    found: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, text in parse_qsl(parts.query, keep_blank_values=True):
        if name == "timeout":  # redis-py's name for the pool wait, easy to take for another
            raise ValueError("the Redis URL's 'timeout' is ambiguous: use pool_timeout")
        field = _URL_SETTINGS.get(name)
        if field is None:
            rest.append((name, text))
            continue
        if field in found:
            raise ValueError(f"the Redis URL gives {name} twice")
        try:
            found[field] = int(text) if field == "max_connections" else float(text)
        except ValueError:
            raise ValueError(f"invalid {name} in the Redis URL: {text!r:.40}") from None
    if not found:
        return url, settings
    try:
        settings = replace(settings, **found)
    except ValueError as exc:  # say which URL parameter is wrong, in the URL's words
        names = {field: name for name, field in _URL_SETTINGS.items()}
        message = str(exc)
        for field in (f.name for f in fields(PoolSettings)):
            message = message.replace(field, names[field])
        raise ValueError(f"in the Redis URL: {message}") from None
    return urlunsplit(parts._replace(query=urlencode(rest))), settings


def new_client(url: str, settings: PoolSettings) -> aioredis.Redis:
    """A client whose pool waits (up to ``pool_timeout_seconds``) for a free connection.

    redis-py's default pool raises "Too many connections" at once when all are in use, which
    a burst of concurrent calls took for an outage.
    """
    pool = _WaitingPool.from_url(
        url,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout_seconds,
        socket_connect_timeout=settings.connect_timeout_seconds,
        socket_timeout=settings.socket_timeout_seconds,
        health_check_interval=15,
        # Scripts are not idempotent: a blind resend after a lost reply could claim twice.
        retry=Retry(NoBackoff(), 0),
        # With the default "auto", redis-py 8 skips its dead-socket check on pooled
        # connections, so the first command after a Redis restart failed.
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    base = pool.connection_class
    pool.connection_class = type(f"Katana{base.__name__}", (_KatanaConnection, base), {})
    return aioredis.Redis.from_pool(pool)


class _WaitingPool(aioredis.BlockingConnectionPool):
    """redis-py's waiting pool, without its waiting machinery while a connection is free.

    ``BlockingConnectionPool.get_connection`` takes a condition and arms a timeout for every
    command, which cost a lone producer several percent of its ``add_task`` rate. While nobody
    waits and a connection is free, the plain pool's ``get_connection`` takes it; else the
    caller waits in line as redis-py does, up to the pool timeout. Whatever fails here, the
    command was not sent.
    """

    _waiting = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        try:
            if not self._waiting and self.can_get_connection():
                with contextlib.suppress(MaxConnectionsError):  # taken meanwhile: wait in line
                    plain = aioredis.ConnectionPool.get_connection
                    connection: AbstractConnection = await plain(  # type: ignore[no-untyped-call]  # redis-py's
                        self, *args, **kwargs
                    )
                    return connection
            self._waiting += 1
            try:
                waited = super().get_connection
                connection = await waited(*args, **kwargs)  # type: ignore[no-untyped-call]  # redis-py's
                return connection
            finally:
                self._waiting -= 1
        except _LINK_ERRORS as exc:
            _not_sent(exc)
            raise


class SetupRefusedError(RedisConnectionError):
    """Redis refused to set up a connection (SELECT, HELLO, CLIENT SETNAME): the URL asks
    for something this server does not allow. Nothing was sent; a connection error, so
    every handler of an unreachable Redis sees it as one."""


def request_was_sent(exc: BaseException) -> bool:
    """Whether the command that failed with ``exc`` may have reached Redis (and run there).

    False only when it surely did not: it failed while waiting for a free connection, or
    while the connection was set up (connect, handshake, health-check PING).
    """
    return getattr(exc, _SENT, True) is not False


def _not_sent(exc: BaseException) -> None:
    setattr(exc, _SENT, False)


class _KatanaConnection(AbstractConnection):
    """Mixed into the pool's connection class: marks the errors of setting up as "not sent".

    Any other failure (writing the command, or waiting for its reply) counts as "sent": the
    bytes may have reached Redis, which then ran the command although no reply came back.
    It also packs script calls with hiredis. The overrides return at once in the common case
    (connected, no health check due), so they cost no more than redis-py's own methods.
    """

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:  # every command asks: nothing to do
            return
        try:
            await super().connect_check_health(check_health, retry_socket_connect)
        except _LINK_ERRORS as exc:
            _not_sent(exc)
            raise
        except ResponseError as exc:  # e.g. SELECT of a db out of range: never "sent"
            refused = SetupRefusedError(f"Redis refused to set up the connection: {exc}")
            _not_sent(refused)
            raise refused from exc

    async def check_health(self) -> None:
        # Every command asks; redis-py sends a PING only this long after the last reply.
        if not self.health_check_interval or (
            asyncio.get_running_loop().time() <= self.next_health_check
        ):
            return
        try:
            await super().check_health()  # type: ignore[no-untyped-call]  # redis-py's own
        except _LINK_ERRORS as exc:
            _not_sent(exc)
            raise

    def pack_command(self, *args: Any) -> list[bytes]:
        # redis-py's asyncio connections pack every command in Python, one argument at a time
        # (its sync connections use hiredis): a claim carrying its outcomes has tens to
        # hundreds of arguments, and packing them cost a worker more CPU than decoding the
        # tasks it got back. Every argument a script gets here is a str, bytes or int, which
        # hiredis packs alike.
        if args[0] == "EVALSHA":
            return [_hiredis_pack_command(args)]
        return super().pack_command(*args)

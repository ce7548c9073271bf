"""RedisBroker's pool and timeout settings: from the constructor and the URL, checked at once."""

from __future__ import annotations

from typing import Any

import pytest

from katana.task_queue.broker._redis_pool import PoolSettings
from katana.task_queue.broker.redis import RedisBroker


def _pool_of(broker: RedisBroker) -> Any:
    return broker._client.connection_pool


def test_the_defaults_are_bounded() -> None:
    broker = RedisBroker()

    assert broker.pool_settings == PoolSettings(
        max_connections=100,
        socket_timeout_seconds=10.0,
        connect_timeout_seconds=5.0,
        pool_timeout_seconds=10.0,
    )
    assert _pool_of(broker).timeout == 10.0  # the pool waits for a free connection


def test_constructor_settings_reach_the_connections() -> None:
    broker = RedisBroker(
        max_connections=7,
        socket_timeout_seconds=0.5,
        connect_timeout_seconds=0.25,
        pool_timeout_seconds=2,
    )

    pool = _pool_of(broker)
    assert (pool.max_connections, pool.timeout) == (7, 2)
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.5, 0.25)


def test_url_settings_win_over_the_constructor_and_leave_the_rest_alone() -> None:
    broker = RedisBroker(
        "redis://:secret@127.0.0.1:6379/3?socket_timeout=2&max_connections=9"
        "&socket_connect_timeout=1.5&pool_timeout=4&client_name=katana-test",
        socket_timeout_seconds=30,
    )

    assert broker.pool_settings == PoolSettings(9, 2.0, 1.5, 4.0)
    pool = _pool_of(broker)
    assert (pool.max_connections, pool.timeout) == (9, 4.0)
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.0, 1.5)
    assert (kwargs["db"], kwargs["password"], kwargs["client_name"]) == (3, "secret", "katana-test")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("socket_timeout=abc", "invalid socket_timeout in the Redis URL: 'abc'"),
        ("socket_timeout=0", "socket_timeout must be a finite number > 0"),
        ("socket_timeout=-1", "socket_timeout must be a finite number > 0"),
        ("socket_timeout=inf", "socket_timeout must be a finite number > 0"),
        ("socket_timeout=nan", "socket_timeout must be a finite number > 0"),
        ("socket_connect_timeout=", "invalid socket_connect_timeout"),
        ("pool_timeout=0", "pool_timeout must be a finite number > 0"),
        ("max_connections=0", "max_connections must be an int >= 1"),
        ("max_connections=1.5", "invalid max_connections in the Redis URL: '1.5'"),
        ("max_connections=1&max_connections=2", "gives max_connections twice"),
        ("timeout=3", "'timeout' is ambiguous: use pool_timeout"),
        ("socket_timeout=" + "9" * 500, "finite number > 0"),
        ("decode_responses=true", "'decode_responses' is not supported"),
        ("retry_on_error=x", "'retry_on_error' is not supported"),
        ("protocol=9", "protocol must be 2 or 3"),
        ("client_name=a%20b", "client_name must be"),
        ("x" * 500 + "=1", "is not supported"),
        ("db=0&" + "d" * 500 + "=1", "is not supported"),
    ],
)
def test_invalid_url_settings_are_refused_at_construction(query: str, message: str) -> None:
    with pytest.raises(ValueError, match="Redis URL") as info:
        RedisBroker(f"redis://:secret@127.0.0.1:6379/0?{query}")

    assert message in str(info.value)
    assert "secret" not in str(info.value)
    assert len(str(info.value)) < 200  # the input is not echoed unbounded


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_connections": 0}, "max_connections must be an int >= 1"),
        ({"max_connections": True}, "max_connections must be an int >= 1"),
        ({"max_connections": 2.0}, "max_connections must be an int >= 1"),
        ({"socket_timeout_seconds": 0}, "socket_timeout_seconds must be a finite number > 0"),
        ({"socket_timeout_seconds": float("nan")}, "socket_timeout_seconds must be a finite"),
        ({"connect_timeout_seconds": -1}, "connect_timeout_seconds must be a finite"),
        ({"pool_timeout_seconds": float("inf")}, "pool_timeout_seconds must be a finite"),
        ({"pool_timeout_seconds": "5"}, "pool_timeout_seconds must be a number of seconds"),
        ({"socket_timeout_seconds": None}, "socket_timeout_seconds must be a number"),
    ],
)
def test_invalid_constructor_settings_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisBroker(**options)

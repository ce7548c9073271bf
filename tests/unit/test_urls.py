"""Broker URLs: every credential form the drivers accept is masked; bad Redis URLs are refused."""

from __future__ import annotations

import pytest

from katana.task_queue._urls import check_redis_url, masked_url
from katana.task_queue.errors import ConfigurationError


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("memory://", "memory://"),
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://bob:s3cret@h/0", "redis://bob:***@h/0"),
        ("redis://bob:@h/0", "redis://bob:***@h/0"),
        ("redis://bob@h/0", "redis://bob@h/0"),  # a user name alone is no secret
        ("redis://bob:s3cret@[::1]:6379/0", "redis://bob:***@[::1]:6379/0"),
        ("redis://:p@ss@h/0", "redis://:***@h/0"),
        # redis-py and asyncpg take credentials from the query string too
        ("redis://h/0?password=s3cret", "redis://h/0?password=***"),
        ("redis://h/0?username=bob&password=s3cret", "redis://h/0?username=bob&password=***"),
        ("redis://h/0?PASSWORD=s3cret", "redis://h/0?PASSWORD=***"),
        ("redis://h/0?pass%77ord=s3cret", "redis://h/0?pass%77ord=***"),
        ("rediss://h/0?ssl_password=s3cret&db=2", "rediss://h/0?ssl_password=***&db=2"),
        ("postgresql://u@h/db?sslpassword=s3cret", "postgresql://u@h/db?sslpassword=***"),
        ("postgresql://h/db?user=u&password=s3cret", "postgresql://h/db?user=u&password=***"),
        ("redis://h/0#s3cret", "redis://h/0#***"),
        # An unescaped "#", "/" or "?" in the password cuts the netloc short
        ("redis://:s3c#ret@h/0", "redis://***"),
        ("redis://:s3c/ret@h/0", "redis://***"),
        ("redis://:s3c?ret@h/0", "redis://***"),
        ("redis://:s3cret@[::1/0", "redis://***"),
        # A bad port must not stop the masking (it runs while reporting the bad URL)
        ("redis://:s3cret@h:notaport/0", "redis://:***@h:notaport/0"),
    ],
)
def test_masked_url_hides_every_credential(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://h:notaport/0", "port"),
        ("redis://h:65536/0", "port"),
        ("redis://h/notadb", "database number"),
        ("redis://h/0/1", "database number"),
        ("redis://h/0?db=x", "'db'"),
        ("redis://h/0?socket_timeout=soon", "'socket_timeout'"),
        ("redis://h/0?sockettimeout=1", "sockettimeout"),
        ("http://h/0", "scheme"),
        ("redis://h/0?decode_responses=true", "'decode_responses' is not supported"),
        ("redis://h/0?retry_on_error=x", "'retry_on_error' is not supported"),
        ("redis://h/0?retry_on_timeout=yes", "'retry_on_timeout' is not supported"),
        ("redis://h/0?encoding=latin-1", "'encoding' is not supported"),
        ("redis://h/0?protocol=9", "protocol must be 2 or 3"),
        ("redis://h/0?client_name=a%20b", "client_name must be"),
    ],
)
def test_check_redis_url_refuses_what_redis_py_would_misread(url: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason) as raised:
        check_redis_url(url)

    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    "url",
    [
        "redis://h",
        "redis://h/",
        "redis://h:6379/15",
        "rediss://u:p@h:6380/0?ssl_cert_reqs=none",
        "redis://h/0?password=p&socket_timeout=2.5&max_connections=20",
        "unix:///run/redis.sock?db=3",
        "redis://h/0?protocol=3&client_name=katana-1&health_check_interval=5",
    ],
)
def test_check_redis_url_accepts_what_redis_py_reads_right(url: str) -> None:
    check_redis_url(url)

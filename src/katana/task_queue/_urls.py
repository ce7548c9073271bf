"""Broker URLs: checked before use, and shown with every credential masked."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote_plus, urlsplit, urlunsplit

from .errors import ConfigurationError

__all__ = ["check_redis_url", "masked_url"]

#: Query parameters that carry a secret: ``password`` (redis-py and asyncpg take it there as
#: well as in the userinfo), redis-py's ``ssl_password``, asyncpg's ``sslpassword``, and any
#: token or secret a driver may grow.
_SECRET_PARAMETER = re.compile(r"pass|secret|token|credential", re.IGNORECASE)
_MASK = "***"

#: The redis-py URL query parameters Katana supports, and why each is safe to pass through.
#: (RedisBroker takes its pool settings, max_connections, socket_timeout,
#: socket_connect_timeout and pool_timeout, out of the URL before this check.)
_REDIS_PARAMETERS = {
    "db": "the database, as in the path",
    "username": "AUTH, as in the userinfo",
    "password": "AUTH, as in the userinfo",
    "client_name": "CLIENT SETNAME: how the connections show in CLIENT LIST",
    "health_check_interval": "seconds between PINGs on an idle connection",
    "protocol": "RESP 2 or 3; replies are read the same either way",
    "socket_keepalive": "TCP keep-alive on the connections",
    # The pool settings, when RedisBroker has not taken them out (redis-py reads them too).
    "max_connections": "the most connections the pool opens",
    "socket_timeout": "the longest wait for a reply",
    "socket_connect_timeout": "the longest wait to connect",
}
#: Parameters refused with a reason, because they change what the broker reads or sends.
_REFUSED_PARAMETERS = {
    "decode_responses": "the broker reads Redis' replies as bytes",
    "encoding": "the broker encodes what it stores itself",
    "encoding_errors": "the broker encodes what it stores itself",
    "legacy_responses": "the broker reads redis-py's default replies",
    "retry_on_timeout": "a blind resend after a lost reply could claim a task twice",
    "retry_on_error": "a blind resend after a lost reply could claim a task twice",
    "retry": "a blind resend after a lost reply could claim a task twice",
    "single_connection_client": "the broker needs its connection pool",
}
#: What CLIENT SETNAME accepts: no spaces, newlines or other control characters.
_CLIENT_NAME = re.compile(r"[!-~]{1,100}")


def masked_url(url: str) -> str:
    """``url`` with every credential replaced by ``***``, fit for logs, banners and errors.

    Masks the password of the userinfo (``user:password@``), the value of every query
    parameter whose name says it is secret (``?password=``, ``?ssl_password=``,
    ``?sslpassword=``, even percent-encoded) and any fragment; a URL whose password holds an
    unescaped ``/``, ``?`` or ``#`` is masked after its scheme. Never raises, whatever
    ``url`` is: it runs on the way to reporting a bad one.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host: show nothing of it
        return _all_masked(url)
    if "@" not in parts.netloc and "@" in url.partition("://")[2]:
        # A password holding an unescaped "/", "?" or "#" ends the netloc early: the netloc
        # is part of the password and the rest of it is in the path, query or fragment.
        return _all_masked(url)
    masked = parts
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        masked = masked._replace(netloc=f"{user}:{_MASK}@{hostport}")
    if parts.query:
        pairs = [_masked_pair(pair) for pair in parts.query.split("&")]
        masked = masked._replace(query="&".join(pairs))
    if parts.fragment:
        masked = masked._replace(fragment=_MASK)
    # Rebuilt only when something was masked: urlunsplit shortens "memory://" to "memory:".
    return url if masked == parts else urlunsplit(masked)


def _all_masked(url: str) -> str:
    scheme, separator, _rest = url.partition("://")
    return f"{scheme}://{_MASK}" if separator else _MASK


def _masked_pair(pair: str) -> str:
    name, equals, _value = pair.partition("=")
    if equals and _SECRET_PARAMETER.search(unquote_plus(name)):
        return f"{name}={_MASK}"
    return pair


def check_redis_url(url: str) -> None:
    """Raise ``ConfigurationError`` for a Redis URL that redis-py would misread or reject late.

    redis-py takes ``redis://host/notadb`` as db 0 and a misspelt query parameter as a keyword
    argument that fails only on the first connection; both are refused here, with the URL
    masked. Only the query parameters Katana supports pass (``_REDIS_PARAMETERS`` and
    ``ssl_*``); any other, such as ``decode_responses``, is refused, naming it. What
    redis-py itself rejects (a bad port, ``?db=x``) is refused by the caller.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"invalid Redis URL {_shown(url)}: the scheme must be redis, rediss or unix"
        )
    try:
        parts.port  # noqa: B018  # the property raises for a port that is not a number
    except ValueError as exc:  # its message quotes the port: part of a password, maybe
        raise ConfigurationError(
            f"invalid Redis URL {_shown(url)}: the port must be a number in 0..65535"
        ) from exc
    if parts.scheme != "unix" and not re.fullmatch(r"/?|/[0-9]+", unquote_plus(parts.path)):
        raise ConfigurationError(
            f"invalid Redis URL {_shown(url)}: the path must be a database number, "
            f"like /0, got {parts.path[:50]!r}"
        )
    _check_redis_parameters(url, parts.query)
    # redis-py hands unknown query parameters to the connection class, which rejects them
    # only when the first connection is made: build one now (no I/O) to find out.
    from redis.asyncio.connection import ConnectionPool  # only Redis URLs need redis

    try:
        pool = ConnectionPool.from_url(url)
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid Redis URL {_shown(url)}: {exc}") from exc


def _check_redis_parameters(url: str, query: str) -> None:
    """Refuse every query parameter Katana does not support, naming it, and the values of
    ``protocol`` and ``client_name`` that Redis would refuse only when a connection is set up."""
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.startswith("ssl_") or name in _REDIS_PARAMETERS:  # ssl_*: TLS, for rediss://
            reason = None
            if name == "protocol" and value not in ("2", "3"):
                reason = f"protocol must be 2 or 3, got {value!r:.40}"
            elif name == "client_name" and not _CLIENT_NAME.fullmatch(value):
                reason = (
                    "client_name must be 1 to 100 printable characters without spaces, "
                    f"got {value!r:.40}"
                )
            if reason is None:
                continue
        else:
            why = _REFUSED_PARAMETERS.get(name, "Katana does not support it")
            reason = f"the query parameter {name!r:.30} is not supported: {why}"
        raise ConfigurationError(f"invalid Redis URL {_shown(url)}: {reason}")


def _shown(url: str) -> str:
    """``url`` masked and cut to a length fit for a one-line error."""
    masked = masked_url(url)
    return masked if len(masked) <= 60 else masked[:59] + "…"

"""What the ``katana`` commands are pointed at: an app's service (``module:attr``), a broker URL."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import re
import sys
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl

import click

from ._urls import masked_url
from .broker.memory import InMemoryBroker
from .errors import ConfigurationError
from .service import TaskQueueService

if TYPE_CHECKING:
    from .broker._sqlite_file import Durability
    from .broker.base import AbstractBroker

__all__ = ["broker_from_url", "load_service", "require_extra"]


def broker_from_url(url: str, *, queue: str | None = None) -> AbstractBroker:
    """A broker for ``url``: ``redis://`` or ``rediss://`` (RedisBroker), ``sqlite:///``
    (SqliteBroker), ``memory://``.

    Raises ``ConfigurationError`` for a URL or queue name the broker cannot use, or when the
    extra the URL needs is not installed.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        require_extra("redis", "redis", f"{scheme}:// URLs")
        from .broker.redis import RedisBroker  # imported here: it needs the [redis] extra

        try:
            return RedisBroker(url, queue="default" if queue is None else queue)
        except ConfigurationError:
            raise
        except ValueError as exc:  # a bad setting in the URL's query string
            raise ConfigurationError(str(exc)) from exc
    if scheme == "memory":
        broker = InMemoryBroker()
        if queue is not None:  # a fresh, empty queue of that name: the commands show it
            if not _MEMORY_QUEUE_NAME.fullmatch(queue):
                raise ConfigurationError(
                    f"queue name must match {_MEMORY_QUEUE_NAME.pattern}, got {queue!r:.120}"
                )
            broker.queue = queue
        return broker
    if scheme == "sqlite":
        from .broker.sqlite import SqliteBroker

        path, durability = _sqlite_target(url)
        return SqliteBroker(
            path, queue="default" if queue is None else queue, durability=durability
        )
    raise ConfigurationError(
        f"unsupported broker URL {masked_url(url)!r}: use redis://, rediss://, sqlite:/// or "
        "memory://"
    )


def _sqlite_target(url: str) -> tuple[str, Durability]:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (as SQLAlchemy reads them),
    optionally with ``?durability=fast``: the file's path and the durability."""
    rest = url.split("://", 1)[1]
    target, _, query = rest.partition("?")
    options = dict(parse_qsl(query))
    durability = options.pop("durability", "full")
    if not target.startswith("/") or not target[1:] or options or durability not in _DURABILITY:
        raise ConfigurationError(
            f"invalid SQLite URL {masked_url(url)[:200]!r}: expected "
            "sqlite:///<path>[?durability=full|fast]"
        )
    return target[1:], cast("Durability", durability)


_DURABILITY = ("full", "fast")
#: The queue names RedisBroker accepts: an in-memory queue takes the same.
_MEMORY_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


def require_extra(module: str, extra: str, feature: str) -> None:
    """Raise ``ConfigurationError`` naming the ``pip install`` if ``module`` cannot be imported."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"{feature} need the {extra} extra: pip install 'katana-task-queue[{extra}]' ({exc})"
        ) from exc


def load_service(target: str) -> TaskQueueService:
    """Import ``module:attr``; attr is a TaskQueueService or a (sync or async) factory of one."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected module:attribute, got {target!r}", param_hint="APP")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the app's own modules import
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="APP") from exc
    try:
        value: Any = getattr(module, attr)
    except AttributeError as exc:
        raise click.BadParameter(
            f"{module_name!r} has no attribute {attr!r}", param_hint="APP"
        ) from exc
    if not isinstance(value, TaskQueueService) and callable(value):
        value = value()
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
    if not isinstance(value, TaskQueueService):
        raise click.BadParameter(
            f"{target} is a {type(value).__name__}, not a TaskQueueService or a factory of one",
            param_hint="APP",
        )
    return value


async def _await(value: Any) -> Any:
    return await value

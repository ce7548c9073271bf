"""A standalone dashboard app for one queue: what ``katana dashboard`` serves."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from .. import __version__
from ..errors import BrokerUnavailableError
from ..management import QueueManager
from . import katana_router

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from typing import Any

    from ..broker.base import AbstractBroker

__all__ = ["create_dashboard_app"]

logger = logging.getLogger(__name__)


def create_dashboard_app(
    broker: AbstractBroker,
    *,
    read_only: bool = False,
    auth: Callable[..., Any] | None = None,
    title: str = "Katana",
) -> FastAPI:
    """A FastAPI app serving the dashboard at ``/`` and the JSON API at ``/api`` for ``broker``.

    The app owns ``broker``: its lifespan connects it and closes it on exit. It runs no
    workers, so it can watch a queue whose workers run elsewhere (or none at all). When the
    broker is unreachable at startup the app starts anyway and its pages show a banner until
    the broker answers.
    """
    manager = QueueManager(broker)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await broker.connect()
        except BrokerUnavailableError as exc:
            logger.warning(
                "broker unreachable at startup (%s); the dashboard shows a banner until it answers",
                exc,
                extra={"katana_event": "broker_error"},
            )
        try:
            yield
        finally:
            await broker.close()

    app = FastAPI(
        title=f"{title} dashboard",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.include_router(katana_router(manager, auth=auth, read_only=read_only, title=title))
    return app

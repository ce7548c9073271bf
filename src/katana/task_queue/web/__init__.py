"""Katana's web layer: a FastAPI router with the JSON API, the dashboard and ``/metrics``.

Mount it in any FastAPI app (needs the ``web`` extra)::

    app.include_router(katana_router(manager), prefix="/katana")

``manager`` is a ``QueueManager``, or a callable taking the request and returning one (for an
app that builds its service in its lifespan). ``auth`` is a FastAPI dependency the app
provides: it runs before every route and rejects a request by raising ``HTTPException``.
With ``read_only=True`` every state-changing route answers 403. State-changing requests must
carry the ``X-Katana-Request`` header and, when the browser sends an ``Origin``, come from the
same host: a cross-site form or script cannot act on the queue.

An app's own routes can answer like the router's: ``http_errors()`` turns Katana's exceptions
into 404/409/422/503 (with ``Retry-After``), and ``validation_error_handler``, installed with
``app.exception_handler(RequestValidationError)``, keeps a 422 from echoing unbounded or
unencodable input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from fastapi import APIRouter, Depends
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "katana.task_queue.web needs FastAPI: pip install 'katana-task-queue[web]'"
    ) from exc

from ..management import QueueManager
from ..metrics import KatanaMetrics
from . import _api, _dashboard, _metrics_route
from ._deps import CSRF_HEADER, Dependencies, ManagerSource, WebSettings
from ._errors import http_errors, validation_error_handler
from ._schemas import TaskOut

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CSRF_HEADER", "TaskOut", "http_errors", "katana_router", "validation_error_handler"]


def katana_router(
    manager: ManagerSource,
    *,
    auth: Callable[..., Any] | None = None,
    read_only: bool = False,
    title: str = "Katana",
    metrics: KatanaMetrics | None = None,
) -> APIRouter:
    """The API (``/api/...``), the dashboard (``/``) and ``/metrics``, as one router to mount.

    ``metrics``: where ``/metrics`` counts this process's task events; by default a new
    ``KatanaMetrics`` on its own registry, installed now. Its ``queue`` label is the manager's
    queue; when ``manager`` is a callable, pass ``KatanaMetrics(queue=...)`` so events before
    the first scrape carry the right label.
    """
    if metrics is None:
        queue = manager.queue if isinstance(manager, QueueManager) else None
        metrics = KatanaMetrics(queue=queue)
    metrics.install()
    settings = WebSettings(manager=manager, read_only=read_only, title=title, metrics=metrics)
    guards = [] if auth is None else [Depends(auth)]
    router = APIRouter(dependencies=[*guards, Depends(Dependencies(settings).bind)])
    router.include_router(_api.router)
    router.include_router(_dashboard.router)
    router.include_router(_metrics_route.router)
    return router

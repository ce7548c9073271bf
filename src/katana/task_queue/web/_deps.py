"""What every route depends on: the manager, the app's auth hook, read-only mode, CSRF."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status

from ..management import QueueManager

if TYPE_CHECKING:
    from ..metrics import KatanaMetrics

__all__ = [
    "CSRF_HEADER",
    "Dependencies",
    "Manager",
    "ManagerSource",
    "WebSettings",
    "current_manager",
    "current_settings",
    "require_write",
]

#: State-changing requests must carry this header. A cross-site form or image cannot set a
#: custom header, and a cross-site script that tries needs a CORS preflight the app refuses.
CSRF_HEADER = "X-Katana-Request"

ManagerSource = QueueManager | Callable[[Request], QueueManager]


@dataclass(frozen=True, slots=True)
class WebSettings:
    """How a mounted router behaves; kept on the router and read by its dependencies."""

    manager: ManagerSource
    read_only: bool = False
    title: str = "Katana"
    metrics: KatanaMetrics | None = None


class Dependencies:
    """The router's dependencies, bound to its settings (one instance per mounted router)."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings

    def bind(self, request: Request) -> None:
        """Runs first on every route of the mounted router: the routes read these back."""
        request.state.katana_settings = self.settings
        source = self.settings.manager
        manager = source if isinstance(source, QueueManager) else source(request)
        request.state.katana_manager = manager


def current_manager(request: Request) -> QueueManager:
    manager: QueueManager = request.state.katana_manager
    return manager


def current_settings(request: Request) -> WebSettings:
    settings: WebSettings = request.state.katana_settings
    return settings


def require_write(request: Request) -> None:
    """Refuse a state-changing request in read-only mode, or one that may be cross-site."""
    if current_settings(request).read_only:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the Katana API is mounted read-only")
    if request.headers.get(CSRF_HEADER) is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"state-changing requests need the {CSRF_HEADER} header (cross-site protection)",
        )
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"cross-site request from {origin}")


#: A route parameter: the mounted router's QueueManager.
Manager = Annotated[QueueManager, Depends(current_manager)]

"""``GET /metrics``: Prometheus scrapes this process's counters and the queue's gauges."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response, status

from ..metrics import CONTENT_TYPE_LATEST
from ._deps import Manager, WebSettings, current_settings
from ._errors import http_errors

router = APIRouter(tags=["katana"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(
    manager: Manager, settings: Annotated[WebSettings, Depends(current_settings)]
) -> Response:
    """Counters of this process, and gauges read from the broker now."""
    exposition = settings.metrics
    if exposition is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "metrics are not enabled on this router")
    with http_errors():
        await exposition.refresh(manager.broker)
    return Response(exposition.render(), media_type=CONTENT_TYPE_LATEST)

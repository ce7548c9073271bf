"""The dashboard: server-rendered pages (Jinja2 + htmx) that look at and steer the queue.

Every page has a "live" region its htmx polls every 2 s while the tab is visible; the route of
that region catches broker errors and renders a banner in its place (status 200, so htmx
swaps it in and keeps polling until the broker answers again). Actions go through the same
``QueueManager`` and the same ``require_write`` guard as the JSON API.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.routing import APIRoute

from ..errors import BrokerError, TaskNotFoundError
from ..listing import TaskQuery
from ..management import DEAD_LETTER_STATUSES
from ..models import TERMINAL_STATUSES, TaskStatus
from ._deps import Manager, require_write
from ._errors import RETRY_AFTER_SECONDS, SafeValidationRoute, http_errors
from ._views import (
    STATIC_DIR,
    FilterError,
    Listing,
    base_path,
    form_data,
    parse_listing,
)
from ._views import render as render_template

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping

    from ..listing import TaskPage
    from ..management import QueueManager

__all__ = ["router"]

logger = logging.getLogger(__name__)

#: The dashboard's pages and actions; ``katana_router`` mounts it after the API.
router = APIRouter(include_in_schema=False, route_class=SafeValidationRoute)
_write = [Depends(require_write)]

#: The files under ``static/`` the dashboard serves, and their media types.
_STATIC_FILES = {
    "htmx.min.js": "text/javascript",
    "katana.css": "text/css",
    "katana.js": "text/javascript",
    "htmx.LICENSE": "text/plain",
}


@dataclass(frozen=True, slots=True)
class _TableView:
    """A page that lists tasks in a table with bulk actions."""

    key: str
    title: str
    actions: tuple[str, ...]


_TASKS = _TableView("tasks", "Tasks", ("retry", "cancel", "delete"))
_DEAD_LETTERS = _TableView("dead-letters", "Dead letters", ("retry", "delete"))
_SCHEDULED = _TableView("scheduled", "Scheduled", ("cancel",))
_VIEWS = {view.key: view for view in (_TASKS, _DEAD_LETTERS, _SCHEDULED)}


def _base(request: Request) -> str:
    """The path the router is mounted at, for this request's links."""
    return base_path(request, _ROUTE_PATHS[request.scope["endpoint"]])


def _render(
    request: Request, template: str, context: Mapping[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    return render_template(request, template, context, base=_base(request), status_code=status_code)


# -- rendering with the broker's errors caught -------------------------------------------


async def _show(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    load: Callable[[], Awaitable[Mapping[str, Any]]],
    *,
    live: bool,
) -> HTMLResponse:
    """Render ``template`` with what ``load`` reads, or with a banner if the broker fails.

    A live region answers 200 with the banner so htmx swaps it in and keeps polling; a full
    page answers 503 (still a readable page).
    """
    try:
        loaded = await load()
    except BrokerError as exc:
        return _broker_down(request, template, context, exc, live=live)
    return _render(request, template, {**context, **loaded})


def _broker_down(
    request: Request, template: str, context: Mapping[str, Any], exc: BrokerError, *, live: bool
) -> HTMLResponse:
    # Polls repeat every 2 s per open tab: only the page loads are worth a warning.
    logger.log(
        logging.DEBUG if live else logging.WARNING,
        "dashboard: broker error: %s",
        exc,
        extra={"katana_event": "dashboard_broker_error"},
    )
    failed = {**context, "broker_error": str(exc) or type(exc).__name__}
    if live:
        return _render(request, template, failed)
    page = _render(request, template, failed, status_code=503)
    page.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return page


def _error_page(request: Request, status_code: int, message: str) -> HTMLResponse:
    return _render(request, "error.html", {"message": message}, status_code=status_code)


def _listing(request: Request, view: _TableView) -> Listing:
    try:
        return _view_listing(view, request.query_params)
    except FilterError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc


def _view_listing(view: _TableView, params: Mapping[str, str]) -> Listing:
    """The listing ``params`` ask of ``view``; raises ``FilterError``."""
    listing = parse_listing(params)
    query = listing.query
    if view is _DEAD_LETTERS and (
        query.scheduled is not None or query.status not in (None, *DEAD_LETTER_STATUSES)
    ):
        raise FilterError("dead letters are FAILED or DEAD: filter by one of those, or by none")
    return listing


@contextmanager
def _acting() -> Iterator[None]:
    """An action's errors as HTTP errors: 400, 404, 409, 422 or 503 with a clear message."""
    with http_errors():
        try:
            yield
        except FilterError as exc:  # before http_errors makes this ValueError a 422
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc


def _flash(response: Response, message: str) -> Response:
    """Show ``message`` in the page's flash area (katana.js listens for this event)."""
    response.headers["HX-Trigger"] = json.dumps({"katanaFlash": {"message": message}})
    return response


# -- overview --------------------------------------------------------------------------


async def _overview(manager: QueueManager) -> dict[str, Any]:
    overview = await manager.overview()
    return {"overview": overview, "peak": max(overview.finished_per_minute, default=0)}


@router.get("/", response_class=HTMLResponse)
async def _overview_page(request: Request, manager: Manager) -> HTMLResponse:
    context = {"page": "overview", "queue": manager.queue}
    return await _show(request, "overview.html", context, lambda: _overview(manager), live=False)


@router.get("/_/overview", response_class=HTMLResponse)
async def _overview_live(request: Request, manager: Manager) -> HTMLResponse:
    context = {"queue": manager.queue}
    return await _show(
        request, "overview_live.html", context, lambda: _overview(manager), live=True
    )


@router.post("/queue/pause", dependencies=_write)
async def _pause(request: Request, manager: Manager) -> Response:
    with _acting():
        await manager.pause()
    return _flash(await _overview_live(request, manager), "Queue paused: workers stop claiming")


@router.post("/queue/resume", dependencies=_write)
async def _resume(request: Request, manager: Manager) -> Response:
    with _acting():
        await manager.resume()
    return _flash(await _overview_live(request, manager), "Queue resumed")


# -- task tables: all tasks, dead letters, scheduled -----------------------------------------


async def _table(manager: QueueManager, view: _TableView, listing: Listing) -> dict[str, Any]:
    page: TaskPage
    if view is _DEAD_LETTERS:
        page = await manager.dead_letters(listing.query, limit=listing.limit, offset=listing.offset)
    elif view is _SCHEDULED:
        page = await manager.scheduled(limit=listing.limit, offset=listing.offset)
    else:
        page = await manager.tasks(listing.query, limit=listing.limit, offset=listing.offset)
    return {"page_of_tasks": page}


async def _table_response(
    request: Request, manager: Manager, view: _TableView, *, live: bool, listing: Listing
) -> HTMLResponse:
    context = {"page": view.key, "view": view, "listing": listing, "queue": manager.queue}
    template = "table_live.html" if live else "table.html"
    return await _show(
        request, template, context, lambda: _table(manager, view, listing), live=live
    )


async def _table_page(request: Request, manager: Manager, view: _TableView) -> HTMLResponse:
    try:
        listing = _view_listing(view, request.query_params)
    except FilterError as exc:
        return _error_page(request, status.HTTP_400_BAD_REQUEST, f"Invalid filter: {exc}")
    return await _table_response(request, manager, view, live=False, listing=listing)


@router.get("/tasks", response_class=HTMLResponse)
async def _tasks_page(request: Request, manager: Manager) -> HTMLResponse:
    return await _table_page(request, manager, _TASKS)


@router.get("/dead-letters", response_class=HTMLResponse)
async def _dead_letters_page(request: Request, manager: Manager) -> HTMLResponse:
    return await _table_page(request, manager, _DEAD_LETTERS)


@router.get("/scheduled", response_class=HTMLResponse)
async def _scheduled_page(request: Request, manager: Manager) -> HTMLResponse:
    return await _table_page(request, manager, _SCHEDULED)


@router.get("/_/table/{view_key}", response_class=HTMLResponse)
async def _table_live(request: Request, manager: Manager, view_key: str) -> HTMLResponse:
    view = _VIEWS.get(view_key)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task listing is named {view_key!r}")
    listing = _listing(request, view)
    return await _table_response(request, manager, view, live=True, listing=listing)


@router.post("/tasks/bulk", dependencies=_write)
async def _bulk(request: Request, manager: Manager) -> Response:
    """Retry, cancel or delete the checked tasks; answers the refreshed table."""
    with _acting():
        form = await form_data(request)
        view = _VIEWS.get(form.get("view"), _TASKS)
        action = form.get("action")
        if action not in view.actions:
            raise FilterError(f"action must be one of {', '.join(view.actions)}, got {action!r}")
        ids = form.all("ids")
        if not ids:
            raise FilterError("select at least one task first")
        listing = parse_listing(form.as_dict())
        act = {
            "retry": manager.retry_many,
            "cancel": manager.cancel_many,
            "delete": manager.delete_many,
        }[action]
        result = await act(ids)
    message = f"{action.capitalize()}: {len(result.done)} done"
    if result.skipped:
        reasons = "; ".join(sorted(set(result.skipped.values()))[:3])
        message += f", {len(result.skipped)} skipped ({reasons})"
    response = await _table_response(request, manager, view, live=True, listing=listing)
    return _flash(response, message)


async def _matching(request: Request, manager: Manager, purge: bool) -> Response:
    """Act on the dead letters the listing shown selects: the same filter as its list and count.

    The form sends the count it showed (``expected``); a purge deletes nothing if more match
    by now, so it never removes more than the page said it would.
    """
    with _acting():
        form = await form_data(request)
        listing = _view_listing(_DEAD_LETTERS, form.as_dict())
        query = TaskQuery(
            status=listing.query.status, name=listing.query.name, text=listing.query.text
        )
        if purge:
            expected = form.get("expected").strip()
            if not (expected.isdecimal() and len(expected) <= 9):
                raise FilterError("the purge form must say how many tasks it showed (expected)")
            count = await manager.delete_matching(query, at_most=int(expected))
        else:
            count = await manager.retry_matching(query)
    shown = Listing(query=listing.query, limit=listing.limit)
    response = await _table_response(request, manager, _DEAD_LETTERS, live=True, listing=shown)
    verb = "Purged" if purge else "Queued again"
    return _flash(response, f"{verb}: {count} task{'' if count == 1 else 's'}")


@router.post("/dead-letters/redrive", dependencies=_write)
async def _redrive(request: Request, manager: Manager) -> Response:
    """Queue again every dead letter the form's filter selects."""
    return await _matching(request, manager, purge=False)


@router.post("/dead-letters/purge", dependencies=_write)
async def _purge(request: Request, manager: Manager) -> Response:
    """Delete every dead letter the form's filter selects."""
    return await _matching(request, manager, purge=True)


# -- one task ------------------------------------------------------------------------------


async def _task(manager: QueueManager, task_id: str) -> dict[str, Any]:
    try:
        task = await manager.task(task_id)
    except TaskNotFoundError:
        return {"task": None}
    return {"task": task, "finished": task.status in TERMINAL_STATUSES}


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
async def _task_page(request: Request, manager: Manager, task_id: str) -> HTMLResponse:
    context = {"page": "tasks", "task_id": task_id, "queue": manager.queue}
    try:
        loaded = await _task(manager, task_id)
    except BrokerError as exc:
        return _broker_down(request, "task.html", context, exc, live=False)
    if loaded["task"] is None:
        return _error_page(request, status.HTTP_404_NOT_FOUND, f"No task has id {task_id!r}.")
    return _render(request, "task.html", {**context, **loaded})


@router.get("/_/tasks/{task_id}", response_class=HTMLResponse)
async def _task_live(request: Request, manager: Manager, task_id: str) -> HTMLResponse:
    context = {"task_id": task_id}
    return await _show(
        request, "task_live.html", context, lambda: _task(manager, task_id), live=True
    )


@router.post("/tasks/{task_id}/retry", dependencies=_write)
async def _retry(request: Request, manager: Manager, task_id: str) -> Response:
    with _acting():
        await manager.retry(task_id)
    return _flash(await _task_live(request, manager, task_id), "Task queued again")


@router.post("/tasks/{task_id}/cancel", dependencies=_write)
async def _cancel(request: Request, manager: Manager, task_id: str) -> Response:
    with _acting():
        task = await manager.cancel(task_id)
    message = (
        "Task cancelled"
        if task.status is TaskStatus.CANCELLED
        else "Cancellation requested: the worker stops the task"
    )
    return _flash(await _task_live(request, manager, task_id), message)


@router.post("/tasks/{task_id}/delete", dependencies=_write)
async def _delete(request: Request, manager: Manager, task_id: str) -> Response:
    with _acting():
        await manager.delete(task_id)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    # A full navigation: the task's page no longer has anything to show.
    response.headers["HX-Redirect"] = f"{_base(request)}/tasks"
    return response


# -- workers ---------------------------------------------------------------------------------


async def _workers(manager: QueueManager) -> dict[str, Any]:
    return {"workers": await manager.workers()}


@router.get("/workers", response_class=HTMLResponse)
async def _workers_page(request: Request, manager: Manager) -> HTMLResponse:
    context = {"page": "workers", "queue": manager.queue}
    return await _show(request, "workers.html", context, lambda: _workers(manager), live=False)


@router.get("/_/workers", response_class=HTMLResponse)
async def _workers_live(request: Request, manager: Manager) -> HTMLResponse:
    return await _show(request, "workers_live.html", {}, lambda: _workers(manager), live=True)


# -- static files ----------------------------------------------------------------------------


@router.get("/static/{name}")
async def _static(name: str) -> FileResponse:
    """The vendored htmx and the dashboard's own CSS and JS (only these names)."""
    media_type = _STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no static file is named {name!r}")
    return FileResponse(
        STATIC_DIR / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=3600"},
    )


#: Each route's path as declared here, before any prefix: how ``_base`` finds the prefix.
_ROUTE_PATHS = {
    route.endpoint: route.path for route in router.routes if isinstance(route, APIRoute)
}

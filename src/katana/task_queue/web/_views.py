"""What the dashboard's routes share: templates, the router's base path, filters from the URL."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from ..listing import MAX_PAGE_SIZE, TaskQuery
from ..management import attempts_summary
from ..models import TERMINAL_STATUSES, TaskStatus
from ._deps import CSRF_HEADER, current_manager, current_settings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fastapi import Request

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "STATIC_DIR",
    "TEMPLATE_DIR",
    "FilterError",
    "Form",
    "Listing",
    "base_path",
    "form_data",
    "parse_listing",
    "render",
]

STATIC_DIR = Path(__file__).parent / "static"
TEMPLATE_DIR = Path(__file__).parent / "templates"
DEFAULT_PAGE_SIZE = 50
#: Longest name or text filter accepted (the API's limit too).
_MAX_FILTER_LENGTH = 200


class FilterError(ValueError):
    """A filter in the URL or a form is not valid: the page answers 400 with this message."""


# -- templates -----------------------------------------------------------------------------


def _pretty_json(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # a result that is not JSON (only the in-memory broker keeps one)
        return repr(value)


def _timestamp(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # Task.errors keeps ISO strings
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    """``0.4 s``, ``42 s``, ``3 min 5 s``, ``2 h 10 min``: short and readable."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def _ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    delta = (now - value).total_seconds()
    return f"in {_duration(-delta)}" if delta < 0 else f"{_duration(delta)} ago"


_environment = Environment(
    loader=FileSystemLoader(TEMPLATE_DIR),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_environment.filters.update(json=_pretty_json, timestamp=_timestamp, duration=_duration)
_environment.globals.update(
    ago=_ago,
    attempts_summary=attempts_summary,
    statuses=list(TaskStatus),
    terminal_statuses=TERMINAL_STATUSES,
    csrf_header=CSRF_HEADER,
    page_size=DEFAULT_PAGE_SIZE,
)


def base_path(request: Request, route_path: str) -> str:
    """Where the router is mounted, e.g. ``/katana`` (``""`` at the root), with root_path.

    ``route_path`` is the path of the request's route as the router declares it (e.g.
    ``/tasks/{task_id}``): filled with the request's parameters and taken off the end of the
    request's path, it leaves the prefix the app mounted the router at. This works at any
    prefix, behind a proxy's root_path, whichever way the FastAPI version records included
    routes, and when an app mounts two dashboards (where route names, so ``url_for``, collide).
    """
    own = route_path.format(**request.path_params)
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    mount = path[: -len(own)] if path.endswith(own) else ""
    return root + mount


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    base: str,
    status_code: int = 200,
) -> HTMLResponse:
    """Render ``template`` with what every page needs (base path, title, read-only, now)."""
    settings = current_settings(request)
    full = {
        "base": base,
        "title": settings.title,
        "queue": current_manager(request).queue,
        "page": "",
        "read_only": settings.read_only,
        "now": datetime.now(UTC),
        "broker_error": None,
        "flash": None,
        **context,
    }
    html = _environment.get_template(template).render(full)
    return HTMLResponse(html, status_code=status_code)


# -- filters from the URL and forms --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listing:
    """A task listing as the URL asks for it: filters, page size and offset."""

    query: TaskQuery = field(default_factory=TaskQuery)
    limit: int = DEFAULT_PAGE_SIZE
    offset: int = 0

    def params(self, **changes: int) -> str:
        """The query string for this listing, with ``offset``/``limit`` changed."""
        listing = replace(self, **changes)  # type: ignore[arg-type]  # only int fields
        query = listing.query
        pairs = {
            "status": "" if query.status is None else query.status.value,
            "scheduled": {None: "", True: "yes", False: "no"}[query.scheduled],
            "name": query.name or "",
            "text": query.text or "",
            "limit": "" if listing.limit == DEFAULT_PAGE_SIZE else str(listing.limit),
            "offset": "" if listing.offset == 0 else str(listing.offset),
        }
        return urlencode({key: value for key, value in pairs.items() if value})


def _integer(raw: str | None, what: str, default: int, low: int, high: int) -> int:
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FilterError(f"{what} must be an integer, got {raw!r:.100}") from None
    if not low <= value <= high:
        raise FilterError(f"{what} must be from {low} to {high}, got {raw.strip():.100}")
    return value


def _status(raw: str | None) -> TaskStatus | None:
    if raw is None or not raw.strip():
        return None
    try:
        return TaskStatus(raw.strip().upper())
    except ValueError:
        names = ", ".join(status.value for status in TaskStatus)
        raise FilterError(f"status must be one of {names}, got {raw!r:.100}") from None


_SCHEDULED = {"": None, "any": None, "yes": True, "true": True, "no": False, "false": False}


def _text(raw: str | None, what: str) -> str | None:
    value = (raw or "").strip()
    if len(value) > _MAX_FILTER_LENGTH:
        raise FilterError(f"{what} must be at most {_MAX_FILTER_LENGTH} characters")
    return value or None


def parse_listing(params: Mapping[str, str]) -> Listing:
    """The listing ``params`` (a URL's query or a form) ask for; raises ``FilterError``."""
    scheduled_raw = params.get("scheduled", "").strip().lower()
    if scheduled_raw not in _SCHEDULED:
        raise FilterError(f"scheduled must be yes, no or empty, got {scheduled_raw!r:.100}")
    try:
        query = TaskQuery(
            status=_status(params.get("status")),
            scheduled=_SCHEDULED[scheduled_raw],
            name=_text(params.get("name"), "name"),
            text=_text(params.get("text"), "text"),
        )
    except ValueError as exc:  # e.g. scheduled with a status other than PENDING
        raise FilterError(str(exc)) from exc
    return Listing(
        query=query,
        limit=_integer(params.get("limit"), "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
        offset=_integer(params.get("offset"), "offset", 0, 0, 10**9),
    )


@dataclass(frozen=True, slots=True)
class Form:
    """A submitted form: single values by name, and every value of a repeated field."""

    pairs: list[tuple[str, str]]

    def get(self, key: str, default: str = "") -> str:
        return next((value for name, value in self.pairs if name == key), default)

    def all(self, key: str) -> list[str]:
        return [value for name, value in self.pairs if name == key]

    def as_dict(self) -> dict[str, str]:
        return dict(reversed(self.pairs))


async def form_data(request: Request) -> Form:
    """The URL-encoded form htmx posts (parsed here: no python-multipart dependency)."""
    body = await request.body()
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=2 * MAX_PAGE_SIZE)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FilterError(f"the form could not be read: {exc}") from exc
    return Form(pairs)

"""Katana's exceptions as HTTP errors with a clear message: never a 500 for bad input.

Everything an error response says back about the request goes through ``shown``: a client may
send text of any length, lone surrogates (valid in JSON, not encodable as UTF-8: the response
itself would fail with a 500) and numbers such as ``1e400`` (infinity to Python's parser).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from ..errors import (
    BrokerError,
    InvalidTaskError,
    TaskNotFoundError,
    TaskStateError,
    UnknownTaskError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

    from fastapi import Request, Response

__all__ = [
    "MAX_SHOWN_CHARS",
    "RETRY_AFTER_SECONDS",
    "SafeValidationRoute",
    "http_errors",
    "shown",
    "unavailable",
    "validation_error_handler",
    "validation_errors",
]

#: The most characters of one client-sent string an error response repeats.
MAX_SHOWN_CHARS = 200
#: The most characters of one of our own messages (which quote client input, truncated).
_MAX_MESSAGE_CHARS = 2000
#: At most this many validation errors are listed (a long list repeats one mistake), and a
#: longer list or dict in an echo is shown as its (cut) repr.
_MAX_ITEMS = 20
#: What a 503 tells clients to wait before trying again: the worker's reconnect backoff cap.
RETRY_AFTER_SECONDS = 5


def shown(value: Any, limit: int = MAX_SHOWN_CHARS) -> Any:
    """``value`` (JSON-like) made safe to send back: encodable, finite and bounded.

    Strings (dict keys too) are cut to ``limit`` characters and lone surrogates written as
    ``\\udXXX``; NaN and infinities become their repr, a huge int its size; a list or dict is
    kept as such when short, else replaced by its repr, cut.
    """
    if isinstance(value, str):
        return _text(value, limit)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else f"an int of {value.bit_length()} bits"
    if isinstance(value, dict | list):
        if len(value) > _MAX_ITEMS:
            return _text(repr(value), limit)  # repr escapes surrogates and never fails
        if isinstance(value, dict):
            return {_text(str(key), limit): shown(item, limit) for key, item in value.items()}
        return [shown(item, limit) for item in value]
    return _text(str(value), limit)


def _text(text: str, limit: int) -> str:
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def validation_errors(exc: RequestValidationError) -> list[Any]:
    """The errors of a rejected request, as FastAPI lists them, with their echoes ``shown``."""
    errors = jsonable_encoder(exc.errors()[:_MAX_ITEMS])
    return [shown(error) for error in errors]


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for a request that fails validation, minus its 500s (see ``shown``).

    Install it on an app with ``app.exception_handler(RequestValidationError)``; the Katana
    router's own routes use it whatever app mounts them (``SafeValidationRoute``).
    """
    assert isinstance(exc, RequestValidationError)  # registered for this class only
    return JSONResponse(
        {"detail": validation_errors(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )


class SafeValidationRoute(APIRoute):
    """A route answering bad input with ``validation_error_handler``, in any app."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return await validation_error_handler(request, exc)

        return handle


def unavailable(exc: Exception) -> HTTPException:
    """A 503 for a broker that cannot serve now, telling clients when to try again."""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        _message(exc),
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@contextmanager
def http_errors() -> Iterator[None]:
    """Turn the errors a management call raises on purpose into 404, 409, 422 or 503."""
    try:
        yield
    except TaskNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _message(exc)) from exc
    except TaskStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, _message(exc)) from exc
    except (InvalidTaskError, UnknownTaskError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, _message(exc)) from exc
    except BrokerError as exc:  # unreachable, or closed while the app shuts down
        raise unavailable(exc) from exc


def _message(exc: Exception) -> str:
    return _text(str(exc), _MAX_MESSAGE_CHARS)

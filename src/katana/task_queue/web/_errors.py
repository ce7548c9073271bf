"""Katana's exceptions as HTTP errors with a clear message: never a 500 for bad input."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from fastapi import HTTPException, status

from ..errors import (
    BrokerUnavailableError,
    InvalidTaskError,
    TaskNotFoundError,
    TaskStateError,
    UnknownTaskError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["http_errors"]


@contextmanager
def http_errors() -> Iterator[None]:
    """Turn the errors a management call raises on purpose into 404, 409, 422 or 503."""
    try:
        yield
    except TaskNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except TaskStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except (InvalidTaskError, UnknownTaskError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except BrokerUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc

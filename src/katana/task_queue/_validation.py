"""Checks on what ``add_task`` is given, done before anything is enqueued."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any

import orjson

from .config import MAX_RETRIES_LIMIT
from .errors import InvalidTaskError
from .models import Task, new_pending_task

__all__ = [
    "MAX_DELAY_SECONDS",
    "MAX_PAYLOAD_BYTES",
    "MAX_PRIORITY",
    "MAX_TASK_ID_LENGTH",
    "MAX_TASK_NAME_LENGTH",
    "MAX_UNIQUE_KEY_LENGTH",
    "MIN_PRIORITY",
    "check_delay",
    "check_max_retries",
    "check_priority",
    "check_task_id",
    "check_task_name",
    "check_text",
    "check_timeout",
    "check_unique_key",
    "check_wait_seconds",
    "could_be_task_id",
    "detached_payload",
    "json_safe",
    "new_checked_task",
]

#: Priorities fit in a signed 32-bit integer, so every backend can index them.
MIN_PRIORITY = -(2**31)
MAX_PRIORITY = 2**31 - 1
#: Longer delays belong in a scheduler, not in a queue.
MAX_DELAY_SECONDS = 30 * 24 * 3600.0
#: Unique keys are identifiers, not documents.
MAX_UNIQUE_KEY_LENGTH = 512
#: Caller-chosen task ids: ASCII letters, digits and ``_ . : -``, so that they are safe in a
#: Redis key, a URL path segment and a log line as they are.
MAX_TASK_ID_LENGTH = 128
_TASK_ID = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_TASK_ID_LENGTH}}}")
#: The largest JSON-encoded payload a task may carry.
MAX_PAYLOAD_BYTES = 1024 * 1024
#: Task names are identifiers; the HTTP API takes no longer ones, so none is registered.
MAX_TASK_NAME_LENGTH = 200


def check_task_name(name: object) -> str:
    """``name`` if it can be registered: a non-empty str that every broker can store."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_TASK_NAME_LENGTH:
        raise InvalidTaskError(
            f"a task name must be a non-empty str of at most {MAX_TASK_NAME_LENGTH} "
            f"characters, got {type(name).__name__} {name!r:.80}"
        )
    try:
        name.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: no broker could store or send it
        raise InvalidTaskError(
            f"a task name must be valid Unicode (no lone surrogates), got {name!r:.80}"
        ) from exc
    return name


def _as_float(value: int | float, what: str) -> float:
    """``float(value)``, or ``InvalidTaskError`` for an int too large for a float."""
    try:
        return float(value)
    except OverflowError as exc:  # only an int overflows; it may be too long to print, too
        bits = int(value).bit_length()
        raise InvalidTaskError(f"{what} is out of range: got an int of {bits} bits") from exc


def check_priority(priority: object) -> int:
    if type(priority) is not int:  # bool is an int subclass but never a priority
        raise InvalidTaskError(
            f"priority must be an int, got {type(priority).__name__} {priority!r}"
        )
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidTaskError(
            f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}"
        )
    return priority


def check_delay(delay_seconds: object) -> float:
    if delay_seconds == 0 and type(delay_seconds) is int:  # the common case, checked first
        return 0.0
    if isinstance(delay_seconds, bool) or not isinstance(delay_seconds, int | float):
        raise InvalidTaskError(
            f"delay_seconds must be a number, got {type(delay_seconds).__name__} {delay_seconds!r}"
        )
    delay = _as_float(delay_seconds, "delay_seconds")
    if not math.isfinite(delay) or not 0.0 <= delay <= MAX_DELAY_SECONDS:
        raise InvalidTaskError(
            f"delay_seconds must be finite and between 0 and {MAX_DELAY_SECONDS:.0f} "
            f"(30 days), got {delay_seconds!r}"
        )
    return delay


def check_max_retries(max_retries: object) -> int:
    if type(max_retries) is not int or not 0 <= max_retries <= MAX_RETRIES_LIMIT:
        raise InvalidTaskError(
            f"max_retries must be an int in 0..{MAX_RETRIES_LIMIT}, got {max_retries!r}"
        )
    return max_retries


def check_timeout(timeout_seconds: object) -> float | None:
    if timeout_seconds is None:
        return None
    if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int | float):
        raise InvalidTaskError(
            f"timeout_seconds must be a number or None, got {type(timeout_seconds).__name__}"
        )
    timeout = _as_float(timeout_seconds, "timeout_seconds")
    if not math.isfinite(timeout) or timeout <= 0:
        raise InvalidTaskError(f"timeout_seconds must be finite and above 0, got {timeout!r}")
    return timeout


def check_task_id(task_id: object) -> str:
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise InvalidTaskError(
            f"task_id must be 1 to {MAX_TASK_ID_LENGTH} ASCII letters, digits or '_.:-',"
            f" got {task_id!r:.80}"
        )
    return task_id


def could_be_task_id(task_id: object) -> bool:
    """Whether some broker could hold a task with this id.

    An id that is not a str, is empty or longer than any id Katana makes or accepts, or holds
    a lone surrogate (it cannot be encoded, so no broker can store or look it up) is unknown
    to every broker: ``get_task`` gives ``None``, ``cancel`` ``False`` (the conformance suite
    pins it), so the service, the manager, the CLI and HTTP answer as for any unknown id.
    """
    return (
        isinstance(task_id, str) and 0 < len(task_id) <= MAX_TASK_ID_LENGTH and _encodable(task_id)
    )


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, e.g. from JSON "\ud800" or a bad argv
        return False
    return True


def check_text(text: str, what: str) -> str:
    """``text`` if it is valid Unicode: ``InvalidTaskError`` for a lone surrogate, which no
    broker can store, send or compare."""
    if not _encodable(text):
        raise InvalidTaskError(
            f"{what} must be valid Unicode (no lone surrogates), got {text!r:.80}"
        )
    return text


def check_unique_key(unique_key: object) -> str:
    if not isinstance(unique_key, str) or not 0 < len(unique_key) <= MAX_UNIQUE_KEY_LENGTH:
        raise InvalidTaskError(
            f"unique_key must be a non-empty str of at most {MAX_UNIQUE_KEY_LENGTH} characters,"
            f" got {unique_key!r:.80}"
        )
    return check_text(unique_key, "unique_key")


def check_wait_seconds(seconds: object, what: str) -> float | None:
    """How long to wait: ``None`` (no limit) or a finite number of seconds.

    ``ValueError`` otherwise: NaN compares false with everything, so a NaN deadline would
    never pass and the wait would have no bound. Zero or less means no time left, as for
    ``asyncio.timeout``.
    """
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(
            f"{what} must be a number of seconds or None, got {type(seconds).__name__}"
        )
    value = _as_float(seconds, what)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds, got {seconds!r:.80}")
    return value


def detached_payload(payload: object) -> dict[str, Any]:
    """The payload as the JSON round trip returns it: a fresh dict sharing nothing with the input.

    Raises ``InvalidTaskError`` for a payload that is not a dict, does not survive the JSON
    round trip unchanged (NaN, Infinity, tuples, datetimes, non-string keys, ...), or is larger
    than ``MAX_PAYLOAD_BYTES`` encoded.
    """
    if payload is None:
        return {}
    if type(payload) is not dict:
        raise InvalidTaskError(f"payload must be a dict, got {type(payload).__name__}")
    encoded = _encode(payload, "payload")
    if len(encoded) > MAX_PAYLOAD_BYTES:
        raise InvalidTaskError(
            f"payload is {len(encoded)} bytes as JSON, more than the limit of "
            f"{MAX_PAYLOAD_BYTES} bytes"
        )
    decoded: dict[str, Any] = orjson.loads(encoded)
    # orjson writes NaN/Infinity as null and tuples/datetimes as lists/strings: comparing
    # catches every value that would come back different from what the caller sent.
    if decoded != payload:
        raise InvalidTaskError(
            "payload does not round-trip through JSON unchanged; use only dict, list, str, "
            "int, finite float, bool and None"
        )
    return decoded


def json_safe(value: Any, what: str) -> Any:
    """``value`` checked to survive the JSON round trip unchanged, as that round trip returns it."""
    if value is None or type(value) in (str, bool):
        return value
    if type(value) is int and -(2**63) <= value < 2**64:  # what JSON encoders take as is
        return value
    decoded = orjson.loads(_encode(value, what))
    if decoded != value:
        raise InvalidTaskError(f"{what} does not round-trip through JSON unchanged: {value!r:.200}")
    return decoded


def _encode(value: Any, what: str) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidTaskError(f"{what} is not JSON-serializable: {exc}") from exc


def new_checked_task(
    name: str,
    payload: object,
    priority: object,
    delay_seconds: object,
    now: datetime,
    max_retries: int,
    timeout_seconds: float | None,
) -> Task:
    """A PENDING task created ``now``, once priority, delay and payload are checked.

    ``max_retries`` and ``timeout_seconds`` are taken as given: callers check what they did
    not already check (registered defaults are checked once, at ``register``).
    """
    checked_priority = check_priority(priority)
    delay = check_delay(delay_seconds)
    due = now + timedelta(seconds=delay) if delay else now
    return new_pending_task(
        name, detached_payload(payload), checked_priority, now, due, max_retries, timeout_seconds
    )

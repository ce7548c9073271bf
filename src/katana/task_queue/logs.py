"""Log lines that say which task they belong to, and one JSON object per line for the worker.

``TaskContextFilter`` goes on a handler: every record that handler emits while an executor
runs gets ``task_id`` and ``task_name`` from the running task (see ``context.running_task``),
the application's own log calls included; records outside a task get ``None``. Katana's own
lifecycle lines already carry both. ``JsonFormatter`` writes each record as one JSON object.
``katana worker`` installs both (``--log-format json``); an application that sets up logging
itself adds them to its handlers::

    handler = logging.StreamHandler()
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(JsonFormatter())
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from .context import running_task

__all__ = ["JsonFormatter", "TaskContextFilter"]

#: Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "task_id",
    "task_name",
    "katana_event",
}


class TaskContextFilter(logging.Filter):
    """Sets ``record.task_id`` and ``record.task_name`` from the running task; passes all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task_id", None) is None:
            task = running_task()
            record.task_id = None if task is None else task.id
            record.task_name = None if task is None else task.name
        elif not hasattr(record, "task_name"):
            record.task_name = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record.

    Keys: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``task_id``,
    ``task_name``, ``katana_event`` (``null`` when absent), ``exc_info`` (the formatted
    traceback, only when there is one), then any other ``extra=`` fields of the record.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "task_id": getattr(record, "task_id", None),
            "task_name": getattr(record, "task_name", None),
            "katana_event": getattr(record, "katana_event", None),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and key not in line:
                line[key] = value
        try:
            return orjson.dumps(line, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # e.g. an int past 64 bits in an extra field
            return orjson.dumps({key: _plain(value) for key, value in line.items()}).decode()


def _plain(value: object) -> object:
    if value is None or type(value) in (str, float, bool):
        return value
    if type(value) is int and -(2**63) <= value < 2**64:
        return value
    return repr(value)

"""Log lines carry the running task's id and name; JsonFormatter writes one object per line."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import orjson

from katana.task_queue import InMemoryBroker, Task, TaskQueueService
from katana.task_queue.logs import JsonFormatter, TaskContextFilter

if TYPE_CHECKING:
    from collections.abc import Iterator

import pytest


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the root logger emits while the test runs, through the filter and JsonFormatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def test_lines_logged_inside_a_task_carry_its_id_and_name(json_lines: io.StringIO) -> None:
    # Given an executor that logs with the application's own logger, and fails once
    app_log = logging.getLogger("shop.billing")

    async def charge(task: Task) -> None:
        app_log.info("charging %s", task.payload["card"], extra={"amount": 12})
        raise RuntimeError("card declined")

    service = TaskQueueService(InMemoryBroker(), {"charge": charge})
    app_log.info("before any task")

    # When it runs
    task = await service.add_task("charge", {"card": "visa"})
    service.start_workers(1)
    await service.wait_idle(timeout=5)
    await service.shutdown()

    # Then its own line and Katana's lines name the task; the line outside names none
    lines = parsed(json_lines)
    outside = next(line for line in lines if line["message"] == "before any task")
    assert (outside["task_id"], outside["task_name"], outside["katana_event"]) == (None, None, None)
    mine = next(line for line in lines if line["message"] == "charging visa")
    assert mine["task_id"] == task.id
    assert mine["task_name"] == "charge"
    assert mine["logger"] == "shop.billing"
    assert mine["level"] == "INFO"
    assert mine["amount"] == 12
    assert mine["time"].endswith("+00:00")
    failed = next(line for line in lines if line["katana_event"] == "task_failed")
    assert (failed["task_id"], failed["task_name"], failed["level"]) == (task.id, "charge", "ERROR")
    assert "Traceback (most recent call last)" in failed["exc_info"]
    assert "RuntimeError: card declined" in failed["exc_info"]


def test_a_line_with_values_json_cannot_hold_is_still_one_json_object() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "big %s", (1,), None)
    record.huge = 2**70
    record.thing = object()

    line = orjson.loads(JsonFormatter().format(record))

    assert line["message"] == "big 1"
    assert line["huge"] == str(2**70)
    assert line["thing"].startswith("<object object")

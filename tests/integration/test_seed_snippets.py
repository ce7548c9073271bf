"""The seed document's Python snippets, run as written against the real package."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from katana.task_queue.models import TaskStatus
from katana.task_queue.service import ServiceState, TaskQueueService

from ._processes import REPO_ROOT

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator

#: The seed document, copied verbatim into the repository: the suite reads only its own files.
SEED_PATH = Path(__file__).resolve().parent / "seed" / "000_7de448a95295fb33.txt"

#: Names the snippets must define, in the order the document introduces them.
SEED_NAMES = (
    "my_email_task_executor",
    "data_processing_executor",
    "application_startup",
    "some_api_endpoint_handler",
    "application_shutdown",
)

_PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _seed_snippets() -> list[tuple[int, str]]:
    """Every ```python block of the seed, with the line it starts on."""
    text = SEED_PATH.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start(1)) + 1, match.group(1))
        for match in _PYTHON_BLOCK.finditer(text)
    ]


def _run_snippets() -> dict[str, Any]:
    """Execute the snippets in order in one fresh namespace, as one module would."""
    namespace: dict[str, Any] = {"__name__": "katana_seed_snippets"}
    for first_line, source in _seed_snippets():
        # Padding keeps line numbers in tracebacks equal to the seed's. dont_inherit: this
        # file's ``from __future__ import annotations`` must not change how the snippets run.
        padded = "\n" * (first_line - 1) + source
        exec(compile(padded, str(SEED_PATH), "exec", dont_inherit=True), namespace)
    missing = [name for name in SEED_NAMES if not callable(namespace.get(name))]
    assert not missing, f"the seed's snippets no longer define {missing}"
    # Snippet 1 defines ``logger``; the later ones only use it.
    namespace.setdefault("logger", logging.getLogger(namespace["__name__"]))
    return namespace


@pytest.fixture
async def seed() -> AsyncIterator[dict[str, Any]]:
    """The snippets' namespace; stops their workers and closes their broker afterwards."""
    namespace = _run_snippets()
    yield namespace
    service: TaskQueueService | None = namespace["task_queue_service"]
    if service is not None:
        await service.shutdown()
        await service.broker.close()  # the seed never closes the broker it builds


def _created_task_ids(records: list[logging.LogRecord], name: str) -> list[str]:
    """Ids of the tasks named ``name`` whose ``task_created`` event was logged."""
    return [
        str(getattr(record, "task_id", None))
        for record in records
        if getattr(record, "katana_event", None) == "task_created"
        and getattr(record, "task_name", None) == name
    ]


def test_the_seed_is_read_from_inside_the_repository() -> None:
    # A clone with nothing beside it must be green (`make test` anywhere).
    assert SEED_PATH.resolve().is_relative_to(REPO_ROOT)
    assert SEED_PATH.is_file()


def test_seed_has_the_documented_snippets() -> None:
    snippets = _seed_snippets()

    assert len(snippets) == 4, [source.splitlines()[0] for _, source in snippets]


async def test_seed_startup_enqueue_and_shutdown(
    seed: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    # Given the seed's startup has run
    await seed["application_startup"]()
    service: TaskQueueService = seed["task_queue_service"]
    worker_tasks: list[asyncio.Task[None]] = seed["task_queue_worker_tasks"]
    assert isinstance(service, TaskQueueService)
    assert service.state is ServiceState.RUNNING
    assert service.task_names == ["process_data", "send_email"]
    assert len(worker_tasks) == 2

    # When the seed's endpoint handler enqueues its email
    response = await seed["some_api_endpoint_handler"]()

    # Then it answers as documented, and a send_email task waits 5 s at priority 1
    assert response == {"message": "Request accepted, processing in background."}
    assert "Email task enqueued." in caplog.messages
    [task_id] = _created_task_ids(caplog.records, "send_email")
    task = await service.get_task(task_id)
    assert task is not None
    assert task.status is TaskStatus.PENDING
    assert task.priority == 1
    assert task.payload == {
        "to": "user@example.com",
        "subject": "Report",
        "body": "Your report is ready.",
    }
    assert task.scheduled_at - task.created_at == timedelta(seconds=5)

    # When the seed's shutdown runs before the task is due
    await seed["application_shutdown"]()

    # Then every worker has stopped cleanly and the task is still queued, not lost
    assert seed["task_queue_service"].state is ServiceState.STOPPED  # re-read: mypy narrowed it
    for worker in worker_tasks:
        assert worker.done()
        assert worker.cancelled() or worker.exception() is None
    assert "All task queue workers have shut down." in caplog.messages
    task = await service.get_task(task_id)
    assert task is not None
    assert task.status is TaskStatus.PENDING
    assert task.attempts == 0
    counts = await service.broker.count_by_status()
    assert counts[TaskStatus.PROCESSING] == 0
    assert counts[TaskStatus.PENDING] == 1


async def test_seed_process_data_executor_completes(seed: dict[str, Any]) -> None:
    # Given the seed's startup has run
    await seed["application_startup"]()
    service: TaskQueueService = seed["task_queue_service"]

    # When a process_data task is added without a delay (its executor sleeps 1 s for real)
    task = await service.add_task(name="process_data", payload={"data_id": 42})
    await service.wait_idle(timeout=10)

    # Then the seed's executor ran it to completion
    done = await service.get_task(task.id)
    assert done is not None
    assert done.status is TaskStatus.COMPLETED
    assert done.error is None
    assert done.attempts == 1

    await seed["application_shutdown"]()
    assert service.state is ServiceState.STOPPED

"""Demo FastAPI app: the seed's two example tasks behind a debug endpoint, on a SQLite queue.

Run it with ``make demo``, which starts ``uvicorn main:app --host 127.0.0.1 --port 8000``, then::

    # Enqueue a task: 202 with {"task_id": "...", "status": "PENDING"}
    curl -s -X POST http://127.0.0.1:8000/debug/add_task \\
         -H 'Content-Type: application/json' \\
         -d '{"name": "send_email", "payload": {"to": "user@example.com"}}'

    # A failing task, a higher-priority task and a delayed task
    curl -s -X POST http://127.0.0.1:8000/debug/add_task -H 'Content-Type: application/json' \\
         -d '{"name": "send_email", "payload": {"error": true}}'
    curl -s -X POST http://127.0.0.1:8000/debug/add_task -H 'Content-Type: application/json' \\
         -d '{"name": "process_data", "payload": {"data_id": 42}, "priority": -1}'
    curl -s -X POST http://127.0.0.1:8000/debug/add_task -H 'Content-Type: application/json' \\
         -d '{"name": "process_data", "payload": {"data_id": 7}, "delay_seconds": 10}'

    # Follow a task: PENDING -> PROCESSING -> COMPLETED (send_email takes 2 s) or FAILED
    curl -s http://127.0.0.1:8000/tasks/<task_id>

    curl -s http://127.0.0.1:8000/health

The queue is the SQLite file ``katana-demo.db`` in the checkout (``KATANA_DEMO_DB`` names
another): stop the server and start it again, and the tasks still pending or delayed are there
and run.

Interactive API docs are at http://127.0.0.1:8000/docs, and the dashboard at
http://127.0.0.1:8000/katana/ (its JSON API under /katana/api). Stopping the server (Ctrl-C) lets
running tasks finish (up to ``SHUTDOWN_GRACE_SECONDS``) before the workers stop.

Tests build their own app with ``create_app(sleep_scale=0.01)`` so the demo tasks run fast,
and may pass a ``broker`` they own (the app then leaves it open on exit).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from katana.task_queue.broker import AbstractBroker, InMemoryBroker
from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.cli import broker_from_url
from katana.task_queue.errors import BrokerError
from katana.task_queue.management import QueueManager
from katana.task_queue.metrics import KatanaMetrics
from katana.task_queue.models import TaskStatus  # needed by pydantic at runtime
from katana.task_queue.service import ServiceState, TaskQueueService
from katana.task_queue.web import TaskOut, http_errors, katana_router, validation_error_handler

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.models import Task, TaskExecutor

__all__ = [
    "app",
    "broker_url",
    "build_broker",
    "create_app",
    "demo_db",
    "demo_executors",
    "worker_service",
]

logger = logging.getLogger(__name__)

#: How many workers the demo runs.
NUM_WORKERS = 2
#: How long shutdown waits for running tasks before handing them back to the queue.
SHUTDOWN_GRACE_SECONDS = 10.0


# -- the seed's example executors ---------------------------------------------------------


def demo_executors(sleep_scale: float = 1.0) -> dict[str, TaskExecutor]:
    """The seed's two example executors, with their sleeps multiplied by ``sleep_scale``.

    ``send_email`` sleeps 2 s, then fails if the payload has an ``"error"`` key;
    ``process_data`` sleeps 1 s.
    """
    if isinstance(sleep_scale, bool) or not isinstance(sleep_scale, int | float):
        raise TypeError(f"sleep_scale must be a number, got {sleep_scale!r}")
    if not math.isfinite(sleep_scale) or sleep_scale < 0:
        raise ValueError(f"sleep_scale must be finite and >= 0, got {sleep_scale!r}")

    async def my_email_task_executor(task: Task) -> None:
        logger.info("Sending email for task %s", task.id)
        logger.debug("task %s payload: %r", task.id, task.payload)  # payloads: DEBUG only
        # Simulate sending email
        await asyncio.sleep(2 * sleep_scale)
        if "error" in task.payload:
            raise ValueError("Simulated email sending error")
        logger.info("Email sent for task %s", task.id)

    async def data_processing_executor(task: Task) -> None:
        logger.info("Processing data for task %s", task.id)
        logger.debug("task %s data_id: %r", task.id, task.payload.get("data_id"))
        await asyncio.sleep(1 * sleep_scale)
        logger.info("Data processing complete for task %s", task.id)

    return {"send_email": my_email_task_executor, "process_data": data_processing_executor}


# -- wiring --------------------------------------------------------------------------------


def broker_url() -> str | None:
    """``KATANA_BROKER_URL`` if set: the demo then enqueues on that broker (e.g. Redis)."""
    return os.environ.get("KATANA_BROKER_URL") or None


def demo_db() -> Path:
    """The demo's SQLite file: ``KATANA_DEMO_DB``, else ``katana-demo.db`` beside main.py."""
    return Path(os.environ.get("KATANA_DEMO_DB") or Path(__file__).with_name("katana-demo.db"))


def build_broker() -> AbstractBroker:
    """The broker the demo uses when none is passed to ``create_app``; called at startup.

    A SqliteBroker on ``demo_db()`` by default, so tasks outlive a restart. With
    ``KATANA_BROKER_URL=redis://...`` it is a RedisBroker, and the tasks are run by separate
    worker processes: ``katana worker main:worker_service``.
    """
    url = broker_url()
    return SqliteBroker(demo_db()) if url is None else broker_from_url(url)


def worker_service() -> TaskQueueService:
    """The demo's tasks for ``katana worker main:worker_service --broker redis://...``."""
    return TaskQueueService(broker=InMemoryBroker(), task_executors=demo_executors())


def create_app(
    *,
    broker: AbstractBroker | None = None,
    sleep_scale: float = 1.0,
    configure_logging: bool = False,
) -> FastAPI:
    """Build the demo app; its lifespan starts the workers and stops them on exit.

    Args:
        broker: A broker the caller owns and closes. ``None``: the app builds one with
            ``build_broker()`` at startup and closes it on exit.
        sleep_scale: Multiplies the demo executors' sleeps; tests pass a small value.
        configure_logging: Send INFO logs to stderr at startup if logging is not configured
            yet, so the task lifecycle shows in the server's terminal.
    """
    executors = demo_executors(sleep_scale)
    metrics = KatanaMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if configure_logging:
            # No-op when the root logger already has handlers.
            logging.basicConfig(
                level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
            )
        async with AsyncExitStack() as stack:
            if broker is None:
                # Ours: closed after the workers have stopped (exit callbacks run in reverse).
                task_broker = await stack.enter_async_context(build_broker())
                # The demo's own file runs its tasks here; a broker picked by
                # KATANA_BROKER_URL is served by `katana worker` processes.
                in_process = broker_url() is None
            else:
                task_broker = broker
                await task_broker.connect()
                # On a shared broker, worker processes started by the CLI run the tasks.
                in_process = "multi_process" not in task_broker.capabilities
            service = TaskQueueService(broker=task_broker, task_executors=executors)
            app.state.service = service
            app.state.katana_manager = QueueManager(task_broker, service)
            metrics.label_queue(task_broker.queue)  # known once the broker is built
            stack.push_async_callback(service.shutdown, SHUTDOWN_GRACE_SECONDS)
            workers = NUM_WORKERS if in_process else 0
            if workers:
                service.start_workers(num_workers=workers)
            logger.info(
                "demo started on %r with %d in-process workers; tasks: %s",
                task_broker,
                workers,
                ", ".join(service.task_names),
            )
            yield

    app = FastAPI(
        title="Katana demo",
        summary="Enqueue the seed's example tasks and follow them through their states.",
        lifespan=lifespan,
    )
    app.exception_handler(RequestValidationError)(validation_error_handler)
    app.include_router(_router())
    # The dashboard and management API, with the manager the lifespan builds.
    app.include_router(
        katana_router(_get_manager, title="Katana demo", metrics=metrics), prefix="/katana"
    )
    return app


def _get_service(request: Request) -> TaskQueueService:
    service: TaskQueueService = request.app.state.service
    return service


Service = Annotated[TaskQueueService, Depends(_get_service)]


def _get_manager(request: Request) -> QueueManager:
    manager: QueueManager = request.app.state.katana_manager
    return manager


# -- HTTP models ---------------------------------------------------------------------------


class AddTaskRequest(BaseModel):
    """What ``POST /debug/add_task`` takes. Ranges are checked by ``add_task`` itself."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A registered task name: send_email or process_data.")
    payload: dict[str, Any] | None = Field(default=None, description="A JSON object.")
    # Strict: JSON true or "1" is not a priority (pydantic's lax mode would accept both).
    priority: StrictInt = Field(default=0, description="Lower runs first.")
    delay_seconds: float = Field(default=0.0, strict=True, description="Run no sooner than this.")


class AddTaskResponse(BaseModel):
    task_id: str
    status: TaskStatus


class HealthResponse(BaseModel):
    status: str
    service_state: str
    task_names: list[str]
    task_counts: dict[TaskStatus, int]


# -- endpoints -----------------------------------------------------------------------------


def _router() -> APIRouter:
    router = APIRouter()

    @router.post(
        "/debug/add_task",
        status_code=202,
        responses={
            422: {"description": "Unknown task name, or an invalid argument."},
            503: {"description": "The broker is unreachable; try again after Retry-After."},
        },
    )
    async def add_task(
        body: AddTaskRequest, service: Service, response: Response
    ) -> AddTaskResponse:
        """Enqueue a task; follow it at the URL in the ``Location`` header."""
        with http_errors():  # 422 for bad arguments, 503 + Retry-After while the broker is down
            task = await service.add_task(
                name=body.name,
                payload=body.payload,
                priority=body.priority,
                delay_seconds=body.delay_seconds,
            )
        response.headers["Location"] = f"/tasks/{task.id}"
        return AddTaskResponse(task_id=task.id, status=task.status)

    @router.get(
        "/tasks/{task_id}",
        responses={
            404: {"description": "No task has this id."},
            503: {"description": "The broker is unreachable; try again after Retry-After."},
        },
    )
    async def get_task(task_id: str, service: Service) -> TaskOut:
        with http_errors():
            task = await service.get_task(task_id)
        if task is None:
            raise HTTPException(404, f"no task with id {task_id!r:.100}")
        return TaskOut.of(task)

    @router.get(
        "/health",
        responses={503: {"description": "The service is shutting down or the broker is down."}},
    )
    async def health(service: Service, response: Response) -> HealthResponse:
        # CREATED is healthy too: on a shared broker the demo only enqueues (no workers here).
        serving = service.state in (ServiceState.CREATED, ServiceState.RUNNING)
        try:
            counts: dict[TaskStatus, int] | None = await service.broker.count_by_status()
        except BrokerError:
            counts = None
        if not serving or counts is None:
            response.status_code = 503
        return HealthResponse(
            status="ok" if serving and counts is not None else "unavailable",
            service_state=service.state.value,
            task_names=service.task_names,
            task_counts=counts or {},
        )

    return router


app = create_app(configure_logging=True)

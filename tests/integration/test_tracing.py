"""One trace from a web request that enqueues a task to the worker that runs it, on each broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from katana.task_queue import InMemoryBroker, Task, TaskQueueService, tracing
from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.config import RetryPolicy

from ._processes import REPO_ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: The trace a client started before calling the web app (W3C traceparent).
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """Tracing on, into memory, for the test's duration."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(tracer_provider=provider)
    yield provider, exporter
    tracing.disable()
    provider.shutdown()


def web_app(service: TaskQueueService, provider: TracerProvider) -> FastAPI:
    """A web app whose request handler enqueues a task, in a SERVER span continuing the
    caller's trace (what OpenTelemetry's FastAPI instrumentation does)."""
    app = FastAPI()
    tracer = provider.get_tracer("web")

    @app.post("/signup")
    async def signup(request: Request) -> dict[str, str]:
        caller = propagate.extract(dict(request.headers))
        with tracer.start_as_current_span("POST /signup", context=caller, kind=SpanKind.SERVER):
            task = await service.add_task("welcome", {"email": "ann@example.com"})
        return {"task_id": task.id}

    return app


async def sign_up(app: FastAPI) -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        response = await client.post("/signup", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    task_id: str = response.json()["task_id"]
    return task_id


def only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [span for span in spans if span.name == name]
    return span


async def test_one_trace_spans_the_request_the_send_and_the_run_in_memory(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    # Given a service whose executor starts a span of its own, and a web app enqueueing to it
    tracer_provider, exporter = provider
    inner = tracer_provider.get_tracer("app")

    async def welcome(task: Task) -> str:
        with inner.start_as_current_span("render email"):
            return "sent"

    service = TaskQueueService(InMemoryBroker(), {"welcome": welcome})

    # When a request enqueues a task and a worker runs it
    task_id = await sign_up(web_app(service, tracer_provider))
    service.start_workers(1)
    await service.wait_idle(timeout=5)
    await service.shutdown()

    # Then client -> request -> send -> process -> the executor's span is one trace
    spans = list(exporter.get_finished_spans())
    request = only(spans, "POST /signup")
    send = only(spans, "send default")
    process = only(spans, "process default")
    render = only(spans, "render email")
    assert {format(span.context.trace_id, "032x") for span in spans} == {CLIENT_TRACE_ID}
    assert request.parent is not None
    assert format(request.parent.span_id, "016x") == CLIENT_SPAN_ID
    assert send.parent is not None
    assert send.parent.span_id == request.context.span_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert render.parent is not None
    assert render.parent.span_id == process.context.span_id
    assert (send.kind, process.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert dict(send.attributes or {}) == {
        "messaging.system": "katana",
        "messaging.destination.name": "default",
        "messaging.operation.type": "send",
        "messaging.message.id": task_id,
        "katana.task.name": "welcome",
    }
    assert dict(process.attributes or {}) == {
        "messaging.system": "katana",
        "messaging.destination.name": "default",
        "messaging.operation.type": "process",
        "messaging.message.id": task_id,
        "katana.task.name": "welcome",
        "katana.task.attempt": 1,
    }
    assert process.status.status_code is StatusCode.UNSET


async def test_each_attempt_is_a_process_span_and_a_failed_one_says_why(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    # Given a task that fails once and then succeeds, enqueued in a batch with another
    _, exporter = provider
    calls = 0

    async def flaky(task: Task) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("smtp down")

    service = TaskQueueService(InMemoryBroker())
    service.register("flaky", flaky, retry=RetryPolicy(max_retries=1, backoff_base_seconds=0))

    # When
    first, second = await service.add_tasks([("flaky", {}), ("flaky", {})])
    service.start_workers(1)
    await service.wait_idle(timeout=5)
    await service.shutdown()

    # Then one send span covers the batch, and each attempt is a child of it
    spans = list(exporter.get_finished_spans())
    send = only(spans, "send default")
    assert (send.attributes or {})["messaging.batch.message_count"] == 2
    assert first.trace_context == second.trace_context is not None
    processes = [span for span in spans if span.name == "process default"]
    assert len(processes) == 3
    assert all(span.parent is not None and span.parent.span_id == send.context.span_id
               for span in processes)  # fmt: skip
    failed = [span for span in processes if span.status.status_code is StatusCode.ERROR]
    assert [(span.attributes or {})["katana.task.attempt"] for span in failed] == [1]
    assert failed[0].status.description == "ConnectionError: smtp down"
    assert [event.name for event in failed[0].events] == ["exception"]


async def test_with_tracing_off_no_context_is_stored_and_no_span_is_made() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_outside = provider.get_tracer("web")

    async def noop(task: Task) -> None:
        return None

    service = TaskQueueService(InMemoryBroker(), {"noop": noop})
    with trace_outside.start_as_current_span("request"):
        task = await service.add_task("noop", {})
    service.start_workers(1)
    await service.wait_idle(timeout=5)
    await service.shutdown()

    assert not tracing.enabled
    assert task.trace_context is None
    assert [span.name for span in exporter.get_finished_spans()] == ["request"]


async def test_the_trace_crosses_redis_into_a_katana_worker_process(
    provider: tuple[TracerProvider, InMemorySpanExporter],
    redis_url: str,
    queue_name: str,
    tmp_path: Path,
) -> None:
    # Given a web app enqueueing on Redis
    tracer_provider, exporter = provider
    broker = RedisBroker(redis_url, queue=queue_name)
    service = TaskQueueService(broker, {"welcome": _never_here})
    try:
        task_id = await sign_up(web_app(service, tracer_provider))
        stored = await broker.get_task(task_id)

        # When a `katana worker` process, exporting its spans to a file, runs the task
        spans_file = tmp_path / "spans.jsonl"
        env = {k: v for k, v in os.environ.items() if k != "KATANA_BROKER_URL"}
        env["KATANA_TEST_SPANS_FILE"] = str(spans_file)
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "katana.task_queue.cli", "worker",
             "tests.integration.admin_app:traced", "--broker", redis_url, "--queue", queue_name,
             "--burst", "--log-level", "WARNING"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        finished = await broker.get_task(task_id)
    finally:
        await broker.purge()
        await broker.close()

    # Then the task carried the trace through Redis, and the worker's span continues it
    assert done.returncode == 0, done.stderr
    assert finished is not None
    assert finished.result == "Welcome, ann@example.com"
    send = only(list(exporter.get_finished_spans()), f"send {queue_name}")
    assert stored is not None
    assert stored.trace_context is not None
    assert stored.trace_context["traceparent"] == (
        f"00-{CLIENT_TRACE_ID}-{format(send.context.span_id, '016x')}-01"
    )
    exported: list[dict[str, Any]] = [
        orjson.loads(line) for line in spans_file.read_text().splitlines()
    ]
    [process] = [span for span in exported if span["name"] == f"process {queue_name}"]
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["context"]["trace_id"] == f"0x{CLIENT_TRACE_ID}"
    assert process["parent_id"] == f"0x{format(send.context.span_id, '016x')}"
    assert process["attributes"]["messaging.message.id"] == task_id
    assert process["attributes"]["katana.task.attempt"] == 1
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing leaked into the test


async def _never_here(task: Task) -> None:
    raise AssertionError("the web app's service runs no worker")

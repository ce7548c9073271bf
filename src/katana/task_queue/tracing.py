"""Optional OpenTelemetry spans: ``send <queue>`` at enqueue, ``process <queue>`` per attempt.

Tracing is off until ``enable()`` is called, and while it is off Katana does not import
OpenTelemetry and creates no span objects: the enqueue and worker paths test one module-level
flag (``enabled``) and nothing else. It is opt-in rather than detected from the global tracer
provider because the provider can be installed at any time, so detection would cost a lookup on
every enqueue; and an application that configures OpenTelemetry has one obvious place to add
the call::

    from katana.task_queue import tracing

    trace.set_tracer_provider(provider)  # the application's own setup
    tracing.enable()  # or tracing.enable(tracer_provider=provider)

When on, ``TaskQueueService.add_task``/``add_tasks`` (and ``QueueManager.enqueue``) wrap the
enqueue in a PRODUCER span and store the trace context in ``Task.trace_context`` with the global
propagator (W3C ``traceparent``/``tracestate`` by default). Every broker keeps it with the
task, so the worker, in whichever process, runs each attempt in a CONSUMER span that is a child
of the ``send`` span: one trace goes from the request that created the task to its execution.
Spans carry the messaging attributes ``messaging.system`` (``katana``),
``messaging.destination.name`` (the queue), ``messaging.operation.type``,
``messaging.message.id`` (the task id), plus ``katana.task.name`` and ``katana.task.attempt``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from opentelemetry.trace import Tracer, TracerProvider

    from .models import Task

__all__ = [
    "MESSAGING_SYSTEM",
    "disable",
    "enable",
    "enabled",
    "record_failure",
    "traced_process",
    "traced_send",
]

_T = TypeVar("_T")

#: The ``messaging.system`` attribute of every Katana span.
MESSAGING_SYSTEM = "katana"

#: Whether ``enable()`` turned tracing on; callers test it before calling anything else here.
enabled = False


class _OpenTelemetry:
    """The tracer, and the OpenTelemetry functions and constants the spans use, imported once."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import propagate, trace

        self.tracer = tracer
        self.inject = propagate.inject
        self.extract = propagate.extract
        self.producer = trace.SpanKind.PRODUCER
        self.consumer = trace.SpanKind.CONSUMER
        self.get_current_span = trace.get_current_span
        self.error = trace.StatusCode.ERROR
        self.status = trace.Status


# Set by enable(): what the spans need from OpenTelemetry.
_otel: _OpenTelemetry | None = None


def enable(*, tracer_provider: TracerProvider | None = None) -> None:
    """Turn spans on, from ``tracer_provider`` or else the global one (even if set later).

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (the ``[otel]`` extra).
    """
    global enabled, _otel
    try:
        from opentelemetry import trace
    except ImportError as exc:  # pragma: no cover  # the test environment has the extra
        raise ImportError(
            "tracing needs opentelemetry-api: pip install 'katana-task-queue[otel]'"
        ) from exc
    tracer = trace.get_tracer("katana.task_queue", _version(), tracer_provider=tracer_provider)
    _otel = _OpenTelemetry(tracer)
    enabled = True


def _version() -> str | None:
    # Not the package's __version__: importing the package from here would break the layers.
    import importlib.metadata  # here, not at the top: it costs every process ~15 ms to load

    try:
        return importlib.metadata.version("katana-task-queue")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover  # run from a checkout
        return None


def disable() -> None:
    """Turn spans off again; tasks enqueued from now on carry no trace context."""
    global enabled, _otel
    enabled = False
    _otel = None


def _attributes(queue: str, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.destination.name": queue,
        "messaging.operation.type": operation,
    }


async def traced_send(queue: str, tasks: Sequence[Task], store: Awaitable[_T]) -> _T:
    """Await ``store`` (the broker's enqueue of ``tasks``, not yet started) in a ``send`` span.

    The span's context is written into each task's ``trace_context`` before ``store`` runs,
    so the broker stores it with the task.
    """
    otel = _otel
    assert otel is not None, "only called while tracing is enabled"
    attributes = _attributes(queue, "send")
    if len(tasks) == 1:
        attributes["messaging.message.id"] = tasks[0].id
        attributes["katana.task.name"] = tasks[0].name
    else:
        attributes["messaging.batch.message_count"] = len(tasks)
    with otel.tracer.start_as_current_span(
        f"send {queue}", kind=otel.producer, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        otel.inject(carrier)
        for task in tasks:
            task.trace_context = dict(carrier) if carrier else None
        return await store


async def traced_process(queue: str, task: Task, attempt: Awaitable[_T]) -> _T:
    """Await ``attempt`` (the worker running ``task`` once) in a ``process`` span.

    The span is a child of the context stored in the task, and is the current span while the
    executor runs, so spans and log correlation inside the executor join the task's trace.
    """
    otel = _otel
    assert otel is not None, "only called while tracing is enabled"
    attributes = _attributes(queue, "process")
    attributes["messaging.message.id"] = task.id
    attributes["katana.task.name"] = task.name
    attributes["katana.task.attempt"] = task.attempts
    parent = otel.extract(task.trace_context) if task.trace_context else None
    with otel.tracer.start_as_current_span(
        f"process {queue}", context=parent, kind=otel.consumer, attributes=attributes
    ):
        return await attempt


def record_failure(exc: BaseException) -> None:
    """Mark the current ``process`` span failed with ``exc`` (called while tracing is on)."""
    otel = _otel
    if otel is None:  # disabled while the attempt ran
        return
    span = otel.get_current_span()
    span.record_exception(exc)
    span.set_status(otel.status(otel.error, f"{type(exc).__name__}: {exc}"))

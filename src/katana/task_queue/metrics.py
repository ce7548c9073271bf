"""Prometheus metrics: lifecycle counters of this process, queue gauges read from the broker.

Counters and histograms count what happens in *this* process (its enqueues, its workers'
attempts), so each worker process exposes its own and Prometheus sums them. The gauges
(``katana_queue_tasks``, ``katana_queue_oldest_pending_age_seconds``, ``katana_queue_workers``)
are read from the broker when scraped, so they are right however many processes share the
queue. Labels stay low-cardinality: queue, task name, status. Needs ``prometheus-client``
(the ``web`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "Katana's metrics need prometheus-client: pip install 'katana-task-queue[web]'"
    ) from exc

from ._events import add_event_listener, remove_event_listener
from .models import TaskStatus, utcnow

if TYPE_CHECKING:
    from .broker.base import AbstractBroker
    from .models import Task

__all__ = ["CONTENT_TYPE_LATEST", "KatanaMetrics"]

#: Events that end a task, and the status they end it in.
_FINISHING_EVENTS = {
    "task_completed": TaskStatus.COMPLETED,
    "task_failed": TaskStatus.FAILED,
    "task_cancelled": TaskStatus.CANCELLED,
}
#: Seconds: tasks run from milliseconds (noops) to many minutes (reports).
_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)


class KatanaMetrics:
    """The metrics of one queue, on their own registry unless given one.

    Call ``install()`` to start counting this process's lifecycle events, ``refresh(broker)``
    before a scrape to read the gauges from the broker, and ``render()`` for the exposition.
    """

    def __init__(self, queue: str | None = None, registry: CollectorRegistry | None = None) -> None:
        # Without a queue name, the label is the name of the first broker refreshed from.
        self._queue = queue
        self.registry = CollectorRegistry() if registry is None else registry
        task_labels = ["queue", "task"]
        self.enqueued = Counter(
            "katana_tasks_enqueued", "Tasks enqueued by this process.", task_labels,
            registry=self.registry,
        )  # fmt: skip
        self.started = Counter(
            "katana_tasks_started", "Attempts started by this process's workers.", task_labels,
            registry=self.registry,
        )  # fmt: skip
        self.finished = Counter(
            "katana_tasks_finished",
            "Tasks this process's workers finished, by final status.",
            [*task_labels, "status"],
            registry=self.registry,
        )
        self.retried = Counter(
            "katana_tasks_retried", "Failed attempts scheduled to run again.", task_labels,
            registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "katana_task_duration_seconds",
            "From an attempt's start to its recorded outcome.",
            task_labels,
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.wait = Histogram(
            "katana_task_wait_seconds",
            "From the time a task was due to the start of its attempt.",
            task_labels,
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_tasks = Gauge(
            "katana_queue_tasks", "Tasks stored in the queue, by status (read at scrape time).",
            ["queue", "status"], registry=self.registry,
        )  # fmt: skip
        self.oldest_pending_age = Gauge(
            "katana_queue_oldest_pending_age_seconds",
            "How long the longest-waiting due task has waited (read at scrape time).",
            ["queue"],
            registry=self.registry,
        )
        self.workers = Gauge(
            "katana_queue_workers", "Worker processes recorded in the broker.", ["queue"],
            registry=self.registry,
        )  # fmt: skip
        self._installed = False

    @property
    def queue(self) -> str:
        return self._queue or "default"

    def install(self) -> KatanaMetrics:
        """Count this process's lifecycle events from now on; returns ``self``."""
        if not self._installed:
            add_event_listener(self.observe)
            self._installed = True
        return self

    def uninstall(self) -> None:
        remove_event_listener(self.observe)
        self._installed = False

    def observe(self, event: str, task: Task) -> None:
        """Count one lifecycle event (the listener ``install`` registers)."""
        labels = (self.queue, task.name)
        if event == "task_created":
            self.enqueued.labels(*labels).inc()
        elif event == "task_started":
            self.started.labels(*labels).inc()
            if task.started_at is not None:
                waited = (task.started_at - task.scheduled_at).total_seconds()
                self.wait.labels(*labels).observe(max(0.0, waited))
        elif event == "task_retry":
            self.retried.labels(*labels).inc()
            self._observe_duration(task)
        elif event in _FINISHING_EVENTS:
            self.finished.labels(*labels, _FINISHING_EVENTS[event].value).inc()
            self._observe_duration(task)

    def _observe_duration(self, task: Task) -> None:
        if task.started_at is not None:
            ran = (utcnow() - task.started_at).total_seconds()
            self.duration.labels(self.queue, task.name).observe(max(0.0, ran))

    async def refresh(self, broker: AbstractBroker) -> None:
        """Read the gauges from ``broker``: call it right before ``render()``."""
        if self._queue is None:
            self._queue = broker.queue
        counts = await broker.count_by_status()
        oldest = await broker.oldest_due_at()
        workers = await broker.list_workers()
        for status, count in counts.items():
            self.queue_tasks.labels(self.queue, status.value).set(count)
        age = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
        self.oldest_pending_age.labels(self.queue).set(age)
        self.workers.labels(self.queue).set(len(workers))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric on the registry."""
        return generate_latest(self.registry)

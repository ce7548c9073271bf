"""``/metrics`` scraped during a run: counters of this process, gauges equal to the broker's."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from katana.task_queue.management import QueueManager
from katana.task_queue.metrics import KatanaMetrics
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService
from katana.task_queue.web import CSRF_HEADER, katana_router

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Gate:
    """Executors wait here until the test lets them finish."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.running = 0
        self.changed = asyncio.Event()

    async def run(self, task: Task) -> str:
        self.running += 1
        self.changed.set()
        await self.opened.wait()
        if task.payload.get("fail"):
            raise RuntimeError("failing on purpose")
        return "ok"

    async def until_running(self, count: int) -> None:
        while self.running < count:
            self.changed.clear()
            await self.changed.wait()


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def service(
    broker: AbstractBroker, clock: FakeClock, gate: Gate
) -> AsyncIterator[TaskQueueService]:
    service = TaskQueueService(broker, {"work": gate.run}, clock=clock)
    yield service
    gate.opened.set()
    await service.shutdown(timeout=5)


async def test_metrics_during_a_run_match_the_broker(
    broker: AbstractBroker, service: TaskQueueService, clock: FakeClock, gate: Gate
) -> None:
    metrics = KatanaMetrics(queue=broker.queue)
    app = FastAPI()
    app.include_router(
        katana_router(QueueManager(broker, service, clock=clock), metrics=metrics), prefix="/k"
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://k.test") as client:
            for n in range(30):
                created = await client.post(
                    "/k/api/tasks",
                    json={"name": "work", "payload": {"n": n, "fail": n % 6 == 0}},
                    headers={CSRF_HEADER: "1"},
                )
                assert created.status_code == 201
            service.start_workers(2)
            await asyncio.wait_for(gate.until_running(2), timeout=10)

            during = await client.get("/k/metrics")
            counts_during = await broker.count_by_status()
            gate.opened.set()
            await service.wait_idle(timeout=10)
            await service.shutdown(timeout=5)  # every outcome confirmed, and so counted
            after = parse((await client.get("/k/metrics")).text)
            counts_after = await broker.count_by_status()
    finally:
        metrics.uninstall()

    assert during.headers["content-type"].startswith("text/plain")
    samples = parse(during.text)
    queue = broker.queue
    for status in TaskStatus:
        assert (
            value(samples, "katana_queue_tasks", queue=queue, status=status.value)
            == (counts_during[status])
        ), status
    assert counts_during[TaskStatus.PROCESSING] == 2
    assert value(samples, "katana_tasks_enqueued_total", queue=queue, task="work") == 30
    assert value(samples, "katana_tasks_started_total", queue=queue, task="work") == 2
    assert value(samples, "katana_queue_workers", queue=queue) == 1
    assert value(samples, "katana_queue_oldest_pending_age_seconds", queue=queue) >= 0

    for status in TaskStatus:
        assert (
            value(after, "katana_queue_tasks", queue=queue, status=status.value)
            == (counts_after[status])
        ), status
    finished = {"queue": queue, "task": "work"}
    assert value(after, "katana_tasks_finished_total", **finished, status="COMPLETED") == 25
    assert value(after, "katana_tasks_finished_total", **finished, status="FAILED") == 5
    assert value(after, "katana_tasks_started_total", **finished) == 30
    assert value(after, "katana_task_duration_seconds_count", **finished) == 30
    assert value(after, "katana_task_wait_seconds_count", **finished) == 30
    assert value(after, "katana_queue_tasks", queue=queue, status="COMPLETED") == 25

"""A worker process's own ``/metrics`` server: counters, and gauges read at scrape time."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from katana.task_queue.metrics_server import MetricsServer
from katana.task_queue.service import TaskQueueService

from .test_metrics import parse, value

if TYPE_CHECKING:
    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.models import Task
    from katana.task_queue.testing import FakeClock


async def noop(task: Task) -> int:
    return len(task.payload)


async def test_the_worker_metrics_server_reports_counters_and_broker_gauges(
    broker: AbstractBroker, clock: FakeClock
) -> None:
    service = TaskQueueService(broker, {"noop": noop}, clock=clock)
    server = MetricsServer(broker, port=0)
    server.start()
    try:
        due = [await service.add_task("noop", {"n": n}) for n in range(6)]
        await service.add_task("noop", {}, delay_seconds=600)
        service.start_workers(2)
        for task in due:
            await service.wait_for(task.id, timeout=10)
        await service.shutdown(timeout=5)  # every outcome confirmed, and so counted
        url = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient() as client:
            scraped = await client.get(f"{url}/metrics")
            missing = await client.get(f"{url}/other")
    finally:
        server.stop()
        await service.shutdown(timeout=5)

    assert scraped.status_code == 200
    samples = parse(scraped.text)
    queue = broker.queue
    assert value(samples, "katana_tasks_enqueued_total", queue=queue, task="noop") == 7
    assert (
        value(samples, "katana_tasks_finished_total", queue=queue, task="noop", status="COMPLETED")
        == 6
    )
    assert value(samples, "katana_queue_tasks", queue=queue, status="PENDING") == 1
    assert value(samples, "katana_queue_tasks", queue=queue, status="COMPLETED") == 6
    assert missing.status_code == 404

"""`katana worker --metrics-port`: a worker process's own /metrics, gauges matching the broker."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import httpx
from prometheus_client.parser import text_string_to_metric_families

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.management import QueueManager
from katana.task_queue.models import TaskStatus

from ._processes import WorkerProcesses, wait_until

if TYPE_CHECKING:
    from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


async def test_a_cli_worker_serves_its_counters_and_the_queues_gauges(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    port = free_port()
    workers = WorkerProcesses(tmp_path, {})
    async with RedisBroker(redis_url, queue=queue_name) as broker:
        manager = QueueManager(broker)
        try:
            workers.start(
                "--broker", redis_url, "--queue", queue_name, "--metrics-port", str(port),
                app="tests.integration.admin_app:seeded",
            )  # fmt: skip
            done = [
                await manager.enqueue("welcome", {"email": f"user{n}@example.com"})
                for n in range(8)
            ]
            failing = await manager.enqueue("fail", {"n": 1})
            later = await manager.enqueue(
                "welcome", {"email": "later@example.com"}, delay_seconds=600
            )

            url = f"http://127.0.0.1:{port}/metrics"
            scraped: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}

            async def all_counted() -> bool:
                nonlocal scraped
                async with httpx.AsyncClient() as client:
                    try:
                        scraped = samples((await client.get(url)).text)
                    except httpx.TransportError:
                        return False  # not listening yet
                completed = finished_key(queue_name, "welcome", "COMPLETED")
                failed = finished_key(queue_name, "fail", "FAILED")
                return scraped.get(completed) == len(done) and scraped.get(failed) == 1

            await wait_until(all_counted, 30, "the worker's metrics to count every task")
            # The queue is still now: a fresh scrape's gauges are read after the last finish.
            counts = await broker.count_by_status()
            async with httpx.AsyncClient() as client:
                scraped = samples((await client.get(url)).text)
        finally:
            workers.stop_all()
            await broker.purge()

    for status in TaskStatus:
        key = (
            "katana_queue_tasks",
            frozenset({"queue": queue_name, "status": status.value}.items()),
        )
        assert scraped[key] == counts[status], status
    assert counts[TaskStatus.COMPLETED] == len(done)
    assert counts[TaskStatus.PENDING] == 1  # the delayed one
    assert failing.id != later.id


def finished_key(queue: str, task: str, status: str) -> tuple[str, frozenset[tuple[str, str]]]:
    labels = {"queue": queue, "task": task, "status": status}
    return ("katana_tasks_finished_total", frozenset(labels.items()))

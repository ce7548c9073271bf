"""Katana peer: ``TaskQueueService.add_task(s)`` producer, ``katana worker`` CLI.

Written against the planned API: ``RedisBroker(url, queue=...)`` and a worker started as
``katana worker katana_bench:service --concurrency N --broker URL --queue bench``.
"""

from __future__ import annotations

import importlib
from typing import Any

import common

QUEUE = "bench"

try:
    # Imported by name so that type checking does not depend on modules still being written.
    RedisBroker: Any = importlib.import_module("katana.task_queue.broker.redis").RedisBroker
    TaskQueueService: Any = importlib.import_module("katana.task_queue.service").TaskQueueService
    TaskStatus: Any = importlib.import_module("katana.task_queue.models").TaskStatus
    IMPORT_ERROR: str | None = None
except (ImportError, AttributeError) as exc:
    IMPORT_ERROR = f"katana redis broker not available ({exc})"


async def noop(task: Any) -> None:
    sent = task.payload.get("sent", 0.0)
    if sent:
        await common.record_latency(sent)


def make_service(redis_url: str) -> Any:
    """A service on the bench queue with the noop executor."""
    if IMPORT_ERROR is not None:
        raise common.PeerUnavailableError(IMPORT_ERROR)
    return TaskQueueService(
        broker=RedisBroker(redis_url, queue=QUEUE), task_executors={"noop": noop}
    )


#: Read by ``katana worker katana_bench:service`` in the worker process.
service = make_service(common.worker_redis_url()) if IMPORT_ERROR is None else None


class KatanaPeer:
    name = "katana"
    bulk_note: str | None = None

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.service = make_service(redis_url)  # fails early if the broker is missing
        self.worker_cli = common.venv_bin("katana")

    async def open(self) -> None:
        self.service = make_service(self.redis_url)  # a closed RedisBroker does not reopen
        await self.service.broker.connect()

    async def close(self) -> None:
        await self.service.broker.close()

    async def enqueue(self, sent: float) -> None:
        await self.service.add_task("noop", {"sent": sent})

    async def enqueue_bulk(self, count: int) -> None:
        await self.service.add_tasks([("noop", {"sent": 0.0}) for _ in range(count)])

    async def remaining(self) -> int:
        counts = await self.service.broker.count_by_status()
        return int(counts[TaskStatus.PENDING] + counts[TaskStatus.PROCESSING])

    def worker_command(self, concurrency: int) -> list[str]:
        return [
            self.worker_cli,
            "worker",
            "katana_bench:service",
            "--concurrency",
            str(concurrency),
            "--broker",
            self.redis_url,
            "--queue",
            QUEUE,
        ]


if __name__ == "__main__":
    common.main(KatanaPeer, ["katana-task-queue", "redis", "hiredis"])

"""Katana on SQLite: ``TaskQueueService.add_task(s)`` producer on a ``SqliteBroker`` file,
``katana worker --broker sqlite:///...`` CLI; the SQLite side of the huey comparison."""

from __future__ import annotations

import importlib
from typing import Any

import common

QUEUE = "bench"
#: The queue's file; ``open`` deletes it (and its WAL, shared memory, wake folder) first.
DB_PATH = common.LOG_DIR / "katana-sqlite-bench.db"

try:
    SqliteBroker: Any = importlib.import_module("katana.task_queue.broker.sqlite").SqliteBroker
    TaskQueueService: Any = importlib.import_module("katana.task_queue.service").TaskQueueService
    TaskStatus: Any = importlib.import_module("katana.task_queue.models").TaskStatus
    IMPORT_ERROR: str | None = None
except (ImportError, AttributeError) as exc:
    IMPORT_ERROR = f"katana sqlite broker not available ({exc})"


async def noop(task: Any) -> None:
    sent = task.payload.get("sent", 0.0)
    if sent:
        await common.record_latency(sent)


def make_service() -> Any:
    """A service on the bench queue's file with the noop executor (the file opens on use)."""
    if IMPORT_ERROR is not None:
        raise common.PeerUnavailableError(IMPORT_ERROR)
    broker = SqliteBroker(DB_PATH, queue=QUEUE)
    return TaskQueueService(broker=broker, task_executors={"noop": noop})


#: Read by ``katana worker katana_sqlite_bench:service`` in the worker process.
service = make_service() if IMPORT_ERROR is None else None


class KatanaSqlitePeer:
    name = "katana_sqlite"
    bulk_note: str | None = None

    def __init__(self, redis_url: str) -> None:
        self.service = make_service()  # fails early if the broker is missing
        self.worker_cli = common.venv_bin("katana")

    async def open(self) -> None:
        common.remove_sqlite_file(DB_PATH)
        self.service = make_service()  # a closed broker does not reopen
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
            "katana_sqlite_bench:service",
            "--concurrency",
            str(concurrency),
            "--broker",
            f"sqlite:///{DB_PATH}",
            "--queue",
            QUEUE,
        ]


if __name__ == "__main__":
    common.main(KatanaSqlitePeer, ["katana-task-queue", "redis"])

"""streaq peer: ``task.enqueue`` / ``Worker.enqueue_many`` producer, ``streaq run`` worker."""

from __future__ import annotations

from typing import Any

import common
from streaq import Worker  # type: ignore[import-not-found]


async def noop(sent: float = 0.0) -> None:
    if sent:
        await common.record_latency(sent)


def make_worker(redis_url: str, concurrency: int) -> tuple[Any, Any]:
    """A streaq Worker with the noop task registered; (worker, registered task)."""
    worker = Worker(redis_url=redis_url, concurrency=concurrency)
    return worker, worker.task(name="noop")(noop)


#: Read by ``streaq run streaq_bench:worker`` in the worker process.
worker, _ = make_worker(common.worker_redis_url(), common.worker_concurrency())


class StreaqPeer:
    name = "streaq"
    bulk_note: str | None = None

    def __init__(self, redis_url: str) -> None:
        self.worker, self.task = make_worker(redis_url, 1)

    async def open(self) -> None:
        await self.worker.__aenter__()

    async def close(self) -> None:
        await self.worker.__aexit__(None, None, None)

    async def enqueue(self, sent: float) -> None:
        await self.task.enqueue(sent)

    async def enqueue_bulk(self, count: int) -> None:
        await self.worker.enqueue_many([self.task.enqueue(0.0) for _ in range(count)])

    async def remaining(self) -> int:
        # streaq XDELs a task's stream entry when it finishes; queue_size adds delayed ones.
        return int(await self.worker.queue_size())

    def worker_command(self, concurrency: int) -> list[str]:
        return [common.venv_bin("streaq"), "run", "streaq_bench:worker"]


if __name__ == "__main__":
    common.main(StreaqPeer, ["streaq", "coredis", "redis"])

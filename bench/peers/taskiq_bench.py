"""taskiq peer: taskiq-redis ``RedisStreamBroker`` (acknowledged), ``taskiq worker`` CLI."""

from __future__ import annotations

from typing import Any

import common
from redis.asyncio import Redis
from taskiq_redis import RedisStreamBroker  # type: ignore[import-not-found]


async def noop(sent: float = 0.0) -> None:
    if sent:
        await common.record_latency(sent)


def make_broker(redis_url: str) -> tuple[Any, Any]:
    """A stream broker with the noop task registered; (broker, task)."""
    broker = RedisStreamBroker(url=redis_url)
    return broker, broker.register_task(noop, task_name="noop")


#: Read by ``taskiq worker taskiq_bench:broker`` in the worker process.
broker, _ = make_broker(common.worker_redis_url())


class TaskiqPeer:
    name = "taskiq"
    bulk_note: str | None = "no batch enqueue API: task.kiq() sends one message"

    def __init__(self, redis_url: str) -> None:
        self.broker, self.task = make_broker(redis_url)

    async def open(self) -> None:
        # Also creates the consumer group; a worker creating it later would start at "$"
        # and skip the tasks enqueued before it started.
        await self.broker.startup()

    async def close(self) -> None:
        await self.broker.shutdown()

    async def enqueue(self, sent: float) -> None:
        await self.task.kiq(sent)

    async def enqueue_bulk(self, count: int) -> None:
        raise NotImplementedError(self.bulk_note)

    async def remaining(self) -> int:
        # The stream keeps acknowledged entries: the consumer group's lag (never delivered)
        # plus its pending entries (delivered, not yet acknowledged) are the unfinished ones.
        async with Redis(connection_pool=self.broker.connection_pool) as client:
            groups = await client.xinfo_groups(self.broker.queue_name)
        (group,) = [g for g in groups if g["name"] == self.broker.consumer_group_name.encode()]
        if group["lag"] is None:
            raise RuntimeError("Redis cannot tell the consumer group's lag")
        return int(group["lag"]) + int(group["pending"])

    def worker_command(self, concurrency: int) -> list[str]:
        return [
            common.venv_bin("taskiq"),
            "worker",
            "taskiq_bench:broker",
            "--workers",
            "1",
            "--max-async-tasks",
            str(concurrency),
        ]


if __name__ == "__main__":
    common.main(TaskiqPeer, ["taskiq", "taskiq-redis", "redis"])

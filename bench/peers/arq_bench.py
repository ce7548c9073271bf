"""arq peer: ``ArqRedis.enqueue_job`` producer, ``arq`` CLI worker (poll_delay left at 0.5 s)."""

from __future__ import annotations

from typing import Any

import common
from arq import create_pool  # type: ignore[import-not-found]
from arq.connections import RedisSettings  # type: ignore[import-not-found]
from arq.constants import default_queue_name  # type: ignore[import-not-found]


async def noop(ctx: dict[str, Any], sent: float = 0.0) -> None:
    if sent:
        await common.record_latency(sent)


class WorkerSettings:
    """Read by ``arq arq_bench.WorkerSettings`` in the worker process."""

    functions = (noop,)
    redis_settings = RedisSettings.from_dsn(common.worker_redis_url())
    max_jobs = common.worker_concurrency()


class ArqPeer:
    name = "arq"
    bulk_note: str | None = "no batch enqueue API: ArqRedis.enqueue_job only"

    def __init__(self, redis_url: str) -> None:
        self.settings = RedisSettings.from_dsn(redis_url)
        self.pool: Any = None

    async def open(self) -> None:
        self.pool = await create_pool(self.settings)

    async def close(self) -> None:
        await self.pool.aclose()

    async def enqueue(self, sent: float) -> None:
        await self.pool.enqueue_job("noop", sent)

    async def enqueue_bulk(self, count: int) -> None:
        raise NotImplementedError(self.bulk_note)

    async def remaining(self) -> int:
        # A job stays in arq's queue sorted set until the worker finishes it.
        return int(await self.pool.zcard(default_queue_name))

    def worker_command(self, concurrency: int) -> list[str]:
        return [common.venv_bin("arq"), "arq_bench.WorkerSettings"]


if __name__ == "__main__":
    common.main(ArqPeer, ["arq", "redis"])

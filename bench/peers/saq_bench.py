"""saq peer: ``Queue.enqueue`` producer, ``saq`` CLI worker with a settings callable."""

from __future__ import annotations

from typing import Any

import common
from saq import Queue  # type: ignore[import-not-found]


async def noop(ctx: dict[str, Any], *, sent: float = 0.0) -> None:
    if sent:
        await common.record_latency(sent)


def settings() -> dict[str, Any]:
    """Read by ``saq saq_bench.settings`` in the worker process."""
    return {
        "queue": Queue.from_url(common.worker_redis_url()),
        "functions": [noop],
        "concurrency": common.worker_concurrency(),
    }


class SaqPeer:
    name = "saq"
    bulk_note: str | None = (
        "no batch enqueue API: Queue.map enqueues one by one and waits for results, "
        "Queue.batch only groups aborts"
    )

    def __init__(self, redis_url: str) -> None:
        self.queue: Any = Queue.from_url(redis_url)

    async def open(self) -> None:
        await self.queue.connect()

    async def close(self) -> None:
        await self.queue.disconnect()

    async def enqueue(self, sent: float) -> None:
        await self.queue.enqueue("noop", sent=sent)

    async def enqueue_bulk(self, count: int) -> None:
        raise NotImplementedError(self.bulk_note)

    async def remaining(self) -> int:
        # saq's "incomplete" set holds every job from enqueue until it finishes.
        return int(await self.queue.count("incomplete"))

    def worker_command(self, concurrency: int) -> list[str]:
        return [common.venv_bin("saq"), "saq_bench.settings"]


if __name__ == "__main__":
    common.main(SaqPeer, ["saq", "redis"])

"""dramatiq peer: ``actor.send`` producer (blocking client), ``dramatiq`` CLI worker (threads)."""

from __future__ import annotations

from typing import Any

import common
import dramatiq  # type: ignore[import-not-found]
from dramatiq.brokers.redis import RedisBroker  # type: ignore[import-not-found]


def noop(sent: float = 0.0) -> None:
    if sent:
        common.record_latency_sync(sent)


def make_broker(redis_url: str) -> tuple[Any, Any]:
    """A Redis broker with the noop actor declared on it; (broker, actor)."""
    broker = RedisBroker(url=redis_url)
    return broker, dramatiq.actor(noop, actor_name="noop", broker=broker)


#: Found by ``dramatiq dramatiq_bench`` in the worker process through the global broker.
broker, _ = make_broker(common.worker_redis_url())
dramatiq.set_broker(broker)


class DramatiqPeer:
    name = "dramatiq"
    bulk_note: str | None = "no batch enqueue API: group().run() sends message by message"

    def __init__(self, redis_url: str) -> None:
        self.broker, self.actor = make_broker(redis_url)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self.broker.close()

    async def enqueue(self, sent: float) -> None:
        self.actor.send(sent)  # blocking; the producer does nothing else meanwhile

    async def enqueue_bulk(self, count: int) -> None:
        raise NotImplementedError(self.bulk_note)

    async def remaining(self) -> int:
        # Messages (queued, delayed or running) stay in the queue's hash until acknowledged.
        return int(self.broker.do_qsize("default"))

    def worker_command(self, concurrency: int) -> list[str]:
        return [
            common.venv_bin("dramatiq"),
            "dramatiq_bench",
            "--processes",
            "1",
            "--threads",
            str(concurrency),
        ]


if __name__ == "__main__":
    common.main(DramatiqPeer, ["dramatiq", "redis"])

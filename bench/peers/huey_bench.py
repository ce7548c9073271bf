"""huey peer on SQLite: ``SqliteHuey`` task call producer (blocking), ``huey_consumer`` worker
(threads); the peer of Katana's SqliteBroker."""

from __future__ import annotations

from typing import Any

import common
from huey import SqliteHuey  # type: ignore[import-not-found]

DB_PATH = common.LOG_DIR / "huey-bench.db"


def noop_body(sent: float = 0.0) -> None:
    if sent:
        common.record_latency_sync(sent)


def make_huey() -> tuple[Any, Any]:
    """A SqliteHuey on the bench file with the noop task; (huey, task)."""
    # store_none: a finished task leaves a result row even for None, so the harness can count
    # finished tasks (huey keeps no record of a running one).
    queue = SqliteHuey("bench", filename=str(DB_PATH), store_none=True)
    return queue, queue.task()(noop_body)


#: Found by ``huey_consumer huey_bench.huey`` in the worker process.
huey, _ = make_huey()


class HueyPeer:
    name = "huey"
    bulk_note: str | None = "no batch enqueue API: each task call is one enqueue"

    def __init__(self, redis_url: str) -> None:
        self.enqueued = 0
        self.huey: Any = None
        self.noop: Any = None

    async def open(self) -> None:
        common.remove_sqlite_file(DB_PATH)
        self.huey, self.noop = make_huey()  # creates the tables in the new file
        self.enqueued = 0

    async def close(self) -> None:
        self.huey.storage.close()

    async def enqueue(self, sent: float) -> None:
        self.noop(sent)  # blocking; the producer does nothing else meanwhile
        self.enqueued += 1

    async def enqueue_bulk(self, count: int) -> None:
        raise NotImplementedError(self.bulk_note)

    async def remaining(self) -> int:
        # Enqueued by this producer minus the result rows of finished tasks.
        return self.enqueued - int(self.huey.storage.result_store_size())

    def worker_command(self, concurrency: int) -> list[str]:
        return [
            common.venv_bin("huey_consumer"),
            "huey_bench.huey",
            "--workers",
            str(concurrency),
            "--worker-type",
            "thread",
        ]


if __name__ == "__main__":
    # Through the module's own name: huey names a task by its function's module, and the
    # worker imports this file as ``huey_bench``, not ``__main__``.
    import huey_bench

    common.main(huey_bench.HueyPeer, ["huey"])

"""Katana alone on Redis: one process drains truly empty noop tasks (no INCR in the task).

Run: ``.venv/bin/python bench/bench_redis_drain.py [--url URL] [--tasks N] [--concurrency C]
[--rounds R]``. Each round drains once with claiming ahead on and once with it off
(``RedisBroker(claim_ahead=False)``), alternating, so both see the same machine. It uses a queue
of its own on database 15 and deletes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService


async def noop(task: Task) -> None:
    return None


async def drain(url: str, tasks: int, concurrency: int, claim_ahead: bool) -> tuple[float, float]:
    """(tasks/s, worker CPU µs per task) for one drain of ``tasks`` queued noop tasks."""
    queue = f"bench-drain-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(url, queue=queue, claim_ahead=claim_ahead)
    service = TaskQueueService(broker=broker, task_executors={"noop": noop})
    try:
        await service.add_tasks([("noop", {"i": i}) for i in range(tasks)])
        started, cpu = time.perf_counter(), time.process_time()
        service.start_workers(concurrency)
        await service.wait_idle()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await service.shutdown()
        assert (await broker.count_by_status())[TaskStatus.COMPLETED] == tasks
        return tasks / elapsed, cpu / tasks * 1e6
    finally:
        await broker.purge()
        await broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.tasks} noop tasks, one process, {args.url}; best of {args.rounds} rounds")
    for concurrency in args.concurrency:
        best: dict[bool, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for claim_ahead in (True, False):
                rate, cpu = asyncio.run(drain(args.url, args.tasks, concurrency, claim_ahead))
                if rate > best.get(claim_ahead, (0.0, 0.0))[0]:
                    best[claim_ahead] = (rate, cpu)
        for claim_ahead, (rate, cpu) in best.items():
            label = "claim ahead" if claim_ahead else "no claim ahead"
            print(
                f"concurrency {concurrency:>3}, {label:<14}: {rate:>8,.0f} tasks/s, "
                f"{cpu:5.1f} µs CPU/task"
            )
        ratio = best[True][0] / best[False][0]
        print(f"concurrency {concurrency:>3}: claiming ahead drains {ratio:.2f} times as fast")


if __name__ == "__main__":
    main()

"""SqliteBroker's wake-up across processes: idle CPU of a consumer, and cross-process latency.

A consumer process waits in ``dequeue()`` on a SQLite file. This script measures

1. how much CPU the consumer uses while idle (``/proc/<pid>/stat``, over ``--idle`` seconds);
2. how long a task enqueued here takes to start there: one task at a time, the consumer
   printing the ``time.time()`` it got each one, for ``--tasks`` tasks (p50, p99, max).

Run: ``python bench/bench_sqlite_wake.py [--tasks 200] [--idle 10] [--safety-look 1.0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.models import Task

_CONSUMER = """
import asyncio, sys, time
from katana.task_queue.broker.sqlite import SqliteBroker

async def main():
    async with SqliteBroker(sys.argv[1], safety_look_seconds=float(sys.argv[2])) as broker:
        await broker.dequeue(timeout=0)  # connected and listening
        print("ready", flush=True)
        while True:
            task = await broker.dequeue()
            got = time.time()
            await broker.mark_complete(task.id, None, claim_token=task.claim_token)
            print(f"{task.id} {got:.6f}", flush=True)

asyncio.run(main())
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def main(tasks: int, idle: float, safety_look: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "katana.db"
        async with SqliteBroker(db) as broker:
            consumer = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CONSUMER, str(db), str(safety_look),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert consumer.stdout is not None
            try:
                assert (await consumer.stdout.readline()).strip() == b"ready"
                await asyncio.sleep(0.5)  # let it settle into its wait

                cpu_before, wall_before = _cpu_seconds(consumer.pid), time.monotonic()
                await asyncio.sleep(idle)
                cpu = _cpu_seconds(consumer.pid) - cpu_before
                wall = time.monotonic() - wall_before
                share = 100 * cpu / wall
                print(f"idle consumer: {cpu:.3f} s CPU in {wall:.1f} s = {share:.2f}% of a core")

                latencies = []
                for _ in range(tasks):
                    task = Task(name="ping")
                    sent = time.time()
                    await broker.enqueue(task)
                    task_id, got = (await consumer.stdout.readline()).decode().split()
                    assert task_id == task.id
                    latencies.append((float(got) - sent) * 1000)
                latencies.sort()
                p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
                print(
                    f"cross-process start latency over {tasks} tasks: "
                    f"p50 {statistics.median(latencies):.2f} ms, p99 {p99:.2f} ms, "
                    f"max {latencies[-1]:.2f} ms"
                )
            finally:
                consumer.kill()
                await consumer.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--safety-look", type=float, default=1.0)
    options = parser.parse_args()
    asyncio.run(main(options.tasks, options.idle, options.safety_look))

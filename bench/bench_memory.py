"""Benchmark Katana's InMemoryBroker path against a bare asyncio heapq queue doing the same work."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import heapq
import itertools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from katana.task_queue import InMemoryBroker, TaskQueueService, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

#: Mirrors ``katana.task_queue._worker._YIELD_EVERY_SECONDS`` (copied, not imported: it is
#: private). The bare consumers hand the event loop back on exactly the same schedule.
_YIELD_EVERY_SECONDS = 0.005
#: Consumers in the bare baseline; compared with Katana at W=8.
_BARE_CONSUMERS = 8
#: Worker counts measured for Katana.
_KATANA_WORKERS = (1, 8)

_BareEntry = tuple[int, float, int, dict[str, Any]]  # (priority, due timestamp, seq, payload)


async def noop(task: object) -> None:
    """The executor under test, for Katana and for the baseline alike: does nothing."""
    return None


# -- the bare asyncio baseline ------------------------------------------------------------


@dataclass
class _BareQueue:
    """A heap of ``(priority, due, seq, payload)`` and an Event that a producer sets."""

    heap: list[_BareEntry] = field(default_factory=list)
    sequence: itertools.count[int] = field(default_factory=itertools.count)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def push(self, payload: dict[str, Any], priority: int) -> None:
        heapq.heappush(self.heap, (priority, time.time(), next(self.sequence), payload))
        self.ready.set()

    def close(self) -> None:
        """No more pushes: consumers stop once the heap is empty."""
        self.closed = True
        self.ready.set()


async def _bare_consume(
    queue: _BareQueue, seen: list[int], execute: Callable[[object], Awaitable[None]]
) -> None:
    loop = asyncio.get_running_loop()
    last_yield = loop.time()
    heap = queue.heap
    while True:
        if heap:
            payload = heapq.heappop(heap)[3]
            await execute(payload)
            seen[payload["i"]] += 1
            # Same yielding policy as katana.task_queue._worker.Worker.run, line for line: after
            # each task, ``await asyncio.sleep(0)`` only if at least _YIELD_EVERY_SECONDS (5 ms)
            # of loop time passed since the last yield. A consumer whose tasks never suspend so
            # hands the loop back about every 5 ms of continuous work, not after every task.
            # Like a Katana worker, it does not yield after waking from an empty queue.
            now = loop.time()
            if now - last_yield >= _YIELD_EVERY_SECONDS:
                await asyncio.sleep(0)
                last_yield = loop.time()
        elif queue.closed:
            return
        else:
            queue.ready.clear()
            await queue.ready.wait()


async def _bare_run(n: int) -> tuple[float, float]:
    """One bare run: N timed pushes, then a timed drain by 8 consumers; returns both rates."""
    queue = _BareQueue()
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        queue.push({"i": i}, i % 10)
    push_seconds = time.perf_counter() - start
    queue.close()

    seen = [0] * n
    gc.collect()
    start = time.perf_counter()
    consumers = [
        asyncio.create_task(_bare_consume(queue, seen, noop)) for _ in range(_BARE_CONSUMERS)
    ]
    await asyncio.gather(*consumers)
    drain_seconds = time.perf_counter() - start

    assert not queue.heap, f"{len(queue.heap)} items left in the bare heap"
    assert all(count == 1 for count in seen), "an item was consumed twice or never"
    assert sum(seen) == n
    return n / push_seconds, n / drain_seconds


# -- Katana ---------------------------------------------------------------------------------


def _new_service() -> TaskQueueService:
    return TaskQueueService(broker=InMemoryBroker(), task_executors={"noop": noop})


async def _enqueue(service: TaskQueueService, n: int) -> None:
    for i in range(n):
        await service.add_task("noop", {"i": i}, priority=i % 10)


async def _katana_add(n: int) -> float:
    """N sequential add_task calls with no workers running; returns add_task/s."""
    service = _new_service()
    gc.collect()
    start = time.perf_counter()
    await _enqueue(service, n)
    seconds = time.perf_counter() - start
    counts = await service.broker.count_by_status()
    assert counts[TaskStatus.PENDING] == n, f"expected {n} PENDING, got {counts}"
    await service.broker.close()
    return n / seconds


async def _katana_drain(n: int, workers: int) -> float:
    """Enqueue N (untimed), then time start_workers(W) until wait_idle(); returns tasks/s."""
    service = _new_service()
    await _enqueue(service, n)
    gc.collect()
    start = time.perf_counter()
    service.start_workers(workers)
    await service.wait_idle()
    seconds = time.perf_counter() - start
    counts = await service.broker.count_by_status()
    expected = dict.fromkeys(TaskStatus, 0) | {TaskStatus.COMPLETED: n}
    assert counts == expected, f"W={workers}: expected {n} COMPLETED and nothing else, got {counts}"
    await service.shutdown()
    await service.broker.close()
    return n / seconds


# -- driver ---------------------------------------------------------------------------------


async def _measure(n: int, repeat: int) -> dict[str, list[float]]:
    """Rates per figure, one per repeat; the phases interleave so drift hits them all alike."""
    rates: dict[str, list[float]] = {}

    def record(key: str, rate: float) -> None:
        rates.setdefault(key, []).append(rate)

    for run in range(1, repeat + 1):
        push_rate, drain_rate = await _bare_run(n)
        record("bare_push", push_rate)
        record("bare_drain_8", drain_rate)
        gc.collect()
        record("katana_add", await _katana_add(n))
        for workers in _KATANA_WORKERS:
            gc.collect()
            record(f"katana_drain_{workers}", await _katana_drain(n, workers))
        gc.collect()
        print(f"  run {run}/{repeat} done", flush=True)
    return rates


def _report(rates: dict[str, list[float]], repeat: int) -> None:
    best = {key: max(values) for key, values in rates.items()}
    median = {key: statistics.median(values) for key, values in rates.items()}
    rows: list[tuple[str, str, str]] = []

    def rate_row(label: str, key: str) -> None:
        rows.append((label, f"{best[key]:,.0f}", f"{median[key]:,.0f}"))

    def ratio_row(label: str, numerator: str, denominator: str) -> None:
        rows.append(
            (
                label,
                f"{best[numerator] / best[denominator]:.3f}x",
                f"{median[numerator] / median[denominator]:.3f}x",
            )
        )

    rate_row("bare push/s", "bare_push")
    rate_row("katana add_task/s", "katana_add")
    ratio_row("ratio katana add_task / bare push", "katana_add", "bare_push")
    rate_row(f"bare drain {_BARE_CONSUMERS} consumers tasks/s", f"bare_drain_{_BARE_CONSUMERS}")
    for workers in _KATANA_WORKERS:
        rate_row(f"katana drain W={workers} tasks/s", f"katana_drain_{workers}")
    ratio_row("ratio katana(8) / bare(8) drain", "katana_drain_8", "bare_drain_8")

    header = ("figure", f"best of {repeat}", "median")
    width = max(len(row[0]) for row in (header, *rows))
    value_width = max(len(cell) for row in (header, *rows) for cell in row[1:])
    line = f"{{:<{width}}}  {{:>{value_width}}}  {{:>{value_width}}}"
    print(line.format(*header))
    print(line.format("-" * width, "-" * value_width, "-" * value_width))
    for row in rows:
        print(line.format(*row))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=_positive_int, default=100_000, help="N (default 100000)")
    parser.add_argument("--repeat", type=_positive_int, default=3, help="R runs (default 3)")
    args = parser.parse_args(argv)
    n: int = args.tasks
    repeat: int = args.repeat

    print("Katana InMemoryBroker vs bare asyncio heapq")
    print(f"python:  {sys.version.split()[0]} ({platform.python_implementation()})")
    print(f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"N={n} tasks, R={repeat} runs; rates are per second (best of R, and median)")
    print(
        f"executor: async noop; bare consumers yield like Katana workers "
        f"(sleep(0) once {_YIELD_EVERY_SECONDS * 1000:.0f} ms of work passed)"
    )
    print()
    started = time.perf_counter()
    rates = asyncio.run(_measure(n, repeat))
    _report(rates, repeat)
    print()
    print(f"total wall time: {time.perf_counter() - started:.1f}s; all counts verified")


if __name__ == "__main__":
    main()

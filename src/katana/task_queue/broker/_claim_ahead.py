"""What a consuming process holds beyond its waiting workers, and how long its tasks run.

``RedisBroker`` decides when to claim ahead (``_wanted_ahead``) and writes the undoing of a
claim; this module only keeps the tasks claimed ahead in hand-out order, notices which waited
too long, and measures how long the process's tasks run.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..models import Task

__all__ = ["ClaimedAhead", "RunTimes"]


class ClaimedAhead:
    """Tasks claimed ahead of need, handed out by priority, then arrival.

    A task no worker took within ``hold_seconds`` is passed to ``on_stale``, which gives it
    back to the queue; the check runs on a timer only while tasks are held.
    """

    def __init__(self, hold_seconds: float, on_stale: Callable[[Task], object]) -> None:
        self.hold_seconds = hold_seconds
        self._on_stale = on_stale
        # (priority, arrival, loop time claimed, task): the arrival breaks ties before Task.
        self._heap: list[tuple[int, int, float, Task]] = []
        self._arrivals = 0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def __repr__(self) -> str:
        return f"ClaimedAhead({[entry[3].id for entry in sorted(self._heap)]!r})"

    def add(self, task: Task) -> None:
        loop = asyncio.get_running_loop()
        self._arrivals += 1
        heapq.heappush(self._heap, (task.priority, self._arrivals, loop.time(), task))
        if self._timer is None:
            self._timer = loop.call_later(self.hold_seconds, self._give_back_stale)

    def pop(self) -> Task:
        """The task to hand out next; raises ``IndexError`` when none is held."""
        return heapq.heappop(self._heap)[3]

    def take(self, task_id: str) -> Task | None:
        """Take ``task_id`` out, if it is held."""
        for index, entry in enumerate(self._heap):
            if entry[3].id == task_id:
                self._heap[index] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return entry[3]
        return None

    def take_all(self) -> list[Task]:
        """Take out every held task (to be given back); nothing is held, so no timer runs."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = [entry[3] for entry in self._heap]
        self._heap = []
        return tasks

    def _give_back_stale(self) -> None:
        self._timer = None
        if not self._heap:
            return
        now = asyncio.get_running_loop().time()
        deadline = now - self.hold_seconds
        stale = [entry for entry in self._heap if entry[2] <= deadline]
        if stale:
            self._heap = [entry for entry in self._heap if entry[2] > deadline]
            heapq.heapify(self._heap)
            for entry in stale:
                self._on_stale(entry[3])
        if self._heap:
            oldest = min(entry[2] for entry in self._heap)
            delay = max(0.0, oldest + self.hold_seconds - now)
            self._timer = asyncio.get_running_loop().call_later(delay, self._give_back_stale)


class RunTimes:
    """Which tasks this process's workers run now, and a running average of their run time.

    The average (exponentially weighted, newest ``weight``) is infinite until a task finished.
    """

    def __init__(self, weight: float) -> None:
        self._weight = weight
        self._since: dict[str, float] = {}
        self.average_seconds = float("inf")

    @property
    def running(self) -> int:
        return len(self._since)

    def started(self, task_id: str) -> None:
        self._since[task_id] = asyncio.get_running_loop().time()

    def ended(self, task_id: str) -> None:
        """The task's claim ended (outcome written, or lost); no-op for one no worker ran."""
        started = self._since.pop(task_id, None)
        if started is None:
            return
        ran = asyncio.get_running_loop().time() - started
        average = self.average_seconds
        if average == float("inf"):
            self.average_seconds = ran
        else:
            self.average_seconds = average + self._weight * (ran - average)

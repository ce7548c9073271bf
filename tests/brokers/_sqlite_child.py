"""A second process on a SqliteBroker file, driven by the tests in test_sqlite.py.

``python -m tests.brokers._sqlite_child MODE DB [LEASE]`` prints one line per event and runs
until killed:

- ``hold``: waits for one task (no safety look: only a wake-up brings it), printing
  ``asleep`` once its consumer found nothing and went to sleep; then prints
  ``claimed <id> <token>`` and keeps the task, printing ``cancel <id>`` if asked to cancel it.
- ``consume``: completes every task it gets, printing ``done <id>`` for each.
- ``produce``: enqueues tasks one after another, printing ``added <id>`` once each is
  acknowledged (``enqueue`` returned).
"""

from __future__ import annotations

import asyncio
import sys

from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.models import Task


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(mode: str, path: str, lease_seconds: float) -> None:
    # A safety look of an hour: a task enqueued elsewhere reaches this process by its wake-up.
    async with SqliteBroker(path, lease_seconds=lease_seconds, safety_look_seconds=3600) as broker:
        broker.add_cancel_listener(lambda task_id: say(f"cancel {task_id}"))
        say("ready")
        if mode == "produce":
            while True:
                task = Task(name="produced")
                await broker.enqueue(task)
                say(f"added {task.id}")
        if mode == "hold":
            sleep = broker._sleep

            async def sleep_and_say(next_due_us: int | None, seen_version: int | None) -> None:
                say("asleep")
                broker._sleep = sleep  # type: ignore[method-assign]  # said once is enough
                await sleep(next_due_us, seen_version)

            broker._sleep = sleep_and_say  # type: ignore[method-assign]  # a test's probe
            held = await broker.dequeue()
            assert held is not None
            say(f"claimed {held.id} {held.claim_token}")
            await asyncio.Event().wait()
        while True:
            claimed = await broker.dequeue()
            assert claimed is not None
            await broker.mark_complete(claimed.id, None, claim_token=claimed.claim_token)
            say(f"done {claimed.id}")


if __name__ == "__main__":
    lease = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    asyncio.run(main(sys.argv[1], sys.argv[2], lease))

"""The app the browser test watches: a queue with in-process workers and the dashboard at /katana.

Its executors are made to be watched: ``slow`` runs until the test releases it, ``flaky``
fails its first attempt and succeeds once retried.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.context import report_progress
from katana.task_queue.management import QueueManager
from katana.task_queue.service import TaskQueueService
from katana.task_queue.web import katana_router

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.models import Task

__all__ = ["PREFIX", "Controls", "build_app"]

PREFIX = "/katana"


@dataclass
class Controls:
    """What the test steers the executors with (from another thread)."""

    release_slow: threading.Event = field(default_factory=threading.Event)
    failed_once: set[str] = field(default_factory=set)


def build_app(controls: Controls, *, workers: int = 4) -> FastAPI:
    async def quick(task: Task) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"n": task.payload.get("n")}

    async def slow(task: Task) -> str:
        await report_progress(0.5, "waiting for the test to let go")
        # A thread waits on the test's threading.Event; the lifespan sets it before shutdown.
        await asyncio.to_thread(controls.release_slow.wait)
        return "released"

    async def flaky(task: Task) -> str:
        if task.id not in controls.failed_once:
            controls.failed_once.add(task.id)
            raise ValueError("flaky: the first attempt always fails")
        return "worked on the second attempt"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with InMemoryBroker() as broker:
            service = TaskQueueService(broker, {"quick": quick, "slow": slow, "flaky": flaky})
            app.state.katana_manager = QueueManager(broker, service)
            service.start_workers(workers)
            try:
                yield
            finally:
                controls.release_slow.set()
                await service.shutdown(timeout=5)

    def manager(request: Request) -> QueueManager:
        found: QueueManager = request.app.state.katana_manager
        return found

    app = FastAPI(lifespan=lifespan)
    app.include_router(katana_router(manager, title="Katana browser test"), prefix=PREFIX)
    return app

"""Take the dashboard screenshots in docs/screenshots/ with headless Chromium.

Run: ``.venv/bin/python scripts/screenshots.py [OUT_DIR]`` (needs ``/usr/bin/chromium``).

It serves a queue with in-process workers on a free loopback port, fills it with a quarter of
an hour of made-up traffic (the clock is shifted back while that history is made, so the
per-minute chart has something to show), a few payments that fail for good, reports that are
still running, reminders due later, then opens each page and saves a PNG.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import uvicorn
from fastapi import FastAPI
from playwright.async_api import async_playwright

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.context import report_progress
from katana.task_queue.management import QueueManager
from katana.task_queue.service import TaskQueueService
from katana.task_queue.web import katana_router

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from katana.task_queue.models import Task

CHROMIUM = "/usr/bin/chromium"
OUT_DIR = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
PREFIX = "/katana"


class ShiftedClock:
    """Real time plus ``shift`` seconds: history is made in the past, then time runs on."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


class PaymentDeclinedError(Exception):
    pass


def executors(reports_done: asyncio.Event) -> dict[str, Callable[[Task], Any]]:
    async def send_email(task: Task) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"message_id": f"<{task.id[:12]}@mail.example.com>", "to": task.payload["to"]}

    async def resize_image(task: Task) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"sizes": [64, 256, 1024], "key": task.payload["key"]}

    async def sync_inventory(task: Task) -> int:
        await asyncio.sleep(0.01)
        return 120 + len(task.id) % 7

    def gateway_charge(order: int, cents: int) -> None:
        raise PaymentDeclinedError(f"order {order}: card ending 4242 declined (insufficient funds)")

    async def charge_card(task: Task) -> None:
        gateway_charge(task.payload["order"], task.payload["amount_cents"])

    async def generate_report(task: Task) -> str:
        await report_progress(0.4, f"rendering page 12 of 30 ({task.payload['month']})")
        await reports_done.wait()
        return "s3://reports/monthly.pdf"

    async def send_reminder(task: Task) -> None:
        await asyncio.sleep(0.01)

    return {
        "send_email": send_email,
        "resize_image": resize_image,
        "sync_inventory": sync_inventory,
        "charge_card": charge_card,
        "generate_report": generate_report,
        "send_reminder": send_reminder,
    }


def payload_for(name: str, rng: random.Random) -> dict[str, Any]:
    if name == "send_email":
        user = rng.choice(["ada", "grace", "linus", "barbara", "ken", "margaret"])
        return {"to": f"{user}@example.com", "template": rng.choice(["welcome", "receipt"])}
    if name == "resize_image":
        return {"key": f"uploads/{rng.randrange(10_000, 99_999)}.jpg"}
    return {"warehouse": rng.choice(["ams-1", "fra-2", "dub-1"])}


async def make_history(broker: InMemoryBroker, clock: ShiftedClock, done: asyncio.Event) -> None:
    """Fourteen minutes of finished tasks, then payments that fail after two retries."""
    rng = random.Random(5)
    history = TaskQueueService(broker, executors(done), clock=clock)
    history.start_workers(8)
    for minutes_ago in range(14, 0, -1):
        clock.shift = -60.0 * minutes_ago
        for _ in range(rng.randint(4, 22)):
            name = rng.choice(["send_email", "send_email", "resize_image", "sync_inventory"])
            await history.add_task(name, payload_for(name, rng))
        await history.wait_idle(timeout=30)
    clock.shift = 0.0
    for order in (1042, 1057, 1063):
        await history.add_task("charge_card", {"order": order, "amount_cents": 4999}, max_retries=2)
    await history.wait_idle(timeout=60)  # retries back off for a second or two
    await history.shutdown(timeout=5)


def build_app(broker: InMemoryBroker, clock: ShiftedClock, done: asyncio.Event) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await make_history(broker, clock, done)
        # Two worker services, as two processes would be: 6 slots in all.
        services = [TaskQueueService(broker, executors(done), clock=clock) for _ in range(2)]
        services[0].start_workers(4)
        services[1].start_workers(2)
        rng = random.Random(11)
        for month in ("2026-08", "2026-09", "2026-10", "2026-11", "2026-10", "2026-11", "2026-09"):
            await services[0].add_task("generate_report", {"month": month, "format": "pdf"})
        for delay in (600, 3600, 3 * 3600, 26 * 3600):
            await services[0].add_task(
                "send_reminder", {"to": payload_for("send_email", rng)["to"]}, delay_seconds=delay
            )
        yield
        done.set()
        for service in services:
            await service.shutdown(timeout=5)

    app = FastAPI(lifespan=lifespan)
    app.include_router(katana_router(QueueManager(broker, clock=clock)), prefix=PREFIX)
    return app


async def shoot(base: str, out_dir: Path, failed_id: str) -> None:
    pages = {
        "overview": "/",
        "tasks": "/tasks",
        "task-failed": f"/tasks/{failed_id}",
        "workers": "/workers",
        "dead-letters": "/dead-letters",
        "scheduled": "/scheduled",
    }
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = await browser.new_context(
            viewport={"width": 1280, "height": 860}, device_scale_factor=1
        )
        page = await context.new_page()
        for name, path in pages.items():
            await page.goto(base + path, wait_until="networkidle")
            if name == "task-failed":  # show one failed attempt's traceback too
                await page.locator("#attempt-history details").first.evaluate("d => d.open = true")
            target = out_dir / f"{name}.png"
            await page.screenshot(path=str(target), full_page=name != "tasks")
            click.echo(f"wrote {target}")
        await browser.close()


async def main(out_dir: Path) -> None:
    clock = ShiftedClock()
    broker = InMemoryBroker(clock=clock)
    done = asyncio.Event()
    app = build_app(broker, clock, done)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving  # raises what stopped it
            raise SystemExit("the server stopped before it started")
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        [failed, *_] = (await QueueManager(broker).dead_letters(limit=1)).tasks
        await shoot(f"http://127.0.0.1:{port}{PREFIX}", out_dir, failed.id)
    finally:
        server.should_exit = True
        await serving


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(out))

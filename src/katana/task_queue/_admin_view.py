"""How ``katana info`` draws a queue: rich tables, once or live (``--watch``).

Its own module so that rich is imported only by the commands that draw, not by every
``katana`` start (a worker process has no table to show).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .errors import BrokerError
from .models import TaskStatus, utcnow

if TYPE_CHECKING:
    from rich.console import RenderableType

    from .management import QueueManager, QueueOverview

__all__ = ["console", "render", "watch"]


def console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def render(overview: QueueOverview) -> RenderableType:
    """The queue's table and its workers' table."""
    state = "paused" if overview.paused else "running"
    queue = Table(title=Text(f"queue {overview.queue} ({state})"), title_justify="left")
    queue.add_column("status")
    queue.add_column("tasks", justify="right")
    for status in TaskStatus:
        queue.add_row(status.value, str(overview.counts.get(status, 0)))
    queue.add_section()
    queue.add_row("oldest pending", _age(overview.oldest_pending_age_seconds))
    full = len(overview.finished_per_minute) - 1
    window = f"last {full} min" if full else "no full minute yet"
    queue.add_row(f"finished/s ({window})", f"{overview.throughput_per_second:.2f}")
    queue.add_row("finished this minute", str(overview.finished_per_minute[-1]))
    queue.add_row("paused", "yes" if overview.paused else "no")

    workers = Table(title=Text(f"workers ({len(overview.workers)})"), title_justify="left")
    for column in ("host", "pid", "concurrency", "processed", "last seen"):
        workers.add_column(column, justify="left" if column == "host" else "right")
    workers.add_column("current tasks", overflow="fold")
    for worker in overview.workers:
        seen = max(0.0, (overview.at - worker.last_seen_at).total_seconds())
        workers.add_row(
            Text(worker.host),
            str(worker.pid),
            str(worker.concurrency),
            str(worker.processed),
            f"{_age(seen)} ago",
            Text("\n".join(worker.current_task_ids) or "-"),
        )
    stamp = Text(f"at {overview.at:%Y-%m-%d %H:%M:%S} UTC", style="dim")
    return Group(queue, workers, stamp)


async def watch(manager: QueueManager, console: Console, interval: float, minutes: int) -> None:
    """Redraw the view every ``interval`` seconds in a terminal; elsewhere (a pipe, a file)
    print one snapshot after another, since rich's live view shows nothing there until it
    stops, and ``--watch`` stops only at Ctrl-C."""
    first = render(await manager.overview(minutes=minutes))
    if console.is_terminal:
        with Live(first, console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(interval)
                live.update(await _view(manager, minutes), refresh=True)
    view = first
    while True:
        console.print(view)
        console.file.flush()  # a reader at the other end of a pipe sees it now
        await asyncio.sleep(interval)
        view = await _view(manager, minutes)


async def _view(manager: QueueManager, minutes: int) -> RenderableType:
    try:
        return render(await manager.overview(minutes=minutes))
    except BrokerError as exc:  # keep watching: it may come back
        return Text(f"{utcnow():%H:%M:%S} broker error: {exc}", style="bold red")

"""The admin commands of ``katana``: look at a queue and act on it, through ``QueueManager``.

Each command is pointed at a queue with ``--broker URL [--queue NAME]`` (as ``katana worker``
is) or ``--app module:attr``: the app's service then provides the broker and checks the task
names ``enqueue`` is given. ``cli.py`` registers ``ADMIN_COMMANDS`` on the ``katana`` group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from ._loading import broker_from_url, load_service
from ._validation import detached_payload
from .errors import (
    BrokerError,
    InvalidTaskError,
    KatanaError,
    StorageError,
    TaskNotFoundError,
    TaskStateError,
    UnknownTaskError,
)
from .listing import TaskQuery
from .management import DEAD_LETTER_STATUSES, QueueManager, attempts_summary
from .models import TaskStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime

    from .models import Task

__all__ = [
    "ADMIN_COMMANDS",
    "TEXT",
    "BadInputError",
    "cancel",
    "command_error",
    "enqueue",
    "info",
    "pause",
    "purge",
    "redrive",
    "resume",
    "retry",
    "seconds",
    "task_detail",
]

_T = TypeVar("_T")

#: Statuses ``purge`` and ``redrive`` accept: the finished ones.
_FINISHED_CHOICES = ["FAILED", "DEAD", "CANCELLED", "COMPLETED"]


class BadInputError(click.ClickException):
    """Bad input (a URL, a queue name, an argument): one line on stderr and exit code 2."""

    exit_code = 2


class _Text(click.types.StringParamType):
    """A str argument or option that is valid Unicode.

    Click decodes undecodable argv bytes (``$'\\xff'``) to lone surrogates, which no broker
    can store or look up: they are bad input, refused here as one line and exit code 2.
    """

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = super().convert(value, param, ctx)
        try:
            text.encode()
        except UnicodeEncodeError:
            # Not echoed: it may be a URL with a password in it.
            reason = "not valid text (it holds bytes that are not UTF-8)"
            raise _bad_value(param, ctx, reason) from None
        return text


#: The click type of every str argument and option of ``katana``.
TEXT = _Text()


class _Seconds(click.FloatRange):
    """A duration in seconds from ``minimum`` up: a finite number, never NaN or infinity
    (NaN passes every range check, since it compares false with everything)."""

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = super().convert(value, param, ctx)
        except click.BadParameter as exc:
            raise _bad_value(param, ctx, exc.message) from exc
        if not math.isfinite(seconds):
            raise _bad_value(param, ctx, f"{seconds!r} is not a finite number of seconds")
        return seconds


def _bad_value(
    param: click.Parameter | None, ctx: click.Context | None, reason: str
) -> BadInputError:
    """A bad argument or option value as the docs promise it: one line, exit code 2 (click's
    own ``BadParameter`` adds the usage lines)."""
    hint = "value" if param is None else param.get_error_hint(ctx)
    return BadInputError(f"Invalid value for {hint}: {reason}")


def seconds(minimum: float) -> click.FloatRange:
    """The click type of a duration option: finite seconds, at least ``minimum``."""
    return _Seconds(minimum)


def command_error(exc: KatanaError) -> click.ClickException:
    """How a command reports ``exc``, on one line: a broker that failed or a missing task
    exit with 1, every other Katana error is bad input and exits with 2."""
    message = " ".join(str(exc).split("\n"))
    if isinstance(exc, BrokerError | TaskNotFoundError) and not isinstance(exc, StorageError):
        return click.ClickException(message)  # a file the broker may not use is bad input
    return BadInputError(message)


@dataclass(frozen=True)
class _Target:
    """Which queue a command acts on, as its options say."""

    app: str | None
    broker_url: str | None
    queue: str | None

    def manager(self) -> QueueManager:
        if self.app:
            service = load_service(self.app)
            if self.broker_url:
                # The URL replaces the connection only: the app's queue stays unless --queue.
                queue = service.broker.queue if self.queue is None else self.queue
                service.broker = broker_from_url(self.broker_url, queue=queue)
            elif self.queue is not None:
                raise click.UsageError("--queue picks a queue of --broker; give --broker too")
            return QueueManager(service.broker, service)
        if self.broker_url:
            return QueueManager(broker_from_url(self.broker_url, queue=self.queue))
        raise click.UsageError(
            "which queue? Give --broker URL (or set KATANA_BROKER_URL), or --app module:attr"
        )

    def run(self, action: Callable[[QueueManager], Awaitable[_T]]) -> _T:
        """Connect, run ``action``, close; a broker error becomes one line and exit code 1."""
        manager = self.manager()
        try:
            return asyncio.run(_connected(manager, action))
        except (BrokerError, TaskNotFoundError) as exc:
            raise command_error(exc) from exc


async def _connected(manager: QueueManager, action: Callable[[QueueManager], Awaitable[_T]]) -> _T:
    broker = manager.broker
    try:
        await broker.connect()
        return await action(manager)
    finally:
        await broker.close()


def _targeted(command: Callable[..., None]) -> Callable[..., None]:
    """Add ``--app``, ``--broker`` and ``--queue``, passed to ``command`` as ``target``."""

    @functools.wraps(command)
    def with_target(
        *args: Any, app: str | None, broker_url: str | None, queue: str | None, **kwargs: Any
    ) -> None:
        command(*args, target=_Target(app, broker_url, queue), **kwargs)

    options = [
        click.option(
            "--app",
            default=None,
            type=TEXT,
            metavar="MODULE:ATTR",
            help="A TaskQueueService (or factory): its broker, and its task names for enqueue.",
        ),
        click.option(
            "--broker",
            "broker_url",
            type=TEXT,
            envvar="KATANA_BROKER_URL",
            default=None,
            metavar="URL",
            help="Broker URL, e.g. redis://127.0.0.1:6379/0 [env: KATANA_BROKER_URL].",
        ),
        click.option(
            "--queue",
            default=None,
            type=TEXT,
            help="Queue name for --broker (default: 'default').",
        ),
    ]
    for option in reversed(options):
        with_target = option(with_target)
    return with_target


# -- info -------------------------------------------------------------------------------------


@click.command()
@_targeted
@click.option("--watch", is_flag=True, help="Refresh the tables until Ctrl-C.")
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=seconds(0.1),
    help="Seconds between refreshes with --watch.",
)
@click.option(
    "--minutes",
    default=5,
    show_default=True,
    type=click.IntRange(2, 1440),
    help="Throughput is averaged over this many minutes (the current one excluded).",
)
def info(target: _Target, watch: bool, interval: float, minutes: int) -> None:
    """Show the queue: tasks by status, oldest waiting task, throughput, pause, workers."""
    from . import _admin_view  # rich loads only for the commands that draw tables

    console = _admin_view.console()
    if not watch:
        overview = target.run(lambda manager: manager.overview(minutes=minutes))
        console.print(_admin_view.render(overview))
        return
    with contextlib.suppress(KeyboardInterrupt):
        target.run(lambda manager: _admin_view.watch(manager, console, interval, minutes))


# -- enqueue and task -------------------------------------------------------------------------


def _json_object(text: str) -> dict[str, Any]:
    """The ``--payload`` object, checked as ``add_task`` checks a payload; bad input is one line."""
    # The stdlib parser keeps big ints exact (orjson would turn them into floats), so the
    # payload check refuses them here as it does for the Python API and HTTP.
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadInputError(f"Invalid value for --payload: not valid JSON: {exc}") from exc
    if type(value) is not dict:
        raise BadInputError(
            "Invalid value for --payload: must be a JSON object ({...}), "
            f"got a JSON {type(value).__name__}"
        )
    try:
        return detached_payload(value)
    except InvalidTaskError as exc:
        raise BadInputError(f"Invalid value for --payload: {exc}") from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@click.command()
@click.argument("name", type=TEXT)
@click.option("--payload", default="{}", show_default=True, help="The payload: a JSON object.")
@click.option("--priority", default=0, show_default=True, type=int, help="Lower runs first.")
@click.option("--delay", default=0.0, type=seconds(0), help="Seconds before it is due.")
@click.option("--max-retries", default=None, type=click.IntRange(0), help="Retries on failure.")
@_targeted
def enqueue(
    target: _Target,
    name: str,
    payload: str,
    priority: int,
    delay: float,
    max_retries: int | None,
) -> None:
    """Add a task NAME; prints its id."""
    data = _json_object(payload)
    try:
        task = target.run(
            lambda manager: manager.enqueue(
                name, data, priority=priority, delay_seconds=delay, max_retries=max_retries
            )
        )
    except (InvalidTaskError, UnknownTaskError) as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(task.id)


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _task_json(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "name": task.name,
        "status": task.status.value,
        "priority": task.priority,
        "attempts": task.attempts,
        "max_retries": task.max_retries,
        "attempts_summary": attempts_summary(task),
        "timeout_seconds": task.timeout_seconds,
        "payload": task.payload,
        "result": task.result,
        "error": task.error,
        "traceback": task.traceback,
        "errors": task.errors,
        "progress": task.progress,
        "progress_message": task.progress_message,
        "unique_key": task.unique_key,
        "created_at": _when(task.created_at),
        "scheduled_at": _when(task.scheduled_at),
        "started_at": _when(task.started_at),
        "finished_at": _when(task.finished_at),
        "trace_context": task.trace_context,
    }


def _task_lines(task: Task) -> list[str]:
    rows: list[tuple[str, object]] = [
        ("id", task.id),
        ("name", task.name),
        ("status", task.status.value),
        ("priority", task.priority),
        ("attempts", attempts_summary(task)),
        ("created", _when(task.created_at)),
        ("scheduled", _when(task.scheduled_at)),
        ("started", _when(task.started_at)),
        ("finished", _when(task.finished_at)),
    ]
    if task.timeout_seconds is not None:
        rows.append(("timeout", f"{task.timeout_seconds:g}s"))
    if task.unique_key is not None:
        rows.append(("unique key", task.unique_key))
    if task.progress is not None:
        rows.append(("progress", f"{task.progress:.0%} {task.progress_message or ''}".rstrip()))
    rows.append(("payload", orjson.dumps(task.payload).decode()))
    if task.status is TaskStatus.COMPLETED:
        rows.append(("result", orjson.dumps(task.result).decode()))
    if task.error is not None:
        rows.append(("error", task.error))
    lines = [f"{label + ':':<11} {'-' if value is None else value}" for label, value in rows]
    if task.errors:
        lines.append("failed attempts:")
        lines.extend(
            f"  #{entry.get('attempt')} at {entry.get('at')}: {entry.get('error')}"
            for entry in task.errors
        )
    if task.traceback:
        lines.append("traceback:")
        lines.extend(f"  {line}" for line in task.traceback.rstrip("\n").splitlines())
    return lines


@click.command("task")
@click.argument("task_id", type=TEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the task as one JSON object.")
@_targeted
def task_detail(target: _Target, task_id: str, as_json: bool) -> None:
    """Show the task TASK_ID: status, attempts, payload, result, errors, times."""
    task = target.run(lambda manager: manager.task(task_id))
    if as_json:
        click.echo(orjson.dumps(_task_json(task), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo("\n".join(_task_lines(task)))


# -- acting on tasks --------------------------------------------------------------------------


def _report(done: list[tuple[str, str]], skipped: dict[str, str]) -> None:
    for task_id, what in done:
        click.echo(f"{what} {task_id}")
    for task_id, reason in skipped.items():
        click.echo(f"skipped {task_id}: {reason}")
    if skipped:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("task_ids", nargs=-1, required=True, type=TEXT)
@_targeted
def retry(target: _Target, task_ids: tuple[str, ...]) -> None:
    """Queue finished tasks again, due now (exit code 1 if any was skipped)."""
    result = target.run(lambda manager: manager.retry_many(task_ids))
    _report([(task_id, "retried") for task_id in result.done], result.skipped)


@click.command()
@click.argument("task_ids", nargs=-1, required=True, type=TEXT)
@_targeted
def cancel(target: _Target, task_ids: tuple[str, ...]) -> None:
    """Cancel pending tasks, or stop running ones (exit code 1 if any was skipped)."""

    async def cancel_each(manager: QueueManager) -> tuple[list[tuple[str, str]], dict[str, str]]:
        done: list[tuple[str, str]] = []
        skipped: dict[str, str] = {}
        for task_id in dict.fromkeys(task_ids):
            try:
                task = await manager.cancel(task_id)
            except (TaskNotFoundError, TaskStateError) as exc:
                skipped[task_id] = str(exc)
                continue
            stopping = task.status is not TaskStatus.CANCELLED
            done.append((task_id, "stopping (it is running)" if stopping else "cancelled"))
        return done, skipped

    _report(*target.run(cancel_each))


def _filter_options(command: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option(
            "--status",
            type=click.Choice(_FINISHED_CHOICES, case_sensitive=False),
            default=None,
            help="Only tasks in this status [default: FAILED and DEAD, the dead letters].",
        ),
        click.option("--name", default=None, type=TEXT, help="Only tasks with this name."),
        click.option(
            "--text",
            default=None,
            type=TEXT,
            help="Only tasks whose id, name, payload or error contain this text.",
        ),
        click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _query(status: str | None, name: str | None, text: str | None) -> TaskQuery:
    return TaskQuery(
        status=None if status is None else TaskStatus(status.upper()), name=name, text=text
    )


async def _count(manager: QueueManager, query: TaskQuery) -> tuple[int, bool]:
    """How many finished tasks ``query`` selects, and whether that count is exact."""
    statuses = [query.status] if query.status is not None else list(DEAD_LETTER_STATUSES)
    total, exact = 0, True
    for status in statuses:
        page = await manager.tasks(
            TaskQuery(status=status, name=query.name, text=query.text), limit=1
        )
        total += page.total
        exact = exact and page.total_is_exact
    return total, exact


def _bulk(
    target: _Target,
    query: TaskQuery,
    yes: bool,
    verb: str,
    done: str,
    act: Callable[[QueueManager, TaskQuery], Awaitable[int]],
) -> None:
    async def run(manager: QueueManager) -> int | None:
        count, exact = await _count(manager, query)
        if count == 0:
            return None
        what = query.status.value if query.status else "FAILED and DEAD"
        matching = f"{'' if exact else 'at least '}{count} {what} task(s)"
        if query.name or query.text:
            matching += " matching the filter"
        if not yes:
            click.confirm(f"{verb.capitalize()} {matching} in queue {manager.queue}?", abort=True)
        return await act(manager, query)

    acted = target.run(run)
    if acted is None:
        click.echo("no task matches: nothing to do")
    else:
        click.echo(f"{done} {acted} task(s)")


@click.command()
@_filter_options
@_targeted
def purge(
    target: _Target, status: str | None, name: str | None, text: str | None, yes: bool
) -> None:
    """Delete finished tasks matching the filter (by default, the dead letters)."""
    _bulk(
        target, _query(status, name, text), yes, "delete", "deleted", QueueManager.delete_matching
    )


@click.command()
@_filter_options
@_targeted
def redrive(
    target: _Target, status: str | None, name: str | None, text: str | None, yes: bool
) -> None:
    """Queue finished tasks matching the filter again (by default, the dead letters)."""
    _bulk(
        target,
        _query(status, name, text),
        yes,
        "retry",
        "queued again",
        QueueManager.retry_matching,
    )


@click.command()
@_targeted
def pause(target: _Target) -> None:
    """Stop workers of every process from claiming tasks; running tasks finish."""
    queue = target.run(_pause)
    click.echo(f"queue {queue} paused: workers claim no task until `katana resume`")


async def _pause(manager: QueueManager) -> str:
    await manager.pause()
    return manager.queue


@click.command()
@_targeted
def resume(target: _Target) -> None:
    """Let workers claim tasks again."""
    queue = target.run(_resume)
    click.echo(f"queue {queue} resumed")


async def _resume(manager: QueueManager) -> str:
    await manager.resume()
    return manager.queue


#: The commands ``cli.py`` adds to the ``katana`` group.
ADMIN_COMMANDS: list[click.Command] = [
    info,
    enqueue,
    task_detail,
    retry,
    cancel,
    purge,
    redrive,
    pause,
    resume,
]

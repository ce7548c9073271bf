"""The ``katana`` command: run workers (the admin commands are in ``_admin_cli``).

With ``_admin_cli`` and ``_loading``, the only modules that read env vars, URLs and signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from ._admin_cli import ADMIN_COMMANDS, TEXT, command_error, seconds
from ._loading import broker_from_url, load_service, require_extra
from ._urls import masked_url
from .errors import BrokerUnavailableError, ConfigurationError, KatanaError, StorageError
from .logs import JsonFormatter, TaskContextFilter

if TYPE_CHECKING:
    from .broker.base import AbstractBroker
    from .metrics_server import MetricsServer
    from .service import TaskQueueService

__all__ = ["broker_from_url", "load_service", "main", "worker"]

logger = logging.getLogger("katana.task_queue.cli")

_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


class _KatanaGroup(click.Group):
    """The ``katana`` group: any Katana error a command lets through ends it as one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KatanaError as exc:
            raise command_error(exc) from exc


@click.group(cls=_KatanaGroup)
@click.version_option(__version__, prog_name="katana")
def main() -> None:
    """Katana: an asyncio-native background task queue."""


for _command in ADMIN_COMMANDS:
    main.add_command(_command)


@main.command()
@click.argument("app", type=TEXT)
@click.option(
    "-c",
    "--concurrency",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Tasks run at once by each process.",
)
@click.option(
    "-p",
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Worker processes to start.",
)
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"], case_sensitive=False),
    help="json: one JSON object per line, with the task id and name of lines logged in a task.",
)
@click.option(
    "--shutdown-timeout",
    default=30.0,
    show_default=True,
    type=seconds(0),
    help="Seconds running tasks get to finish on SIGTERM/SIGINT before they are "
    "handed back to the queue.",
)
@click.option(
    "--broker",
    "broker_url",
    type=TEXT,
    envvar="KATANA_BROKER_URL",
    default=None,
    help="Broker URL overriding the service's own broker [env: KATANA_BROKER_URL].",
)
@click.option(
    "--queue",
    default=None,
    type=TEXT,
    help="Queue name for --broker (default: the app's broker's queue).",
)
@click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics (with -p N, PORT to PORT+N-1).",
)
def worker(
    app: str,
    concurrency: int,
    processes: int,
    burst: bool,
    log_level: str,
    log_format: str,
    shutdown_timeout: float,
    broker_url: str | None,
    queue: str | None,
    metrics_port: int | None,
) -> None:
    """Run workers for the TaskQueueService APP (module:attribute).

    ``--broker`` (or KATANA_BROKER_URL) replaces the connection of the app's broker; the
    app's queue stays unless ``--queue`` is given.
    """
    _configure_logging(log_level, log_format)
    options = _WorkerOptions(
        app, concurrency, burst, shutdown_timeout, broker_url, queue, metrics_port
    )
    if metrics_port is not None:
        require_extra("prometheus_client", "web", "--metrics-port")
    service = _prepare(options)  # fail fast, in the parent, on a bad APP or URL
    _print_banner(service, options, processes, _broker_source(click.get_current_context()))
    if processes == 1:
        sys.exit(asyncio.run(_run_worker(service, options)))
    sys.exit(_run_processes(options, processes, log_level, log_format))


@dataclass(frozen=True)
class _WorkerOptions:
    """What every worker process is started with (pickled to the spawned children)."""

    app: str
    concurrency: int
    burst: bool
    shutdown_timeout: float
    broker_url: str | None
    queue: str | None
    metrics_port: int | None = None
    #: Set in the children of ``--processes``: the pid whose death stops them.
    parent_pid: int | None = None


def _prepare(options: _WorkerOptions) -> TaskQueueService:
    service = load_service(options.app)
    if options.broker_url:
        # The URL replaces the connection only: the app's queue stays unless --queue is given.
        queue = service.broker.queue if options.queue is None else options.queue
        service.broker = broker_from_url(options.broker_url, queue=queue)
    elif options.queue is not None:
        raise click.UsageError("--queue picks a queue of --broker; give --broker too")
    return service


def _broker_source(ctx: click.Context) -> str:
    """Where ``--broker`` came from, as the banner says it."""
    if not ctx.params.get("broker_url"):  # unset, or an empty KATANA_BROKER_URL
        return "the app"
    if ctx.get_parameter_source("broker_url") is click.core.ParameterSource.ENVIRONMENT:
        return "KATANA_BROKER_URL"
    return "--broker"


def _print_banner(
    service: TaskQueueService, options: _WorkerOptions, processes: int, broker_source: str
) -> None:
    broker = service.broker
    url = getattr(broker, "url", "memory://")
    queue_source = "the app" if options.queue is None else "--queue"
    click.echo(
        f"katana {__version__} worker on {socket.gethostname()} (pid {os.getpid()})\n"
        f"  broker:      {type(broker).__name__} {masked_url(url)} (from {broker_source})\n"
        f"  queue:       {broker.queue} (from {queue_source})\n"
        f"  processes:   {processes} x concurrency {options.concurrency}\n"
        f"  burst:       {'yes' if options.burst else 'no'}\n"
        f"  tasks:       {', '.join(service.task_names) or '(none)'}",
        err=True,
    )


def _serve_metrics(broker: AbstractBroker, port: int | None) -> MetricsServer | None:
    if port is None:
        return None
    from .metrics_server import MetricsServer  # needs the web extra

    server = MetricsServer(broker, port=port)
    server.start()
    return server


async def _run_worker(service: TaskQueueService, options: _WorkerOptions) -> int:
    """Run one process's workers until a signal (or an empty queue with --burst)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    broker = service.broker
    try:
        connected = await _connect(broker, stop)
    except StorageError as exc:  # a file the broker must not use: waiting will not mend it
        click.echo(f"Error: {exc}", err=True)
        await broker.close()
        return 2
    if not connected:
        await broker.close()
        return 0
    service.start_workers(options.concurrency)
    metrics = _serve_metrics(broker, options.metrics_port)
    waiters: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    if options.burst:
        waiters.append(asyncio.create_task(service.wait_idle()))
    if options.parent_pid is not None:
        waiters.append(asyncio.create_task(_wait_orphaned(options.parent_pid)))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    logger.info(
        "stopping: running tasks get %.1fs",
        options.shutdown_timeout,
        extra={"katana_event": "worker_stopping"},
    )
    await service.shutdown(timeout=options.shutdown_timeout)
    if metrics is not None:
        metrics.stop()
    await broker.close()
    if service.abandoned_executors:
        _exit_leaving_abandoned(service.abandoned_executors)
    return 0


def _exit_leaving_abandoned(count: int) -> None:
    """Exit now (code 0), leaving behind executors that ignored their cancellation.

    Their tasks' outcomes are recorded already. ``asyncio.run`` would cancel them once more
    and wait for them forever (and interpreter exit would join any executor threads), so the
    process ends without running that cleanup.
    """
    logger.error(
        "exiting with %d executor(s) that ignored their cancellation still running; "
        "their tasks were handed back or recorded",
        count,
        extra={"katana_event": "worker_exit_abandoned"},
    )
    logging.shutdown()  # flushes every handler
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def _connect(broker: AbstractBroker, stop: asyncio.Event) -> bool:
    """Connect, retrying with capped backoff while the broker is down; False if told to stop."""
    delay = 0.1
    while not stop.is_set():
        try:
            await broker.connect()
            return True
        except BrokerUnavailableError as exc:
            logger.warning(
                "broker unavailable (%s); retrying in %.1fs",
                exc,
                delay,
                extra={"katana_event": "broker_error"},
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, 5.0)
    return False


def _configure_logging(level: str, log_format: str) -> None:
    """Log to stderr; every line logged while a task runs carries its id and name."""
    handler = logging.StreamHandler()
    handler.addFilter(TaskContextFilter())
    if log_format.lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


#: How often a child of ``--processes`` checks that its parent still lives (where the
#: kernel cannot tell it: see ``_die_with_parent``).
_PARENT_POLL_SECONDS = 0.5
#: From <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the parent dies, even by SIGKILL, so the normal hand-back runs.

    Linux only (prctl); elsewhere ``_wait_orphaned`` notices within ``_PARENT_POLL_SECONDS``.
    """
    if sys.platform.startswith("linux"):
        import ctypes  # only Linux children need it

        with contextlib.suppress(OSError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


async def _wait_orphaned(parent_pid: int) -> None:
    """Return once the parent is gone: this process was re-parented (to init or a subreaper)."""
    # No event fires when the parent dies: polling getppid is the portable way.
    while os.getppid() == parent_pid:  # noqa: ASYNC110
        await asyncio.sleep(_PARENT_POLL_SECONDS)
    logger.warning(
        "parent process %d is gone; stopping",
        parent_pid,
        extra={"katana_event": "worker_orphaned"},
    )


def _child_main(options: _WorkerOptions, log_level: str, log_format: str) -> None:
    if options.parent_pid is not None:
        _die_with_parent(options.parent_pid)
    _configure_logging(log_level, log_format)
    service = _prepare(options)
    sys.exit(asyncio.run(_run_worker(service, options)))


def _child_options(options: _WorkerOptions, index: int) -> _WorkerOptions:
    """Child ``index`` (from 1) serves its metrics on its own port and stops when we die."""
    options = dataclasses.replace(options, parent_pid=os.getpid())
    if options.metrics_port is None:
        return options
    return dataclasses.replace(options, metrics_port=options.metrics_port + index - 1)


def _run_processes(options: _WorkerOptions, processes: int, log_level: str, log_format: str) -> int:
    """Start ``processes`` children and pass SIGTERM/SIGINT on to them."""
    import multiprocessing  # only the parent of several processes needs it

    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=_child_main,
            args=(_child_options(options, i), log_level, log_format),
            name=f"katana-worker-{i}",
        )
        for i in range(1, processes + 1)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    failed = [child for child in children if child.exitcode not in (0, None)]
    return 1 if failed else 0


@main.command(name="dashboard")
@click.option(
    "--broker",
    "broker_url",
    type=TEXT,
    envvar="KATANA_BROKER_URL",
    required=True,
    help="Broker URL of the queue to show, e.g. redis://localhost:6379/0 [env: KATANA_BROKER_URL].",
)
@click.option("--queue", default=None, type=TEXT, help="Queue name (default: 'default').")
@click.option("--host", default="127.0.0.1", show_default=True, type=TEXT, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--read-only", is_flag=True, help="Show the queue; refuse every action.")
def _dashboard(broker_url: str, queue: str | None, host: str, port: int, read_only: bool) -> None:
    """Serve the web dashboard and JSON API of one queue (no workers, no authentication)."""
    try:
        import uvicorn

        from .web.app import create_dashboard_app
    except ImportError as exc:
        raise ConfigurationError(
            f"katana dashboard needs the web extra: pip install 'katana-task-queue[web]' ({exc})"
        ) from exc
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    broker = broker_from_url(broker_url, queue=queue)
    shown = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    broker_source = _broker_source(click.get_current_context())
    queue_source = "no --queue given" if queue is None else "from --queue"
    click.echo(
        f"katana {__version__} dashboard on {shown}\n"
        f"  broker:      {type(broker).__name__} {masked_url(broker_url)} (from {broker_source})\n"
        f"  queue:       {broker.queue} ({queue_source})\n"
        f"  mode:        {'read-only' if read_only else 'read-write'}",
        err=True,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not read_only:
        click.echo(
            "warning: the dashboard has no authentication and is not read-only; anyone who "
            "can reach this address can act on the queue",
            err=True,
        )
    uvicorn.run(create_dashboard_app(broker, read_only=read_only), host=host, port=port)


if __name__ == "__main__":  # pragma: no cover
    main()

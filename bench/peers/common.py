"""Shared harness for the Redis peer benchmarks: workers, their CPU, drains, latency, the table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
PEERS_DIR = Path(__file__).resolve().parent
LOG_DIR = Path(tempfile.gettempdir()) / "katana-peer-bench"

#: Latency probes RPUSH (start time - enqueue time) in seconds here; other tasks do nothing.
LATENCY_KEY = "bench:latency"

#: How often the harness asks a queue how many tasks it still holds (one cheap read each).
POLL_SECONDS = 0.02
BULK_BATCH = 1_000
PREFILL_CONCURRENCY = 100
#: Producers enqueueing one by one at the same time from one process and client (a web app
#: under load: each request adds its task).
CONCURRENT_PRODUCERS = 100
LATENCY_RATE = 200
LATENCY_SECONDS = 10
IDLE_SECONDS = 1.0
DRAIN_TIMEOUT = 240.0
LATENCY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Exit status of a peer module whose queue cannot be imported (run.py shows it as skipped).
EXIT_UNAVAILABLE = 3

CLK_TCK = os.sysconf("SC_CLK_TCK")


class PeerUnavailableError(RuntimeError):
    """The peer's library (or its worker CLI) is not installed in this interpreter."""


class Peer(Protocol):
    """What each peer module implements: a producer plus the command that starts its worker."""

    name: str
    #: ``None`` when the peer has a bulk enqueue API, else why the column says "n/a".
    bulk_note: str | None

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def enqueue(self, sent: float) -> None:
        """Enqueue one noop task; ``sent`` > 0 makes it a latency probe."""

    async def enqueue_bulk(self, count: int) -> None:
        """Enqueue ``count`` noop tasks with one call of the peer's bulk API."""

    async def remaining(self) -> int:
        """Tasks the queue's storage still holds as unfinished: queued, delayed or running.

        Read from the harness process with the queue's own API or keys, never from the worker.
        """

    def worker_command(self, concurrency: int) -> list[str]: ...


# -- configuration ---------------------------------------------------------------------------


def check_redis_url(url: str) -> str:
    """Refuse anything but a local Redis and a non-zero database: the bench FLUSHDBs it."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"refusing {url!r}: only redis://127.0.0.1 is allowed")
    db = parts.path.strip("/") or "0"
    if not db.isdigit() or int(db) == 0:
        raise SystemExit(f"refusing {url!r}: name a dedicated database other than 0, e.g. /15")
    return url


def worker_redis_url() -> str:
    """The Redis URL a worker process was started with (module-level worker settings use it)."""
    return os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)


def remove_sqlite_file(path: Path) -> None:
    """Start a SQLite peer's phase on no file: delete it, its WAL and shared memory, and the
    wake-up folder Katana keeps beside it."""
    LOG_DIR.mkdir(exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    wake = path.with_name(path.name + ".wake")
    if wake.is_dir():
        for socket_file in wake.iterdir():
            socket_file.unlink()
        wake.rmdir()


def worker_concurrency() -> int:
    return int(os.environ.get("BENCH_CONCURRENCY", "10"))


def venv_bin(name: str) -> str:
    """A console script installed next to the running interpreter (not resolved: venvs)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise PeerUnavailableError(f"{path} not found: the worker CLI is not installed")
    return str(path)


# -- what a latency probe does inside a worker -------------------------------------------------
#
# Every task body is ``if sent: record(...)``: a drained task (sent == 0) does nothing at all,
# and only the latency probes write their enqueue-to-start time.

_async_client: aioredis.Redis | None = None
_sync_client: redis.Redis | None = None


async def record_latency(sent: float) -> None:
    """A latency probe's body for asyncio workers: push start time - enqueue time."""
    global _async_client
    started = time.time()
    if _async_client is None:
        _async_client = aioredis.Redis.from_url(worker_redis_url())
    await _async_client.rpush(LATENCY_KEY, started - sent)


def record_latency_sync(sent: float) -> None:
    """A latency probe's body for thread-based workers (dramatiq)."""
    global _sync_client
    started = time.time()
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(worker_redis_url())
    _sync_client.rpush(LATENCY_KEY, started - sent)


# -- worker processes and their CPU -------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+sys CPU seconds) of one process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name may hold spaces and parens
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """User+sys CPU of ``root`` and all its live descendants (worker CLIs may fork children)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := proc_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    tree, total, grew = {root}, 0.0, True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    for pid in tree:
        if pid in stats:
            total += stats[pid][1]
    return total


class WorkerProcess:
    """A peer's worker CLI in its own process group, its output in a log file."""

    def __init__(self, command: list[str], redis_url: str, concurrency: int, label: str) -> None:
        LOG_DIR.mkdir(exist_ok=True)
        self.log_path = LOG_DIR / f"{label}-c{concurrency}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        env = {
            **os.environ,
            "BENCH_REDIS_URL": redis_url,
            "BENCH_CONCURRENCY": str(concurrency),
            "PYTHONPATH": str(PEERS_DIR),
            "PYTHONUNBUFFERED": "1",
        }
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            command,
            cwd=PEERS_DIR,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def cpu(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"    | {line}" for line in text) + f"\n    (log: {self.log_path})"

    def stop(self) -> None:
        """SIGTERM (a graceful stop for every peer CLI), then SIGKILL the group if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"  worker did not stop in {STOP_TIMEOUT:.0f}s; killing it", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children the CLI left behind, if any
        self.proc.wait()
        self._log.close()


# -- measurements --------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass
class Drain:
    tasks: int
    seconds: float  # worker spawn -> last task done: includes interpreter start and imports
    start_seconds: float  # worker spawn -> first task done
    steady_per_s: float  # first task done -> last task done
    cpu_us_per_task: float  # over the steady window, idle baseline subtracted
    idle_cpu_ms_per_s: float
    timed_out: bool


async def enqueue_rate(peer: Peer, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        await peer.enqueue(0.0)
    return count / (time.perf_counter() - start)


async def concurrent_rate(peer: Peer, count: int, producers: int = CONCURRENT_PRODUCERS) -> float:
    """``producers`` coroutines enqueue one task at a time each, ``count`` in all."""

    async def produce(share: int) -> None:
        for _ in range(share):
            await peer.enqueue(0.0)

    shares = [count // producers + (1 if i < count % producers else 0) for i in range(producers)]
    start = time.perf_counter()
    await asyncio.gather(*(produce(share) for share in shares))
    return count / (time.perf_counter() - start)


async def bulk_rate(peer: Peer, count: int) -> float:
    start = time.perf_counter()
    for first in range(0, count, BULK_BATCH):
        await peer.enqueue_bulk(min(BULK_BATCH, count - first))
    return count / (time.perf_counter() - start)


async def prefill(peer: Peer, count: int) -> None:
    """Fill the queue fast, untimed: concurrent single enqueues (blocking clients serialize)."""
    for first in range(0, count, PREFILL_CONCURRENCY):
        batch = min(PREFILL_CONCURRENCY, count - first)
        await asyncio.gather(*(peer.enqueue(0.0) for _ in range(batch)))


async def drain(peer: Peer, worker: WorkerProcess, count: int) -> Drain:
    """Poll the queue's own state until ``count`` tasks finished; CPU sampled at first and last.

    Done = ``count`` - what the queue still holds (queued, delayed or running), read from this
    process every POLL_SECONDS: the worker does no bookkeeping for the harness.
    """
    first: tuple[float, int, float] | None = None  # time, done, cpu at the first completion
    timed_out = False
    while True:
        done, now = count - await peer.remaining(), time.perf_counter()
        if first is None and done > 0:
            first = (now, done, worker.cpu())
        if done >= count:
            break
        if now - worker.started > DRAIN_TIMEOUT:
            timed_out = True
            break
        worker.check_alive()
        await asyncio.sleep(POLL_SECONDS)
    end_cpu = worker.cpu()
    idle = await idle_cpu(worker)
    if first is None:
        raise RuntimeError(f"no task finished in {DRAIN_TIMEOUT:.0f}s:\n{worker.log_tail()}")
    first_time, first_done, first_cpu = first
    window = max(now - first_time, 1e-9)
    busy_cpu = end_cpu - first_cpu - idle * window
    return Drain(
        tasks=done,
        seconds=now - worker.started,
        start_seconds=first_time - worker.started,
        steady_per_s=(done - first_done) / window,
        cpu_us_per_task=busy_cpu / max(done - first_done, 1) * 1e6,
        idle_cpu_ms_per_s=idle * 1e3,
        timed_out=timed_out,
    )


async def idle_cpu(worker: WorkerProcess) -> float:
    """CPU seconds per second the worker burns with an empty queue."""
    before, start = worker.cpu(), time.perf_counter()
    await asyncio.sleep(IDLE_SECONDS)
    return (worker.cpu() - before) / (time.perf_counter() - start)


async def latency(peer: Peer, client: aioredis.Redis) -> tuple[float, float]:
    """Enqueue at a steady LATENCY_RATE for LATENCY_SECONDS; (p50, p99) of start - enqueue, ms."""
    total = LATENCY_RATE * LATENCY_SECONDS
    await client.delete(LATENCY_KEY)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(total):
        delay = start + i / LATENCY_RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await peer.enqueue(time.time())
    deadline = time.perf_counter() + LATENCY_TIMEOUT
    while await client.llen(LATENCY_KEY) < total:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"latency probes did not all run in {LATENCY_TIMEOUT:.0f}s")
        await asyncio.sleep(POLL_SECONDS)
    samples = [float(raw) * 1e3 for raw in await client.lrange(LATENCY_KEY, 0, -1)]
    return percentile(samples, 50), percentile(samples, 99)


async def _fresh_db(client: aioredis.Redis, peer: Peer) -> None:
    """Empty the bench database, then connect the producer (some create their keys on connect)."""
    await client.flushdb()
    await peer.open()


async def _phase_one(peer: Peer, client: aioredis.Redis, count: int, out: dict[str, Any]) -> None:
    """Enqueue one by one (left queued), drain at concurrency 10, then latency on that worker."""
    await _fresh_db(client, peer)
    try:
        print(f"  enqueue {count} one by one", flush=True)
        out["enqueue_per_s"] = await enqueue_rate(peer, count)
        worker = WorkerProcess(peer.worker_command(10), out["redis_url"], 10, peer.name)
        try:
            print("  drain at concurrency 10", flush=True)
            out["drain10"] = vars(await drain(peer, worker, count))
            print(f"  latency at {LATENCY_RATE}/s for {LATENCY_SECONDS}s", flush=True)
            out["p50_ms"], out["p99_ms"] = await latency(peer, client)
        finally:
            worker.stop()
    finally:
        await peer.close()


async def _phase_concurrent(
    peer: Peer, client: aioredis.Redis, count: int, out: dict[str, Any]
) -> None:
    """Enqueue from CONCURRENT_PRODUCERS producers at once; the tasks are not drained."""
    await _fresh_db(client, peer)
    try:
        print(f"  enqueue {count} one by one from {CONCURRENT_PRODUCERS} producers", flush=True)
        out["concurrent_per_s"] = await concurrent_rate(peer, count)
    finally:
        await peer.close()


async def _phase_two(peer: Peer, client: aioredis.Redis, count: int, out: dict[str, Any]) -> None:
    """Enqueue in bulk (or prefill untimed), then drain at concurrency 100."""
    await _fresh_db(client, peer)
    try:
        if peer.bulk_note is None:
            print(f"  enqueue {count} in batches of {BULK_BATCH}", flush=True)
            out["bulk_per_s"] = await bulk_rate(peer, count)
        else:
            print(f"  prefill {count} (no bulk API)", flush=True)
            await prefill(peer, count)
        worker = WorkerProcess(peer.worker_command(100), out["redis_url"], 100, peer.name)
        try:
            print("  drain at concurrency 100", flush=True)
            out["drain100"] = vars(await drain(peer, worker, count))
        finally:
            worker.stop()
    finally:
        await peer.close()


async def measure(peer: Peer, redis_url: str, count: int) -> dict[str, Any]:
    """The six measurements for one peer, as a JSON-able dict."""
    out: dict[str, Any] = {
        "peer": peer.name,
        "redis_url": redis_url,
        "tasks": count,
        "bulk_per_s": None,
        "bulk_note": peer.bulk_note,
    }
    client = aioredis.Redis.from_url(redis_url)
    try:
        await _phase_one(peer, client, count, out)
        await _phase_concurrent(peer, client, count, out)
        await _phase_two(peer, client, count, out)
        await client.flushdb()
    finally:
        await client.aclose()
    return out


def main(make_peer: Callable[[str], Peer], versions: Sequence[str]) -> None:
    """Command line of a peer module: run its measurements, write the JSON result."""
    parser = argparse.ArgumentParser(description="Benchmark one Redis task queue.")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--json-out", type=Path, help="write the result here (else stdout)")
    args = parser.parse_args()
    url = check_redis_url(args.redis_url)
    # SIGTERM (run.py's timeout) unwinds like Ctrl-C, so the worker process gets stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        peer = make_peer(url)
        result = asyncio.run(measure(peer, url, args.tasks))
    except PeerUnavailableError as exc:
        result = {"error": str(exc), "unavailable": True}
        print(exc, file=sys.stderr)
    except Exception as exc:  # reported in the table; the traceback goes to stderr
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["versions"] = {name: _version(name) for name in versions}
    text = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.write_text(text)
    else:
        print(text)
    if result.get("unavailable"):
        sys.exit(EXIT_UNAVAILABLE)
    if "error" in result:
        sys.exit(1)


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


# -- the results table ----------------------------------------------------------------------------

COLUMNS = (
    "peer",
    "enqueue/s",
    "enqueue/s @100",
    "bulk enqueue/s",
    "drain/s @10",
    "drain/s @100",
    "p50 ms",
    "p99 ms",
    "worker CPU µs/task",
)
DETAIL_COLUMNS = (
    "peer",
    "start s @10",
    "steady/s @10",
    "steady/s @100",
    "idle CPU ms/s @10/@100",
    "CPU µs/task @100",
    "other CPUs",
)


def _num(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _drain_cells(drain_result: dict[str, Any] | None) -> tuple[str, str]:
    """(drain/s including worker start, steady drain/s)."""
    if not drain_result:
        return "-", "-"
    mark = " (timeout)" if drain_result["timed_out"] else ""
    whole = drain_result["tasks"] / drain_result["seconds"]
    return _num(whole) + mark, _num(drain_result["steady_per_s"]) + mark


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """One row of the main table and one of the details table."""
    name = result["peer"]
    if "error" in result:
        return [name, f"n/a: {result['error'].splitlines()[0][:100]}"], [name, "-"]
    other = _num(result.get("other_cpus"), 2)
    d10, d100 = result.get("drain10"), result.get("drain100")
    bulk = _num(result["bulk_per_s"]) if result["bulk_note"] is None else "n/a"
    main_row = [
        name,
        _num(result.get("enqueue_per_s")),
        _num(result.get("concurrent_per_s")),
        bulk,
        _drain_cells(d10)[0],
        _drain_cells(d100)[0],
        _num(result.get("p50_ms"), 1),
        _num(result.get("p99_ms"), 1),
        _num(d10["cpu_us_per_task"] if d10 else None),
    ]
    idle = "-" if not d10 else f"{d10['idle_cpu_ms_per_s']:.1f}"
    if d100:
        idle += f" / {d100['idle_cpu_ms_per_s']:.1f}"
    detail_row = [
        name,
        _num(d10["start_seconds"] if d10 else None, 2),
        _drain_cells(d10)[1],
        _drain_cells(d100)[1],
        idle,
        _num(d100["cpu_us_per_task"] if d100 else None),
        other,
    ]
    return main_row, detail_row


def format_table(header: Sequence[str], rows: list[list[str]]) -> str:
    """A plain-text table; a short row (an error) spans the remaining columns."""
    widths = [len(h) for h in header]
    for row in rows:
        if len(row) == len(header):
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        if len(row) == len(header):
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells).rstrip())
        else:
            lines.append("  ".join([row[0].ljust(widths[0]), *row[1:]]))
    return "\n".join(lines)

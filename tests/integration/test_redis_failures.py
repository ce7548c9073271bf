"""RedisBroker when things go wrong: long tasks, frozen workers, Redis crashes, bad settings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.errors import BrokerUnavailableError
from katana.task_queue.models import TaskStatus
from katana.task_queue.service import TaskQueueService

from . import frozen_app
from ._redis_server import DURABLE, RedisServers, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping

    from katana.task_queue.models import Task

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Upper bound for anything that normally takes well under a second.
GUARD_SECONDS = 30.0

# -- fixtures and helpers ----------------------------------------------------------------


class LogWatch(logging.Handler):
    """Collects Katana's log records and wakes whoever waits for a ``katana_event``."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    def events(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "katana_event", None) == name]

    def task_ids(self, name: str) -> set[str]:
        return {str(getattr(r, "task_id", "")) for r in self.events(name)}

    async def wait(self, name: str, *, count: int = 1, timeout: float = GUARD_SECONDS) -> None:
        """Return once ``count`` records of event ``name`` were logged."""
        async with asyncio.timeout(timeout):
            while len(self.events(name)) < count:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def log_watch() -> Iterator[LogWatch]:
    watch = LogWatch()
    logger = logging.getLogger("katana")
    previous = logger.level
    logger.setLevel(logging.DEBUG)  # task_started and task_completed are DEBUG lines
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(previous)


@pytest.fixture
def redis_servers() -> Iterator[RedisServers]:
    with RedisServers() as servers:
        yield servers


class Harness:
    """Brokers and services a test creates; closed in reverse order at teardown."""

    def __init__(self) -> None:
        self.brokers: list[RedisBroker] = []
        self.services: list[TaskQueueService] = []
        self.shared_queues: set[tuple[str, str]] = set()

    def broker(self, url: str, queue: str, **options: Any) -> RedisBroker:
        broker = RedisBroker(url, queue=queue, **options)
        self.brokers.append(broker)
        return broker

    def service(
        self, broker: RedisBroker, executors: Mapping[str, Callable[[Task], Any]]
    ) -> TaskQueueService:
        service = TaskQueueService(broker, executors)
        self.services.append(service)
        return service

    async def close(self) -> None:
        for service in reversed(self.services):
            await service.shutdown(timeout=5)
        for broker in reversed(self.brokers):
            await broker.close()
        for url, queue in self.shared_queues:
            async with RedisBroker(url, queue=queue) as cleaner:
                await cleaner.purge()


@pytest.fixture
async def harness(redis_servers: RedisServers) -> AsyncIterator[Harness]:
    """Depends on ``redis_servers`` so brokers close before private servers are killed."""
    harness = Harness()
    try:
        yield harness
    finally:
        await harness.close()


async def wait_idle_across_outage(service: TaskQueueService, timeout: float) -> None:
    """``service.wait_idle`` that keeps waiting while the broker reports Redis unreachable."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await service.wait_idle()
            except BrokerUnavailableError:
                await asyncio.sleep(0.1)  # Redis is (still) coming back: ask again shortly
            else:
                return


async def add_task_across_restart(service: TaskQueueService) -> Task:
    """``add_task`` right after Redis came back; one retry for the stale pooled connection."""
    try:
        return await service.add_task("work", {"n": 1})
    except BrokerUnavailableError:  # see test_first_call_after_a_restart_succeeds
        return await service.add_task("work", {"n": 1})


async def poll_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float, what: str
) -> None:
    """Poll state another process changes until ``condition`` holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


class WorkerProcess:
    """``katana worker tests.integration.frozen_app:factory`` in a subprocess."""

    def __init__(self, directory: Path, url: str, queue: str, **settings: str) -> None:
        self.events_path = directory / f"events-{id(self)}.jsonl"
        self.output_path = directory / f"worker-{id(self)}.log"
        self.env = {
            **os.environ,
            frozen_app.URL_VARIABLE: url,
            frozen_app.QUEUE_VARIABLE: queue,
            frozen_app.EVENTS_VARIABLE: str(self.events_path),
            **settings,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "katana.task_queue.cli",
            "worker",
            "tests.integration.frozen_app:factory",
            "--concurrency",
            "1",
            "--shutdown-timeout",
            "1",
            "--log-level",
            "DEBUG",  # the tests wait for task_started, a DEBUG line
        ]
        with open(self.output_path, "wb") as output:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def events(self, name: str, task_id: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.events_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            with contextlib.suppress(ValueError):  # a line the worker is still writing
                found.append(json.loads(line))
        return [
            event
            for event in found
            if event["event"] == name and (task_id is None or event["task_id"] == task_id)
        ]

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_event(self, name: str, task_id: str | None = None) -> dict[str, Any]:
        async def logged() -> bool:
            if not self.alive():
                pytest.fail(f"worker process exited while waiting for {name}:\n{self.output()}")
            return bool(self.events(name, task_id))

        await poll_until(logged, timeout=GUARD_SECONDS, what=f"{name} from the worker process")
        return self.events(name, task_id)[0]

    async def exits_within(self, seconds: float) -> bool:
        """Whether the process ends within ``seconds`` (it must, or must not, per the test)."""
        assert self.process is not None
        try:
            await asyncio.to_thread(self.process.wait, seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        """Thaw, SIGTERM and reap the process; kill it if it does not exit in time."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def worker_processes(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(url: str, queue: str, **settings: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, url, queue, **settings)
        started.append(worker)
        worker.start()
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


# -- leases ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_task_running_five_leases_is_never_redelivered(
    redis_url: str, queue_name: str, harness: Harness, log_watch: LogWatch
) -> None:
    # Given two worker services on two brokers of one queue, with a 0.4 s lease renewed
    # every 0.1 s, both waiting for work
    harness.shared_queues.add((redis_url, queue_name))
    runs: Counter[tuple[str, str]] = Counter()

    def long_task(service_name: str) -> Callable[[Task], Awaitable[str]]:
        async def run(task: Task) -> str:
            runs[service_name, task.id] += 1
            await asyncio.sleep(2.0)  # the task's own work: five leases long
            return service_name

        return run

    services = []
    for name in ("a", "b"):
        broker = harness.broker(redis_url, queue_name, lease_seconds=0.4, heartbeat_seconds=0.1)
        services.append(harness.service(broker, {"long": long_task(name)}))
    workers = [w for service in services for w in service.start_workers(2)]

    # When a task that runs 2 s is added
    task = await services[0].add_task("long")
    await services[0].wait_idle(timeout=20)

    # Then it ran once, in one service, on its first delivery, and nobody lost a claim
    assert sum(runs.values()) == 1, runs
    stored = await services[0].get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.COMPLETED
    assert stored.attempts == 1
    assert runs[stored.result, task.id] == 1
    for event in ("lease_lost", "leases_recovered", "task_claim_lost", "task_dead"):
        assert not log_watch.events(event), event
    assert not any(worker.done() for worker in workers)


@pytest.mark.timeout(90)
async def test_frozen_worker_process_loses_its_claim_to_another_worker(
    redis_url: str,
    queue_name: str,
    harness: Harness,
    log_watch: LogWatch,
    worker_processes: Callable[..., WorkerProcess],
) -> None:
    # Given a worker process (lease 1 s) running a task that takes 3 s
    harness.shared_queues.add((redis_url, queue_name))
    here = os.getpid()

    async def rescue(task: Task) -> dict[str, Any]:
        return {"pid": here}

    producer = harness.service(harness.broker(redis_url, queue_name), {"slow": rescue})
    task = await producer.add_task("slow")
    frozen = worker_processes(
        redis_url,
        queue_name,
        **{frozen_app.LEASE_VARIABLE: "1", frozen_app.TASK_SECONDS_VARIABLE: "3"},
    )
    await frozen.wait_event("task_started", task.id)

    # When it is frozen past its lease, and a worker in this process is there to take over
    frozen.signal(signal.SIGSTOP)
    rescuer_broker = harness.broker(redis_url, queue_name, lease_seconds=5, heartbeat_seconds=0.2)
    rescuer = harness.service(rescuer_broker, {"slow": rescue})
    rescuer.start_workers(1)
    await rescuer.wait_idle(timeout=GUARD_SECONDS)

    # Then the other worker ran it to completion on the second delivery
    done = await rescuer.get_task(task.id)
    assert done is not None
    assert (done.status, done.result, done.attempts) == (TaskStatus.COMPLETED, {"pid": here}, 2)
    assert task.id in log_watch.task_ids("task_completed")
    assert log_watch.events("leases_recovered")

    # When the frozen process wakes up and finishes its (stale) run
    frozen.signal(signal.SIGCONT)
    lost = await frozen.wait_event("task_claim_lost", task.id)

    # Then its late result is rejected, and the task keeps the second worker's outcome
    assert lost["pid"] == frozen.pid != here
    assert not frozen.events("task_completed", task.id)
    after = await rescuer.get_task(task.id)
    assert after is not None
    assert (after.status, after.result, after.attempts) == (TaskStatus.COMPLETED, {"pid": here}, 2)
    assert after.finished_at == done.finished_at
    assert frozen.alive()


# -- Redis crashes -----------------------------------------------------------------------


class Producer:
    """Adds tasks in a steady trickle, keeping the ids Redis acknowledged."""

    def __init__(self, service: TaskQueueService) -> None:
        self.service = service
        self.acked: list[str] = []
        self.refused = 0
        #: Acknowledgements between the first refusal after ``expect_outage`` and ``restarted``.
        self.acked_while_down: list[str] = []
        self.unexpected: list[BaseException] = []
        self._in_outage = False
        self._watching_outage = False
        self._changed = asyncio.Event()
        self._stop = False

    def expect_outage(self) -> None:
        self._watching_outage = True

    def restarted(self) -> None:
        self._watching_outage = self._in_outage = False

    async def run(self) -> None:
        n = 0
        while not self._stop:
            n += 1
            try:
                task = await self.service.add_task("work", {"n": n})
            except BrokerUnavailableError:
                self.refused += 1
                self._in_outage = self._watching_outage
            except Exception as exc:  # anything else is a bug the test reports
                self.unexpected.append(exc)
            else:
                self.acked.append(task.id)
                if self._in_outage:
                    self.acked_while_down.append(task.id)
            self._changed.set()
            await asyncio.sleep(0.005)  # pacing of the producer, not a wait for work

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(GUARD_SECONDS):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"producer: timed out waiting for {what}")

    def start(self) -> asyncio.Task[None]:
        self._stop = False
        return asyncio.create_task(self.run())

    def stop(self) -> None:
        self._stop = True


class Ledger:
    """What the executors ran, and runs of tasks whose completion was already recorded."""

    def __init__(self, watch: LogWatch) -> None:
        self.watch = watch
        self.runs: Counter[str] = Counter()
        self.reruns_after_completion: list[str] = []

    async def work(self, task: Task) -> int:
        if task.id in self.watch.task_ids("task_completed"):
            self.reruns_after_completion.append(task.id)
        self.runs[task.id] += 1
        await asyncio.sleep(0.01)  # the task's own work, so tasks are in flight
        n: int = task.payload["n"]
        return n


async def assert_all_completed(
    service: TaskQueueService, ids: list[str], ledger: Ledger, watch: LogWatch
) -> None:
    for task_id in ids:
        task = await service.get_task(task_id)
        assert task is not None, f"acknowledged task {task_id} was lost"
        assert task.status is TaskStatus.COMPLETED, task
        assert 1 <= ledger.runs[task_id] <= task.attempts
    assert ledger.reruns_after_completion == []
    completions = Counter(str(getattr(r, "task_id", "")) for r in watch.events("task_completed"))
    assert max(completions.values(), default=0) <= 1, completions.most_common(3)


@pytest.mark.timeout(120)
async def test_redis_killed_mid_run_loses_no_acknowledged_task(
    redis_servers: RedisServers, queue_name: str, harness: Harness, log_watch: LogWatch
) -> None:
    # Given a durable private Redis, a worker service running tasks as a producer adds them,
    # and one task held in its executor until Redis is gone
    server = redis_servers.new(DURABLE)
    ledger = Ledger(log_watch)
    gate = asyncio.Event()
    gated_started = asyncio.Event()

    async def work(task: Task) -> int:
        if task.payload.get("gated") and not gate.is_set():
            gated_started.set()
            await gate.wait()
        return await ledger.work(task)

    service = harness.service(
        harness.broker(server.url, queue_name, lease_seconds=2), {"work": work}
    )
    workers = service.start_workers(4)
    gated = await service.add_task("work", {"n": 0, "gated": True})
    producer = Producer(harness.service(harness.broker(server.url, queue_name), {"work": work}))
    producing = producer.start()
    try:
        async with asyncio.timeout(GUARD_SECONDS):
            await gated_started.wait()
        await producer.until(lambda: len(producer.acked) >= 40, "40 acknowledged tasks")
        completed_before = log_watch.task_ids("task_completed")
        assert completed_before

        # When Redis is killed mid-run, the held task finishes while it is down, and Redis
        # comes back on the same port and data directory
        producer.expect_outage()
        server.kill()
        gate.set()
        refused = producer.refused
        await producer.until(lambda: producer.refused >= refused + 5, "refusals while down")
        await log_watch.wait("outcome_not_recorded")
        producer.restarted()
        server.start()
        acked = len(producer.acked)
        await producer.until(lambda: len(producer.acked) >= acked + 40, "40 tasks after restart")
        producer.stop()
        await producing
    finally:
        producer.stop()
        await asyncio.gather(producing, return_exceptions=True)

    # Then add_task refused while Redis was down and never acknowledged a task it did not store
    await wait_idle_across_outage(service, timeout=60)
    assert producer.unexpected == []
    assert producer.acked_while_down == []
    # ...every acknowledged task completed, none ran again once its completion was recorded...
    await assert_all_completed(service, [gated.id, *producer.acked], ledger, log_watch)
    assert all(ledger.runs[task_id] == 1 for task_id in completed_before)
    # ...the task whose outcome was lost with Redis ran again...
    assert gated.id in log_watch.task_ids("outcome_not_recorded")
    again = await service.get_task(gated.id)
    assert again is not None
    assert ledger.runs[gated.id] == again.attempts == 2
    # ...and the same workers, never restarted, reconnected by themselves.
    assert not any(worker.done() for worker in workers)


@pytest.mark.timeout(60)
async def test_task_failing_while_redis_is_down_does_not_kill_its_worker(
    redis_servers: RedisServers, queue_name: str, harness: Harness, log_watch: LogWatch
) -> None:
    # Given a worker running a task that will raise
    server = redis_servers.new(DURABLE)
    ledger = Ledger(log_watch)
    gate = asyncio.Event()
    gated_started = asyncio.Event()

    async def work(task: Task) -> int:
        if task.payload.get("gated") and not gate.is_set():
            gated_started.set()
            await gate.wait()
            raise RuntimeError("the task failed while Redis was down")
        return await ledger.work(task)

    service = harness.service(
        harness.broker(server.url, queue_name, lease_seconds=1), {"work": work}
    )
    workers = service.start_workers(1)
    gated = await service.add_task("work", {"n": 0, "gated": True})
    async with asyncio.timeout(GUARD_SECONDS):
        await gated_started.wait()

    # When it raises while Redis is down, so its failure cannot be recorded, and Redis returns
    server.kill()
    gate.set()
    await log_watch.wait("broker_error")
    server.start()
    task = await add_task_across_restart(service)

    # Then the worker is still there: it runs the next task, and the failed one again
    idle = asyncio.create_task(wait_idle_across_outage(service, timeout=20))
    await asyncio.wait([idle, *workers], return_when=asyncio.FIRST_COMPLETED)
    idle.cancel()
    assert not any(worker.done() for worker in workers), [
        repr(worker.exception()) for worker in workers if worker.done()
    ]
    await idle
    await assert_all_completed(service, [task.id], ledger, log_watch)
    failed = await service.get_task(gated.id)
    assert failed is not None
    assert failed.status in (TaskStatus.FAILED, TaskStatus.COMPLETED), failed


@pytest.mark.timeout(60)
async def test_worker_started_while_redis_is_down_waits_for_it(
    redis_servers: RedisServers, queue_name: str, harness: Harness, log_watch: LogWatch
) -> None:
    # Given a worker service started while its Redis is not running
    server = redis_servers.new(DURABLE, start=False)
    ledger = Ledger(log_watch)
    service = harness.service(
        harness.broker(server.url, queue_name, lease_seconds=2), {"work": ledger.work}
    )
    workers = service.start_workers(2)
    await log_watch.wait("broker_error", count=2)
    assert not any(worker.done() for worker in workers)

    # When Redis starts and a task is added
    server.start()
    task = await service.add_task("work", {"n": 1})

    # Then the same workers run it
    await wait_idle_across_outage(service, timeout=GUARD_SECONDS)
    await assert_all_completed(service, [task.id], ledger, log_watch)
    assert not any(worker.done() for worker in workers)


@pytest.mark.timeout(90)
async def test_worker_process_started_while_redis_is_down_waits_for_it(
    redis_servers: RedisServers,
    queue_name: str,
    harness: Harness,
    worker_processes: Callable[..., WorkerProcess],
) -> None:
    # Given `katana worker` started while its Redis is not running
    server = redis_servers.new(DURABLE, start=False)
    worker = worker_processes(server.url, queue_name)

    async def banner_shown() -> bool:
        return "worker on" in worker.output() or not worker.alive()

    await poll_until(banner_shown, timeout=GUARD_SECONDS, what="the worker banner")
    exited = await worker.exits_within(3)  # how long it must stay up with Redis down
    assert not exited, f"the worker exited while Redis was down:\n{worker.output()}"

    # When Redis starts and a task is added
    server.start()

    async def quick(task: Task) -> None:
        raise AssertionError("runs in the worker process")

    broker = harness.broker(server.url, queue_name)
    task = await harness.service(broker, {"quick": quick}).add_task("quick")

    async def completed() -> bool:
        return (await broker.count_by_status())[TaskStatus.COMPLETED] == 1

    # Then the worker process runs it
    await poll_until(completed, timeout=GUARD_SECONDS, what="the task to complete")
    done = await broker.get_task(task.id)
    assert done is not None
    assert done.result == {"pid": worker.pid}


@pytest.mark.timeout(60)
async def test_first_call_after_a_restart_succeeds(
    redis_servers: RedisServers, queue_name: str, harness: Harness
) -> None:
    # Given a producer that used Redis, then sat idle while Redis restarted
    server = redis_servers.new(DURABLE)
    service = harness.service(harness.broker(server.url, queue_name), {"work": frozen_app.quick})
    await service.add_task("work")
    server.restart()
    await asyncio.sleep(0.05)  # idle for a moment: the loop reads the old server's FIN

    # When it adds a task (Redis is up), then it succeeds at once
    task = await service.add_task("work")
    assert await service.get_task(task.id) is not None


# -- server settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({"appendonly": "no"}, {"redis_not_durable"}, id="no-aof"),
        pytest.param(
            {**DURABLE, "maxmemory-policy": "allkeys-lru"}, {"redis_evicts"}, id="allkeys-lru"
        ),
        pytest.param(
            {"appendonly": "no", "maxmemory-policy": "allkeys-random"},
            {"redis_not_durable", "redis_evicts"},
            id="neither",
        ),
        pytest.param({**DURABLE, "maxmemory-policy": "noeviction"}, set(), id="durable"),
        pytest.param({**DURABLE, "maxmemory-policy": "volatile-lru"}, set(), id="volatile-lru"),
    ],
)
async def test_connect_warns_about_settings_that_lose_tasks(
    redis_servers: RedisServers,
    queue_name: str,
    harness: Harness,
    caplog: pytest.LogCaptureFixture,
    options: dict[str, str],
    expected: set[str],
) -> None:
    server = redis_servers.new(options)
    caplog.set_level(logging.DEBUG, logger="katana")
    broker = harness.broker(server.url, queue_name)

    await broker.connect()
    await broker.connect()  # warned once per broker, not per call

    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("katana")
    ]
    events = [getattr(r, "katana_event", None) for r in warnings]
    assert sorted(map(str, events)) == sorted(expected), [r.getMessage() for r in warnings]
    assert all(server.url in r.getMessage() for r in warnings)


# -- unreachable Redis -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0", id="port-1"),
        pytest.param(
            "redis://katana:s3cret-pw@127.0.0.1:1/0",
            "redis://katana:***@127.0.0.1:1/0",
            id="password",
        ),
        pytest.param(
            "redis://:s3cret-pw@127.0.0.1:{port}/2", "redis://:***@127.0.0.1:{port}/2", id="closed"
        ),
    ],
)
@pytest.mark.parametrize(
    "operation",
    [
        "add_task",
        "connect",
        "get_task",
        "count_by_status",
        "quarantined",
    ],
)
async def test_unreachable_redis_raises_broker_unavailable_quickly(
    harness: Harness, url: str, shown: str, operation: str
) -> None:
    port = free_port()
    url, shown = url.format(port=port), shown.format(port=port)
    broker = harness.broker(url, "unreachable")
    service = harness.service(broker, {"work": frozen_app.quick})
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "add_task": lambda: service.add_task("work"),
        "connect": broker.connect,
        "get_task": lambda: broker.get_task("0" * 32),
        "count_by_status": broker.count_by_status,
        "quarantined": broker.quarantined,
    }

    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as raised:
        await calls[operation]()

    assert time.monotonic() - started < 10
    assert shown in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert "s3cret" not in str(raised.value.__cause__)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://katana:s3cret-pw@127.0.0.1:6379/0", "redis://katana:***@127.0.0.1:6379/0"),
        ("redis://:s3cret-pw@localhost/3", "redis://:***@localhost/3"),
        (
            "rediss://default:s3cret-pw@redis.example:6380",
            "rediss://default:***@redis.example:6380",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0?password=s3cret-pw", "redis://127.0.0.1:6379/0?password=***"),
        (
            "rediss://u@redis.example/0?ssl_password=s3cret-pw&db=1",
            "rediss://u@redis.example/0?ssl_password=***&db=1",
        ),
    ],
)
async def test_repr_masks_the_password(harness: Harness, url: str, shown: str) -> None:
    broker = harness.broker(url, "masked")

    assert repr(broker) == f"RedisBroker({shown!r}, queue='masked')"
    assert "s3cret" not in str(broker)

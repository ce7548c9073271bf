"""The demo app in main.py over HTTP, with its lifespan (and so its workers) running."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.errors import BrokerClosedError, BrokerUnavailableError
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import ServiceState, TaskQueueService

from ._processes import read_until, wait_until
from .test_dashboard_app import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from types import ModuleType

    from fastapi import FastAPI

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Multiplies the demo's sleeps: send_email takes 20 ms instead of 2 s, process_data 10 ms.
FAST = 0.01
#: Upper bound for waits that normally take milliseconds.
WAIT_SECONDS = 10.0


def _import_demo() -> ModuleType:
    """Import main.py from the repo root, which is not on ``sys.path`` under pytest."""
    loaded = sys.modules.get("main")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("main", REPO_ROOT / "main.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the demo app from {REPO_ROOT / 'main.py'}")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: pydantic looks the module up to resolve annotations.
    sys.modules["main"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["main"]
        raise
    return module


if TYPE_CHECKING:
    import main as demo_main
else:
    demo_main = _import_demo()


@dataclass
class Demo:
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def service(self) -> TaskQueueService:
        service: TaskQueueService = self.app.state.service
        return service

    async def add_task(self, **body: Any) -> str:
        """POST ``body`` to /debug/add_task, check the 202, and return the task id."""
        response = await self.client.post("/debug/add_task", json=body)
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["status"] == "PENDING"
        assert response.headers["location"] == f"/tasks/{accepted['task_id']}"
        task_id: str = accepted["task_id"]
        return task_id

    async def get_task(self, task_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task


@asynccontextmanager
async def _running_demo(app: FastAPI) -> AsyncIterator[Demo]:
    # httpx's ASGITransport does not run the lifespan, so run it here around the client.
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo") as client,
    ):
        yield Demo(app, client)


class ClaimSignallingBroker(InMemoryBroker):
    """An ``InMemoryBroker`` that sets ``claimed`` once a worker has claimed a task."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed = asyncio.Event()

    async def dequeue(self, timeout: float | None = None) -> Task | None:
        task = await super().dequeue(timeout)
        if task is not None:
            self.claimed.set()
        return task


@pytest.fixture(autouse=True)
def demo_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo's own SQLite queue, in the test's folder rather than the checkout."""
    path = tmp_path / "demo.db"
    monkeypatch.setenv("KATANA_DEMO_DB", str(path))
    monkeypatch.delenv("KATANA_BROKER_URL", raising=False)
    return path


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    async with _running_demo(demo_main.create_app(sleep_scale=FAST)) as running:
        yield running


@pytest.fixture
async def broker() -> AsyncIterator[ClaimSignallingBroker]:
    async with ClaimSignallingBroker() as broker:
        yield broker


def _utc(timestamp: str | None) -> datetime:
    assert timestamp is not None
    parsed = datetime.fromisoformat(timestamp)
    assert parsed.utcoffset() == timedelta(0), timestamp
    return parsed


async def _assert_nothing_enqueued(service: TaskQueueService) -> None:
    counts = await service.broker.count_by_status()
    assert sum(counts.values()) == 0, counts


# -- happy paths ----------------------------------------------------------------------------


async def test_send_email_completes(demo: Demo) -> None:
    # Given a send_email task was accepted
    before = datetime.now(UTC)
    task_id = await demo.add_task(name="send_email", payload={"to": "user@example.com"})

    # When the workers have run everything
    await demo.service.wait_idle(timeout=WAIT_SECONDS)

    # Then it is COMPLETED, with its whole record and ordered timestamps
    task = await demo.get_task(task_id)
    assert task["id"] == task_id
    assert task["name"] == "send_email"
    assert task["status"] == "COMPLETED"
    assert task["priority"] == 0
    assert task["payload"] == {"to": "user@example.com"}
    assert task["attempts"] == 1
    assert task["result"] is None
    assert task["error"] is None
    created = _utc(task["created_at"])
    assert before <= created
    assert _utc(task["scheduled_at"]) == created
    assert created <= _utc(task["started_at"]) <= _utc(task["finished_at"]) <= datetime.now(UTC)


async def test_error_in_payload_makes_send_email_fail(demo: Demo) -> None:
    task_id = await demo.add_task(name="send_email", payload={"error": True}, priority=1)

    await demo.service.wait_idle(timeout=WAIT_SECONDS)

    task = await demo.get_task(task_id)
    assert task["status"] == "FAILED"
    assert task["error"] == "ValueError: Simulated email sending error"
    assert task["priority"] == 1
    assert task["attempts"] == 1
    assert _utc(task["started_at"]) <= _utc(task["finished_at"])


async def test_process_data_completes_without_payload(demo: Demo) -> None:
    task_id = await demo.add_task(name="process_data", priority=-5)

    await demo.service.wait_idle(timeout=WAIT_SECONDS)

    task = await demo.get_task(task_id)
    assert task["status"] == "COMPLETED"
    assert task["payload"] == {}
    assert task["priority"] == -5


async def test_delayed_task_is_pending_until_due_then_completes(demo: Demo) -> None:
    # Given a task delayed by 0.3 s
    task_id = await demo.add_task(name="process_data", payload={"data_id": 7}, delay_seconds=0.3)

    # Then it is PENDING at first, due 0.3 s after it was created
    task = await demo.get_task(task_id)
    assert task["status"] == "PENDING"
    assert task["attempts"] == 0
    assert task["started_at"] is None
    assert task["finished_at"] is None
    scheduled = _utc(task["scheduled_at"])
    assert scheduled - _utc(task["created_at"]) == timedelta(seconds=0.3)

    # When the workers have run everything (wait_idle counts delayed tasks as pending)
    await demo.service.wait_idle(timeout=WAIT_SECONDS)

    # Then it ran no earlier than it was due
    task = await demo.get_task(task_id)
    assert task["status"] == "COMPLETED"
    assert _utc(task["started_at"]) >= scheduled


async def test_health(demo: Demo) -> None:
    response = await demo.client.get("/health")

    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok"
    assert health["service_state"] == "running"
    assert health["task_names"] == ["process_data", "send_email"]
    assert health["task_counts"]["PENDING"] == 0


async def test_the_dashboard_and_management_api_are_mounted_at_katana(demo: Demo) -> None:
    # Given a task that failed
    task_id = await demo.add_task(name="send_email", payload={"error": True})
    await demo.service.wait_idle(timeout=WAIT_SECONDS)

    # When the dashboard and the API under /katana are asked about it
    page = await demo.client.get(f"/katana/tasks/{task_id}")
    api = await demo.client.get(f"/katana/api/tasks/{task_id}")

    # Then both show it, with the demo's title and links under /katana
    assert page.status_code == 200, page.text
    assert "Simulated email sending error" in page.text
    assert "Katana demo" in page.text
    assert f'hx-post="/katana/tasks/{task_id}/retry"' in page.text
    assert api.json()["status"] == "FAILED"


async def test_the_demos_metrics_count_its_tasks_under_its_queue(demo: Demo) -> None:
    # Given two tasks enqueued through the demo's own endpoint, run to the end
    for to in ("a@example.com", "b@example.com"):
        await demo.add_task(name="send_email", payload={"to": to})
    await demo.service.wait_idle(timeout=WAIT_SECONDS)
    await demo.service.shutdown(timeout=WAIT_SECONDS)  # every outcome confirmed and counted

    # When Prometheus scrapes /katana/metrics
    scraped = (await demo.client.get("/katana/metrics")).text

    # Then the counters carry the broker's queue name, and the gauge its counts
    queue = demo.service.broker.queue
    labels = f'queue="{queue}",task="send_email"'
    assert f"katana_tasks_enqueued_total{{{labels}}} 2.0" in scraped
    finished = f'queue="{queue}",status="COMPLETED",task="send_email"'
    assert f"katana_tasks_finished_total{{{finished}}} 2.0" in scraped
    assert f'katana_queue_tasks{{queue="{queue}",status="COMPLETED"}} 2.0' in scraped


# -- bad input: a 4xx with a message, never a 500 ---------------------------------------------


async def test_unknown_task_name_is_rejected_naming_the_registered_tasks(demo: Demo) -> None:
    response = await demo.client.post("/debug/add_task", json={"name": "send_sms"})

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "'send_sms'" in detail
    assert "process_data, send_email" in detail
    await _assert_nothing_enqueued(demo.service)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param({"name": "send_email", "priority": 2**40}, "priority must be", id="2**40"),
        pytest.param({"name": "send_email", "priority": -(2**40)}, "priority", id="-2**40"),
        pytest.param({"name": "send_email", "delay_seconds": -1}, "delay_seconds", id="delay<0"),
        pytest.param({"name": "send_email", "delay_seconds": 10**9}, "30 days", id="delay-huge"),
        pytest.param(
            {"name": "send_email", "payload": {"blob": "x" * (1024 * 1024 + 1)}},
            "bytes",
            id="payload-too-big",
        ),
    ],
)
async def test_invalid_task_arguments_are_422_with_katanas_message(
    demo: Demo, body: dict[str, Any], message: str
) -> None:
    response = await demo.client.post("/debug/add_task", json=body)

    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    await _assert_nothing_enqueued(demo.service)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param('{"name": "send_email", "priority": true}', id="priority-true"),
        pytest.param('{"name": "send_email", "priority": "x"}', id="priority-str"),
        pytest.param('{"name": "send_email", "priority": "1"}', id="priority-numeric-str"),
        pytest.param('{"name": "send_email", "priority": 1.5}', id="priority-float"),
        pytest.param('{"name": "send_email", "priority": null}', id="priority-null"),
        # Python's JSON parser accepts these; echoing them back must not break the 422.
        pytest.param('{"name": "send_email", "priority": NaN}', id="priority-nan"),
        pytest.param('{"name": "send_email", "priority": 1e400}', id="priority-inf"),
        pytest.param('{"name": "send_email", "delay_seconds": NaN}', id="delay-nan"),
        pytest.param('{"name": "send_email", "delay_seconds": Infinity}', id="delay-inf"),
        pytest.param('{"name": "send_email", "delay_seconds": "soon"}', id="delay-str"),
        pytest.param('{"name": "send_email", "delay_seconds": false}', id="delay-bool"),
        pytest.param('{"name": "send_email", "payload": [1, 2]}', id="payload-list"),
        pytest.param('{"name": "send_email", "payload": "error"}', id="payload-str"),
        pytest.param('{"name": "send_email", "payload": 3}', id="payload-int"),
        pytest.param('{"name": "send_email", "payload": {"x": NaN}}', id="payload-nan"),
        pytest.param('{"name": 1}', id="name-int"),
        pytest.param('{"name": ""}', id="name-empty"),
        pytest.param('{"payload": {}}', id="name-missing"),
        pytest.param('{"name": "send_email", "delay": 5}', id="unknown-field"),
        pytest.param('["send_email"]', id="body-list"),
        pytest.param("{not json", id="body-malformed"),
        pytest.param("", id="body-empty"),
    ],
)
async def test_bad_request_bodies_are_422_not_500(demo: Demo, content: str) -> None:
    response = await demo.client.post(
        "/debug/add_task", content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    await _assert_nothing_enqueued(demo.service)


HUGE = "x" * 100_000


@pytest.mark.parametrize("path", ["/debug/add_task", "/katana/api/tasks"])
@pytest.mark.parametrize(
    "content",
    [
        # A lone surrogate is valid JSON but cannot be encoded as UTF-8: echoing it whole
        # made the 422 itself fail with a 500.
        pytest.param('{"name": "\\ud800"}', id="name-surrogate"),
        pytest.param('{"name": "send_email", "priority": "\\ud800"}', id="priority-surrogate"),
        pytest.param('{"name": "send_email", "payload": {"\\udfff": 1}}', id="payload-key"),
        pytest.param('{"name": "send_email", "\\ud800": 1}', id="unknown-field-surrogate"),
        pytest.param('{"name": "send_email", "priority": 1e400}', id="priority-inf"),
        pytest.param(f'{{"name": "{HUGE}"}}', id="name-100k"),
        pytest.param(f'{{"name": "send_email", "priority": "{HUGE}"}}', id="priority-100k"),
        pytest.param(f'{{"name": "send_email", "{HUGE}": 1}}', id="unknown-field-100k"),
        pytest.param(f'{{"payload": {{"k": "{HUGE}"}}}}', id="name-missing-big-body"),
        pytest.param(f'{{"name": "send_email", "priority": [{"1," * 5000}1]}}', id="long-list"),
    ],
)
async def test_unencodable_or_huge_input_is_a_bounded_422(
    demo: Demo, path: str, content: str
) -> None:
    response = await demo.client.post(
        path,
        content=content,
        headers={"content-type": "application/json", "X-Katana-Request": "1"},
    )

    assert response.status_code == 422, response.text[:500]
    assert response.json()["detail"]
    assert len(response.content) < 5_000
    await _assert_nothing_enqueued(demo.service)


async def test_get_unknown_task_id_is_404(demo: Demo) -> None:
    response = await demo.client.get("/tasks/no-such-task")

    assert response.status_code == 404
    assert "no-such-task" in response.json()["detail"]


# -- an outage: 503 with Retry-After, like the management API ---------------------------------


class OutageBroker(InMemoryBroker):
    """An ``InMemoryBroker`` whose enqueue and reads fail as an unreachable broker's do."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise BrokerUnavailableError("the test broker is down")

    async def enqueue(self, task: Task) -> None:
        self._check()
        await super().enqueue(task)

    async def get_task(self, task_id: str) -> Task | None:
        self._check()
        return await super().get_task(task_id)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/debug/add_task", {"name": "process_data"}),
        ("GET", "/tasks/{id}", None),
        ("POST", "/katana/api/tasks", {"name": "process_data"}),
        ("GET", "/katana/api/tasks/{id}", None),
    ],
)
async def test_an_outage_is_503_with_retry_after(
    method: str, path: str, body: dict[str, Any] | None
) -> None:
    async with OutageBroker() as broker:
        app = demo_main.create_app(broker=broker, sleep_scale=FAST)
        async with _running_demo(app) as demo:
            # Given a task stored before the broker went down
            task_id = await demo.add_task(name="process_data", delay_seconds=60)
            broker.down = True

            # When a client enqueues or reads a task
            response = await demo.client.request(
                method, path.format(id=task_id), json=body, headers={"X-Katana-Request": "1"}
            )

            # Then it is told to come back later, not that the server broke
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) > 0
            assert "the test broker is down" in response.json()["detail"]
            broker.down = False


# -- lifespan --------------------------------------------------------------------------------


async def test_lifespan_exit_finishes_running_tasks_and_keeps_delayed_ones(
    broker: ClaimSignallingBroker,
) -> None:
    app = demo_main.create_app(broker=broker, sleep_scale=FAST)
    async with _running_demo(app) as demo:
        # Given one task being run and one delayed for a minute
        running_id = await demo.add_task(name="send_email", payload={"to": "a@example.com"})
        delayed_id = await demo.add_task(name="process_data", delay_seconds=60)
        async with asyncio.timeout(WAIT_SECONDS):
            await broker.claimed.wait()
        service = demo.service
    # When the lifespan has exited (leaving the block above ran its shutdown)

    # Then the workers are stopped, the running task finished, and nothing was lost
    assert service.state is ServiceState.STOPPED
    counts = await broker.count_by_status()
    assert counts[TaskStatus.PROCESSING] == 0
    finished = await broker.get_task(running_id)
    assert finished is not None
    assert finished.status is TaskStatus.COMPLETED
    delayed = await broker.get_task(delayed_id)
    assert delayed is not None
    assert delayed.status is TaskStatus.PENDING
    assert delayed.attempts == 0


async def test_lifespan_exit_hands_back_tasks_that_outlive_the_grace_period(
    broker: ClaimSignallingBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a grace period far shorter than the task (send_email takes 2 s at full speed)
    monkeypatch.setattr(demo_main, "SHUTDOWN_GRACE_SECONDS", 0.01)
    app = demo_main.create_app(broker=broker, sleep_scale=1.0)
    async with _running_demo(app) as demo:
        task_id = await demo.add_task(name="send_email")
        async with asyncio.timeout(WAIT_SECONDS):
            await broker.claimed.wait()
    # When the lifespan has exited

    # Then the interrupted task is PENDING again, not stuck in PROCESSING
    task = await broker.get_task(task_id)
    assert task is not None
    assert task.status is TaskStatus.PENDING
    assert task.attempts == 0  # nothing failed: the interrupted attempt does not count
    counts = await broker.count_by_status()
    assert counts[TaskStatus.PROCESSING] == 0


async def test_lifespan_closes_the_broker_it_built() -> None:
    app = demo_main.create_app(sleep_scale=FAST)
    async with _running_demo(app) as demo:
        service = demo.service

    assert service.state is ServiceState.STOPPED
    with pytest.raises(BrokerClosedError):
        await service.broker.get_task("anything")


async def test_lifespan_leaves_a_callers_broker_open(broker: ClaimSignallingBroker) -> None:
    app = demo_main.create_app(broker=broker, sleep_scale=FAST)
    async with _running_demo(app) as demo:
        task_id = await demo.add_task(name="process_data")
        await demo.service.wait_idle(timeout=WAIT_SECONDS)

    task = await broker.get_task(task_id)
    assert task is not None
    assert task.status is TaskStatus.COMPLETED


# -- the demo's queue outlives a restart ----------------------------------------------------

#: How long uvicorn may take to start (import the app, open the file) on a loaded machine.
STARTUP_SECONDS = 20.0


def _start_server(port: int, db: Path) -> subprocess.Popen[bytes]:
    """``uvicorn main:app`` (what ``make demo`` runs) on ``port``, its queue in ``db``."""
    env = {k: v for k, v in os.environ.items() if k != "KATANA_BROKER_URL"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env={**env, "KATANA_DEMO_DB": str(db)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert server.stderr is not None
    read_until(server.stderr, b"Application startup complete", STARTUP_SECONDS)
    return server


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # Ctrl-C: the lifespan exit runs
    try:
        server.communicate(timeout=STARTUP_SECONDS)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


async def test_a_delayed_task_survives_a_restart_of_the_demo_and_runs(demo_db: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    # Given the demo served by uvicorn, and a task enqueued through it, due in 5 s
    server = _start_server(port, demo_db)
    try:
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.post(
                "/debug/add_task",
                json={"name": "process_data", "payload": {"data_id": 7}, "delay_seconds": 5},
            )
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]
    finally:
        # When the server is stopped before the task is due
        _stop_server(server)
    assert server.returncode == 0

    # and started again
    server = _start_server(port, demo_db)
    try:
        async with httpx.AsyncClient(base_url=base_url) as client:
            # Then the task is still there, not run yet
            first = await client.get(f"/tasks/{task_id}")
            assert first.status_code == 200, first.text
            assert first.json()["status"] == "PENDING"

            # and it runs once it is due (process_data sleeps 1 s)
            async def completed() -> bool:
                seen = await client.get(f"/tasks/{task_id}")
                return seen.status_code == 200 and seen.json()["status"] == "COMPLETED"

            await wait_until(completed, 5 + 1 + WAIT_SECONDS, f"task {task_id} to complete")
    finally:
        _stop_server(server)

"""The standalone dashboard: ``create_dashboard_app`` and the ``katana dashboard`` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import httpx
import pytest
from click.testing import CliRunner

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.cli import main
from katana.task_queue.errors import BrokerClosedError
from katana.task_queue.management import QueueManager
from katana.task_queue.web import CSRF_HEADER
from katana.task_queue.web.app import create_dashboard_app

from ._processes import REPO_ROOT, read_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_dashboard(*args: str) -> subprocess.Popen[bytes]:
    """Run ``katana dashboard *args`` with its stderr on a pipe (see ``read_until``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "katana.task_queue.cli", "dashboard", *args],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if k != "KATANA_BROKER_URL"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d") as client,
    ):
        yield client


async def test_the_app_serves_the_dashboard_and_api_and_closes_its_broker() -> None:
    broker = InMemoryBroker()
    app = create_dashboard_app(broker, title="Ops")

    async for client in client_for(app):
        await QueueManager(broker).enqueue("report", {"n": 1})
        page = await client.get("/")
        overview = await client.get("/api/overview")
        paused = await client.post("/api/queue/pause", headers={CSRF_HEADER: "1"})

        assert page.status_code == 200
        assert "<title>Overview · Ops</title>" in page.text
        assert 'data-count="PENDING">1<' in page.text
        assert overview.json()["counts"]["PENDING"] == 1
        assert paused.json() == {"paused": True}

    with pytest.raises(BrokerClosedError):
        await broker.count_by_status()


async def test_the_read_only_app_refuses_actions() -> None:
    app = create_dashboard_app(InMemoryBroker(), read_only=True)

    async for client in client_for(app):
        refused = await client.post("/queue/pause", headers={CSRF_HEADER: "1"})
        page = await client.get("/")

        assert refused.status_code == 403
        assert "hx-post" not in page.text


async def test_the_app_starts_with_the_broker_down_and_shows_the_banner() -> None:
    app = create_dashboard_app(RedisBroker("redis://127.0.0.1:1/0"))

    async for client in client_for(app):
        page = await client.get("/")

        assert page.status_code == 503
        assert int(page.headers["retry-after"]) > 0
        assert "The broker is unreachable." in page.text


def test_the_command_refuses_a_bad_broker_url() -> None:
    result = CliRunner().invoke(main, ["dashboard", "--broker", "ftp://nowhere"])

    assert result.exit_code == 2
    assert "unsupported broker URL 'ftp://nowhere'" in result.output


def test_the_command_needs_a_broker() -> None:
    env = {"KATANA_BROKER_URL": ""}
    result = CliRunner().invoke(main, ["dashboard"], env=env)

    assert result.exit_code == 2
    assert "Missing option '--broker'" in result.output


async def test_katana_dashboard_serves_a_redis_queue_on_loopback(
    redis_url: str, queue_name: str
) -> None:
    # Given a task on a Redis queue
    broker = RedisBroker(redis_url, queue=queue_name)
    task = await QueueManager(broker).enqueue("report", {"n": 1})
    port = free_port()

    # When `katana dashboard` serves that queue
    process = start_dashboard(
        "--broker", redis_url, "--queue", queue_name, "--port", str(port), "--read-only"
    )
    try:
        assert process.stderr is not None
        banner = read_until(process.stderr, b"Uvicorn running on", timeout=20)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            page = await client.get(f"/tasks/{task.id}")
            overview = await client.get("/api/overview")

        # Then it binds 127.0.0.1, shows the task, and stops cleanly on SIGTERM
        assert f"dashboard on http://127.0.0.1:{port}/".encode() in banner
        assert b"read-only" in banner
        assert page.status_code == 200
        assert f"queue <strong>{queue_name}</strong>" in page.text
        assert "report" in page.text
        assert overview.json()["counts"]["PENDING"] == 1
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=10)
        assert b"Application shutdown complete" in rest  # the lifespan closed the broker
        # uvicorn re-raises the signal once it has shut down gracefully
        assert process.returncode in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
        await broker.purge()
        await broker.close()

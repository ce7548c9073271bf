"""The ``katana`` command at its edges, in a subprocess: bad URLs, queue names and missing
extras are one line and exit code 2; credentials never show; KATANA_BROKER_URL keeps the
app's queue."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.models import Task, TaskStatus

from ._processes import REPO_ROOT
from ._redis_server import RedisServers

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

#: Generous: a loaded machine starts Python slowly.
RUN_SECONDS = 60
APP = "tests.integration.admin_app"


def katana(
    *args: str, env: Mapping[str, str] | None = None, shadow: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``katana *args`` in a subprocess from the repository root, without the caller's
    KATANA_BROKER_URL; ``shadow``: a folder put first on the path (to hide an extra)."""
    full_env = {key: value for key, value in os.environ.items() if key != "KATANA_BROKER_URL"}
    full_env.update(env or {})
    if shadow is not None:
        full_env["PYTHONPATH"] = str(shadow)
    return subprocess.run(
        [sys.executable, "-m", "katana.task_queue.cli", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )


def assert_one_line_error(
    finished: subprocess.CompletedProcess[str], exit_code: int, *fragments: str
) -> str:
    assert finished.returncode == exit_code, finished.stderr
    assert "Traceback" not in finished.stderr
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, finished.stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    for fragment in fragments:
        assert fragment in line
    return line


# -- bad URLs and queue names: one line, exit code 2 -----------------------------------------

BAD_URLS = [
    pytest.param("redis://127.0.0.1:notaport/0", "port must be a number", id="port-not-a-number"),
    pytest.param("redis://127.0.0.1:70000/0", "port must be a number", id="port-out-of-range"),
    pytest.param("redis://127.0.0.1:6379/notadb", "database number", id="db-not-a-number"),
    pytest.param("redis://127.0.0.1:6379/0/1", "database number", id="db-path-too-deep"),
    pytest.param("redis://127.0.0.1:6379/0?db=x", "'db'", id="db-query-not-a-number"),
    pytest.param("redis://127.0.0.1:6379/0?socket_timeout=soon", "socket_timeout", id="bad-value"),
    pytest.param("redis://127.0.0.1:6379/0?sockettimeout=1", "sockettimeout", id="misspelt"),
    pytest.param(
        "redis://127.0.0.1:6379/0?decode_responses=true", "decode_responses", id="decode-responses"
    ),
    pytest.param("redis://127.0.0.1:6379/0?protocol=9", "protocol must be 2 or 3", id="protocol"),
    pytest.param("redis://127.0.0.1:6379/0?retry_on_error=x", "retry_on_error", id="retry"),
    pytest.param("redis://127.0.0.1:6379/0?client_name=a%20b", "client_name", id="client-name"),
    pytest.param("redis://127.0.0.1:6379/99999", "DB index is out of range", id="db-out-of-range"),
    pytest.param("mysql://u:s3cret@127.0.0.1/0", "unsupported broker URL", id="unknown-scheme"),
    pytest.param("127.0.0.1:6379", "unsupported broker URL", id="no-scheme"),
]

COMMANDS = [
    pytest.param(("info",), id="info"),
    pytest.param(("enqueue", "send_email"), id="enqueue"),
    pytest.param(("worker", f"{APP}:plain"), id="worker"),
    pytest.param(("dashboard",), id="dashboard"),
]


@pytest.mark.parametrize(("url", "reason"), BAD_URLS)
def test_a_bad_broker_url_is_one_line_and_exit_code_2(url: str, reason: str) -> None:
    finished = katana("info", "--broker", url)

    line = assert_one_line_error(finished, 2, reason)
    assert "may have been carried out" not in line


BAD_QUEUES = [
    pytest.param("a{b}", id="hash-tag"),
    pytest.param("", id="empty"),
    pytest.param("q" * 101, id="101-chars"),
    pytest.param("emails\n", id="trailing-newline"),
    pytest.param("e mails", id="space"),
]


@pytest.mark.parametrize("queue", BAD_QUEUES)
def test_an_invalid_queue_name_is_one_line_and_exit_code_2(queue: str, redis_url: str) -> None:
    finished = katana("info", "--broker", redis_url, "--queue", queue)

    assert_one_line_error(finished, 2, "queue name must match")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        pytest.param("--broker", "redis://127.0.0.1:notaport/0", "port", id="bad-port"),
        pytest.param("--broker", "redis://127.0.0.1:6379/notadb", "database", id="bad-db"),
        pytest.param(
            "--broker", "redis://127.0.0.1:6379/0?decode_responses=1", "decode", id="decode"
        ),
        pytest.param("--queue", "a{b}", "queue name must match", id="bad-queue"),
    ],
)
def test_every_command_reports_bad_input_as_one_line_and_exit_code_2(
    command: tuple[str, ...], option: str, value: str, reason: str, redis_url: str
) -> None:
    given = {"--broker": redis_url, "--queue": "fine", option: value}

    finished = katana(*command, "--broker", given["--broker"], "--queue", given["--queue"])

    assert_one_line_error(finished, 2, reason)


@pytest.mark.parametrize(
    ("command", "module", "extra"),
    [
        pytest.param(("info", "--broker", "redis://127.0.0.1:6379/0"), "redis", "redis", id="info"),
        pytest.param(
            ("worker", f"{APP}:plain", "--broker", "redis://127.0.0.1:6379/0"),
            "redis",
            "redis",
            id="worker-redis",
        ),
        pytest.param(
            ("worker", f"{APP}:plain", "--burst", "--metrics-port", "0"),
            "prometheus_client",
            "web",
            id="worker-metrics",
        ),
        pytest.param(("dashboard", "--broker", "memory://"), "fastapi", "web", id="dashboard"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it_and_exit_code_2(
    command: tuple[str, ...], module: str, extra: str, tmp_path: Path
) -> None:
    # Given an environment where importing the extra's package fails, as if not installed
    (tmp_path / module).mkdir()
    (tmp_path / module / "__init__.py").write_text(f"raise ImportError('no {module} here')\n")

    finished = katana(*command, shadow=tmp_path)

    assert_one_line_error(finished, 2, f"pip install 'katana-task-queue[{extra}]'")


# -- credentials never show ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(
            "redis://127.0.0.1:1/0?password=s3cret",
            "redis://127.0.0.1:1/0?password=***",
            id="query-password",
        ),
        pytest.param(
            "redis://127.0.0.1:1/0?username=bob&password=s3cret",
            "redis://127.0.0.1:1/0?username=bob&password=***",
            id="query-username-and-password",
        ),
        pytest.param(
            "redis://bob:s3cret@127.0.0.1:1/0", "redis://bob:***@127.0.0.1:1/0", id="userinfo"
        ),
        pytest.param(
            "rediss://127.0.0.1:1/0?ssl_password=s3cret",
            "rediss://127.0.0.1:1/0?ssl_password=***",
            id="ssl-password",
        ),
    ],
)
def test_an_unreachable_broker_is_one_line_with_every_credential_masked(
    url: str, shown: str
) -> None:
    finished = katana("info", "--broker", url)

    line = assert_one_line_error(finished, 1, shown, "unreachable")
    assert "s3cret" not in finished.stdout + line


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis://127.0.0.1:notaport/0?password=s3cret", id="bad-port"),
        pytest.param("redis://:s3cret@127.0.0.1:6379/notadb", id="bad-db"),
        pytest.param("mysql://root:s3cret@db/0", id="unknown-scheme"),
        pytest.param("redis://:s3c#ret@127.0.0.1:6379/0", id="unescaped-hash-in-password"),
    ],
)
def test_a_bad_url_is_reported_with_its_credentials_masked(url: str) -> None:
    finished = katana("info", "--broker", url)

    assert finished.returncode == 2, finished.stderr
    assert "s3c" not in finished.stderr
    assert "Traceback" not in finished.stderr


def test_the_worker_banner_masks_a_query_password(tmp_path: Path) -> None:
    with RedisServers() as servers:
        server = servers.new()
        url = f"{server.url}?password=s3cret"
        # A server without requirepass ignores the password: the worker runs and says where
        finished = katana("worker", f"{APP}:plain", "--broker", url, "--burst")

    assert "s3cret" not in finished.stderr
    assert f"RedisBroker {server.url}?password=*** (from --broker)" in finished.stderr


# -- KATANA_BROKER_URL replaces the connection only ------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[str]:
    """A Redis of the test's own: a worker on the wrong queue can take no one else's task."""
    with RedisServers() as servers:
        yield servers.new().url


def _stored(url: str, queue: str, task_id: str) -> Task | None:
    async def get() -> Task | None:
        async with RedisBroker(url, queue=queue) as broker:
            return await broker.get_task(task_id)

    return asyncio.run(get())


def _enqueue(url: str, queue: str) -> Task:
    async def put() -> Task:
        async with RedisBroker(url, queue=queue) as broker:
            task = Task(name="send_email", priority=0, payload={"to": "ann@example.com"})
            await broker.enqueue(task)
            return task

    return asyncio.run(put())


def test_katana_broker_url_keeps_the_apps_queue_for_the_worker(
    private_redis: str, queue_name: str
) -> None:
    # Given the app's broker on queue `queue_name`, and a task waiting there
    task = _enqueue(private_redis, queue_name)

    # When a worker runs with the URL from the environment (the README's own line)
    finished = katana(
        "worker",
        f"{APP}:on_redis",
        "--burst",
        env={"KATANA_BROKER_URL": private_redis, "KATANA_TEST_APP_QUEUE": queue_name},
    )

    # Then it served the app's queue, and its banner says where each setting came from
    assert finished.returncode == 0, finished.stderr
    assert f"RedisBroker {private_redis} (from KATANA_BROKER_URL)" in finished.stderr
    assert f"queue:       {queue_name} (from the app)" in finished.stderr
    done = _stored(private_redis, queue_name, task.id)
    assert done is not None
    assert done.status is TaskStatus.COMPLETED


def test_queue_overrides_the_apps_queue(private_redis: str, queue_name: str) -> None:
    other = f"{queue_name}-other"
    task = _enqueue(private_redis, other)

    finished = katana(
        "worker",
        f"{APP}:on_redis",
        "--burst",
        "--queue",
        other,
        env={"KATANA_BROKER_URL": private_redis, "KATANA_TEST_APP_QUEUE": queue_name},
    )

    assert finished.returncode == 0, finished.stderr
    assert f"queue:       {other} (from --queue)" in finished.stderr
    done = _stored(private_redis, other, task.id)
    assert done is not None
    assert done.status is TaskStatus.COMPLETED


def test_katana_broker_url_keeps_the_apps_queue_for_enqueue(
    private_redis: str, queue_name: str
) -> None:
    finished = katana(
        "enqueue",
        "send_email",
        "--app",
        f"{APP}:on_redis",
        env={"KATANA_BROKER_URL": private_redis, "KATANA_TEST_APP_QUEUE": queue_name},
    )

    assert finished.returncode == 0, finished.stderr
    task_id = finished.stdout.strip()
    stored = _stored(private_redis, queue_name, task_id)
    assert stored is not None
    assert stored.status is TaskStatus.PENDING
    assert _stored(private_redis, "default", task_id) is None


def test_queue_without_a_broker_is_refused_by_the_worker() -> None:
    finished = katana("worker", f"{APP}:plain", "--queue", "images", "--burst")

    assert finished.returncode == 2, finished.stderr
    assert "--queue picks a queue of --broker" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_an_empty_broker_option_leaves_the_apps_broker_and_the_banner_says_so() -> None:
    finished = katana("worker", f"{APP}:plain", "--broker", "", "--burst")

    assert finished.returncode == 0, finished.stderr
    assert "InMemoryBroker memory:// (from the app)" in finished.stderr
    assert "queue:       default (from the app)" in finished.stderr


def test_info_on_memory_shows_the_queue_it_was_given() -> None:
    finished = katana("info", "--broker", "memory://", "--queue", "emails")

    assert finished.returncode == 0, finished.stderr
    assert "queue emails" in finished.stdout
    assert "queue default" not in finished.stdout


def test_a_bad_queue_name_on_memory_is_one_line_and_exit_code_2() -> None:
    finished = katana("info", "--broker", "memory://", "--queue", "e mails")

    assert_one_line_error(finished, 2, "queue name must match")


def test_info_watch_into_a_pipe_prints_one_snapshot_per_interval() -> None:
    # Given `katana info --watch` whose standard output is a pipe, not a terminal
    env = {key: value for key, value in os.environ.items() if key != "KATANA_BROKER_URL"}
    command = [sys.executable, "-m", "katana.task_queue.cli", "info", "--watch"]
    options = ["--interval", "0.1", "--broker", "memory://", "--queue", "piped"]
    process = subprocess.Popen(
        [*command, *options], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    seen = ""
    try:
        # When we read what it writes, up to a deadline
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            # Well inside the test's timeout: a silent command fails the assertion below
            deadline = time.monotonic() + RUN_SECONDS / 4
            while seen.count("queue piped") < 2 and time.monotonic() < deadline:
                if selector.select(timeout=deadline - time.monotonic()):
                    line = process.stdout.readline()
                    if not line:
                        break
                    seen += line
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=RUN_SECONDS)

    # Then it printed a snapshot, and another one after the interval
    assert seen.count("queue piped") >= 2, seen
    assert "\x1b[" not in seen  # plain text, no cursor movement

"""The admin commands (`katana info`, `enqueue`, `task`, ...) on in-memory and Redis queues."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import pytest
from click.testing import CliRunner, Result

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.cli import main
from katana.task_queue.listing import WorkerInfo
from katana.task_queue.models import TaskStatus, utcnow
from katana.task_queue.service import TaskQueueService

from . import admin_app
from ._processes import REPO_ROOT, read_until

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.models import Task

#: The module as this test imported it (its name depends on how pytest found it).
_T = TypeVar("_T")

APP = f"{admin_app.__name__}:service"


def katana(*args: str, input: str | None = None) -> Result:
    """Run ``katana *args`` in this process (never with the caller's KATANA_BROKER_URL)."""
    return CliRunner(env={"KATANA_BROKER_URL": None}).invoke(main, list(args), input=input)


def stored(broker: AbstractBroker, task_id: str) -> Task:
    async def get() -> Task | None:
        await broker.connect()
        return await broker.get_task(task_id)

    task = asyncio.run(get())
    assert task is not None, f"task {task_id} is not in the broker"
    return task


def run_workers_until_idle(service: TaskQueueService) -> None:
    async def run() -> None:
        await service.broker.connect()
        service.start_workers(2)
        await service.wait_idle(timeout=10)
        await service.shutdown(timeout=5)

    asyncio.run(run())


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# -- an app's in-memory queue (--app) ------------------------------------------------------


@pytest.fixture
def memory_app() -> Iterator[admin_app.KeptOpenBroker]:
    broker = admin_app.KeptOpenBroker()
    admin_app.BROKER = broker
    yield broker
    admin_app.BROKER = None
    asyncio.run(broker.close_for_real())


def test_enqueue_prints_the_id_of_the_task_it_stored(
    memory_app: admin_app.KeptOpenBroker,
) -> None:
    result = katana(
        "enqueue", "send_email", "--payload", '{"to": "ann@example.com", "n": [1, "ü"]}',
        "--priority", "3", "--delay", "60", "--max-retries", "2", "--app", APP,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    task_id = result.stdout.strip()
    task = stored(memory_app, task_id)
    assert (task.name, task.payload) == ("send_email", {"to": "ann@example.com", "n": [1, "ü"]})
    assert (task.priority, task.max_retries, task.status) == (3, 2, TaskStatus.PENDING)
    assert timedelta(seconds=59) < task.scheduled_at - task.created_at <= timedelta(seconds=60)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"to": ', "not valid JSON"),
        ("[1, 2]", "must be a JSON object ({...}), got a JSON list"),
        ("NaN", "not valid JSON"),
    ],
)
def test_enqueue_refuses_a_payload_that_is_not_a_json_object_with_exit_code_2(
    memory_app: admin_app.KeptOpenBroker, payload: str, message: str
) -> None:
    result = katana("enqueue", "send_email", "--payload", payload, "--app", APP)

    assert result.exit_code == 2
    assert "Invalid value for --payload" in result.stderr
    assert message in result.stderr
    no_traceback(result)
    assert asyncio.run(memory_app.count_by_status())[TaskStatus.PENDING] == 0


def test_enqueue_checks_the_name_against_the_app(memory_app: admin_app.KeptOpenBroker) -> None:
    result = katana("enqueue", "send_emial", "--app", APP)

    assert result.exit_code == 2
    assert "no executor is registered for task name 'send_emial'" in result.stderr
    assert "registered: fail, send_email, welcome" in result.stderr
    no_traceback(result)


def test_task_shows_the_detail_and_json_of_a_failed_task(
    memory_app: admin_app.KeptOpenBroker,
) -> None:
    # Given a task that failed
    task_id = katana("enqueue", "fail", "--payload", '{"n": 7}', "--app", APP).stdout.strip()
    run_workers_until_idle(admin_app.service())

    # When it is looked at
    text = katana("task", task_id, "--app", APP)
    as_json = katana("task", task_id, "--json", "--app", APP)

    # Then both show its status, payload, error and traceback
    assert text.exit_code == 0, text.output
    assert f"id:         {task_id}" in text.stdout
    assert "status:     FAILED" in text.stdout
    assert 'payload:    {"n":7}' in text.stdout
    assert "error:      ValueError: bad input 7" in text.stdout
    assert "traceback:" in text.stdout
    assert 'raise ValueError(f"bad input' in text.stdout
    detail: dict[str, Any] = orjson.loads(as_json.stdout)
    assert detail["id"] == task_id
    assert (detail["status"], detail["attempts"], detail["payload"]) == ("FAILED", 1, {"n": 7})
    assert detail["error"] == "ValueError: bad input 7"
    assert "Traceback (most recent call last)" in detail["traceback"]
    assert detail["finished_at"] is not None


def test_task_with_an_unknown_id_says_so_and_exits_1(
    memory_app: admin_app.KeptOpenBroker,
) -> None:
    result = katana("task", "0123abcd", "--app", APP)

    assert result.exit_code == 1
    assert result.stderr == "Error: no task has id '0123abcd'\n"


def test_retry_and_cancel_report_each_id_and_exit_1_if_any_was_skipped(
    memory_app: admin_app.KeptOpenBroker,
) -> None:
    # Given a failed task, a completed one and a delayed one
    failed = katana("enqueue", "fail", "--app", APP).stdout.strip()
    completed = katana("enqueue", "send_email", "--app", APP).stdout.strip()
    run_workers_until_idle(admin_app.service())
    delayed = katana("enqueue", "send_email", "--delay", "3600", "--app", APP).stdout.strip()

    # When the failed one is retried, and all three are cancelled
    retried = katana("retry", failed, "--app", APP)
    cancelled = katana("cancel", delayed, completed, "nope", "--app", APP)

    # Then each id is reported, and the effects are in the broker
    assert retried.exit_code == 0
    assert retried.stdout == f"retried {failed}\n"
    assert stored(memory_app, failed).status is TaskStatus.PENDING
    assert cancelled.exit_code == 1
    assert cancelled.stdout.splitlines() == [
        f"cancelled {delayed}",
        f"skipped {completed}: task {completed} already finished (COMPLETED)",
        "skipped nope: no task has id 'nope'",
    ]
    assert stored(memory_app, delayed).status is TaskStatus.CANCELLED
    assert stored(memory_app, completed).status is TaskStatus.COMPLETED


def test_retry_of_a_task_whose_unique_key_another_task_holds_is_skipped_in_one_line(
    memory_app: admin_app.KeptOpenBroker,
) -> None:
    # Given task A failed holding key K, and task B holds K now
    async def given() -> tuple[str, str]:
        app = admin_app.service()
        first = await app.add_task("send_email", unique_key="K")
        claimed = await memory_app.dequeue(timeout=0)
        assert claimed is not None
        assert await memory_app.mark_failed(first.id, "boom", claim_token=claimed.claim_token)
        second = await app.add_task("send_email", unique_key="K")
        return first.id, second.id

    first, second = asyncio.run(given())

    # When A is retried, Then it is skipped with the reason, and stays FAILED
    result = katana("retry", first, "--app", APP)

    assert result.exit_code == 1
    assert result.stdout == (
        f"skipped {first}: task {first} cannot run again: unfinished task {second} holds its "
        "unique key\n"
    )
    no_traceback(result)
    assert stored(memory_app, first).status is TaskStatus.FAILED


def test_purge_asks_first_and_deletes_only_the_matching_dead_letters(
    memory_app: admin_app.KeptOpenBroker,
) -> None:
    # Given three failed tasks, one of them matching "n=1", and a completed one
    failed = [
        katana("enqueue", "fail", "--payload", f'{{"n": {n}}}', "--app", APP).stdout.strip()
        for n in (1, 2, 3)
    ]
    completed = katana("enqueue", "send_email", "--app", APP).stdout.strip()
    run_workers_until_idle(admin_app.service())

    # When purge is declined, then accepted with a text filter
    declined = katana("purge", "--app", APP, input="n\n")
    filtered = katana("purge", "--text", "bad input 1", "--app", APP, input="y\n")

    # Then nothing went on the first, and only the match on the second
    assert declined.exit_code == 1
    assert "Delete 3 FAILED and DEAD task(s) in queue default? [y/N]: n" in declined.output
    assert "Aborted!" in declined.output
    assert "matching the filter" in filtered.output
    assert filtered.exit_code == 0, filtered.output
    assert filtered.stdout.endswith("deleted 1 task(s)\n")
    assert asyncio.run(memory_app.get_task(failed[0])) is None
    assert stored(memory_app, failed[1]).status is TaskStatus.FAILED

    # And with --yes and a status it does not ask
    done = katana("purge", "--status", "completed", "--yes", "--app", APP)
    assert done.stdout == "deleted 1 task(s)\n"
    assert asyncio.run(memory_app.get_task(completed)) is None
    nothing = katana("purge", "--status", "CANCELLED", "--app", APP)
    assert nothing.stdout == "no task matches: nothing to do\n"


def test_redrive_queues_the_dead_letters_again(memory_app: admin_app.KeptOpenBroker) -> None:
    failed = [katana("enqueue", "fail", "--app", APP).stdout.strip() for _ in range(2)]
    run_workers_until_idle(admin_app.service())

    result = katana("redrive", "--name", "fail", "--yes", "--app", APP)

    assert result.exit_code == 0, result.output
    assert result.stdout == "queued again 2 task(s)\n"
    assert {stored(memory_app, task_id).status for task_id in failed} == {TaskStatus.PENDING}


def test_a_command_without_a_queue_is_a_usage_error() -> None:
    result = katana("info")

    assert result.exit_code == 2
    assert "Give --broker URL (or set KATANA_BROKER_URL), or --app module:attr" in result.stderr


# -- Redis (--broker, --queue) --------------------------------------------------------------


@dataclass(frozen=True)
class RedisQueue:
    """The test's own queue on the test Redis; each check opens its own broker, since a broker
    belongs to the event loop it was used in and each CLI run or check has its own loop."""

    url: str
    name: str

    def broker(self) -> RedisBroker:
        return RedisBroker(self.url, queue=self.name)

    def check(self, action: Callable[[RedisBroker], Awaitable[_T]]) -> _T:
        async def run() -> _T:
            broker = self.broker()
            try:
                return await action(broker)
            finally:
                await broker.close()

        return asyncio.run(run())

    def katana(self, *args: str, input: str | None = None) -> Result:
        return katana(*args, "--broker", self.url, "--queue", self.name, input=input)

    def run_workers_until_idle(self) -> None:
        service = TaskQueueService(self.broker(), admin_app.EXECUTORS)

        async def run() -> None:
            try:
                service.start_workers(2)
                await service.wait_idle(timeout=10)
                await service.shutdown(timeout=5)
            finally:
                await service.broker.close()

        asyncio.run(run())


@pytest.fixture
def redis_queue(redis_url: str, queue_name: str) -> Iterator[RedisQueue]:
    queue = RedisQueue(redis_url, queue_name)
    yield queue
    queue.check(RedisBroker.purge)


def test_info_shows_counts_oldest_age_pause_and_workers_on_redis(redis_queue: RedisQueue) -> None:
    # Given two pending tasks, a completed and a failed one, a paused queue and a worker record
    redis_queue.katana("enqueue", "send_email")
    redis_queue.katana("enqueue", "fail")
    redis_queue.run_workers_until_idle()
    redis_queue.katana("enqueue", "send_email")
    redis_queue.katana("enqueue", "send_email", "--delay", "600")
    now = utcnow()
    worker = WorkerInfo(id="w1", host="box-17", pid=4242, queue=redis_queue.name, concurrency=8,
                        current_task_ids=["abc123"], started_at=now, last_seen_at=now,
                        expires_at=now + timedelta(minutes=1), processed=99)  # fmt: skip
    redis_queue.check(lambda broker: broker.record_worker(worker))
    assert redis_queue.katana("pause").stdout.startswith(f"queue {redis_queue.name} paused")

    # When
    result = redis_queue.katana("info")

    # Then
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.replace("│", " ").split()) for line in result.stdout.splitlines()]
    assert f"queue {redis_queue.name} (paused)" in lines
    for row in ["PENDING 2", "PROCESSING 0", "COMPLETED 1", "FAILED 1", "CANCELLED 0", "DEAD 0"]:
        assert row in lines
    assert "paused yes" in lines
    assert "finished this minute 2" in lines
    assert "workers (1)" in lines
    assert any(
        line.startswith("box-17 4242 8 99 ") and line.endswith(" ago abc123") for line in lines
    )
    assert redis_queue.check(RedisBroker.is_paused)

    # And resume unpauses it
    assert redis_queue.katana("resume").exit_code == 0
    assert not redis_queue.check(RedisBroker.is_paused)


def test_enqueue_task_retry_and_purge_on_redis(redis_queue: RedisQueue) -> None:
    # Given a task enqueued through the CLI that failed in a worker
    task_id = redis_queue.katana("enqueue", "fail", "--payload", '{"n": 5}').stdout.strip()
    redis_queue.run_workers_until_idle()

    # When it is looked at, retried, looked at again and purged
    failed = orjson.loads(redis_queue.katana("task", task_id, "--json").stdout)
    retried = redis_queue.katana("retry", task_id, "missing")
    pending = orjson.loads(redis_queue.katana("task", task_id, "--json").stdout)
    cancelled = redis_queue.katana("cancel", task_id)
    purged = redis_queue.katana("purge", "--status", "CANCELLED", input="y\n")

    # Then
    assert (failed["status"], failed["error"]) == ("FAILED", "ValueError: bad input 5")
    assert retried.exit_code == 1
    assert retried.stdout.splitlines() == [
        f"retried {task_id}",
        "skipped missing: no task has id 'missing'",
    ]
    assert (pending["status"], pending["payload"]) == ("PENDING", {"n": 5})
    assert [entry["error"] for entry in pending["errors"]] == ["ValueError: bad input 5"]
    assert cancelled.stdout == f"cancelled {task_id}\n"
    assert f"Delete 1 CANCELLED task(s) in queue {redis_queue.name}?" in purged.output
    assert purged.stdout.endswith("deleted 1 task(s)\n")
    assert redis_queue.check(lambda broker: broker.get_task(task_id)) is None


def test_an_unreachable_broker_is_one_line_with_the_password_masked() -> None:
    result = katana("info", "--broker", "redis://:hunter2@127.0.0.1:1/0")

    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: Redis at redis://:***@127.0.0.1:1/0 is unreachable")
    assert "hunter2" not in result.output
    no_traceback(result)


def test_info_watch_refreshes_until_ctrl_c(redis_queue: RedisQueue) -> None:
    # Given `katana info --watch` running as if in a terminal
    env = {**os.environ, "TTY_INTERACTIVE": "1", "TTY_COMPATIBLE": "1", "COLUMNS": "100"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "katana.task_queue.cli", "info", "--watch", "--interval", "0.1",
         "--broker", redis_queue.url, "--queue", redis_queue.name],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        # A shell may start children with SIGINT ignored; Ctrl-C must reach this one.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert watch.stdout is not None
    try:
        # When a task arrives while it watches
        first = read_until(watch.stdout, b"PENDING", timeout=20)
        redis_queue.katana("enqueue", "send_email")
        deadline = time.monotonic() + 10
        seen = first
        while b"1 \xe2\x94\x82" not in seen.split(b"PENDING")[-1][:40]:
            assert time.monotonic() < deadline, f"the count never moved: {seen[-2000:]!r}"
            seen += read_until(watch.stdout, b"PENDING", timeout=5)

        # Then Ctrl-C ends it cleanly
        watch.send_signal(signal.SIGINT)
        rest, _ = watch.communicate(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 0, rest.decode(errors="replace")[-2000:]
    assert b"Traceback" not in seen + rest


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("socket_timeout=abc", "invalid socket_timeout in the Redis URL: 'abc'"),
        ("max_connections=0", "max_connections must be an int >= 1"),
    ],
)
def test_a_bad_redis_url_setting_is_one_line_and_exit_code_2(query: str, message: str) -> None:
    result = katana("info", "--broker", f"redis://:s3cret@127.0.0.1:6379/0?{query}")

    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1
    assert message in result.stderr
    assert "s3cret" not in result.output
    no_traceback(result)

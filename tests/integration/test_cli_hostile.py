"""The ``katana`` command given hostile bytes and numbers, in a subprocess: undecodable
arguments, NaN durations and integers JSON cannot carry are one ``Error:`` line and exit code 2,
never a traceback, a busy loop or a silently changed payload."""

from __future__ import annotations

import asyncio
import os

import pytest

from katana.task_queue.broker.redis import RedisBroker

from .test_cli_edges import APP, assert_one_line_error, katana

#: What the shell passes for $'\xff': a byte that is not UTF-8 (Python sees "\udcff").
NOT_UTF8 = os.fsdecode(b"\xff")
BIG_INT_PAYLOAD = '{"a": 123456789012345678901234567890}'


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(("task", NOT_UTF8), "'TASK_ID'", id="task"),
        pytest.param(("cancel", NOT_UTF8), "'TASK_IDS...'", id="cancel"),
        pytest.param(("retry", NOT_UTF8), "'TASK_IDS...'", id="retry"),
        pytest.param(("purge", "--text", NOT_UTF8, "--yes"), "'--text'", id="purge-text"),
        pytest.param(("purge", "--name", NOT_UTF8, "--yes"), "'--name'", id="purge-name"),
        pytest.param(("redrive", "--name", NOT_UTF8, "--yes"), "'--name'", id="redrive-name"),
        pytest.param(("enqueue", NOT_UTF8), "'NAME'", id="enqueue-name"),
        pytest.param(("info", "--queue", NOT_UTF8), "'--queue'", id="queue"),
    ],
)
def test_an_undecodable_argument_is_one_line_and_exit_code_2(
    args: tuple[str, ...], fragment: str, redis_url: str
) -> None:
    finished = katana(*args, "--broker", redis_url)

    assert_one_line_error(finished, 2, fragment, "not valid text")


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("info",), id="info"),
        pytest.param(("worker", f"{APP}:plain", "--burst"), id="worker"),
        pytest.param(("dashboard",), id="dashboard"),
    ],
)
def test_an_undecodable_broker_url_is_one_line_and_its_password_never_shows(
    command: tuple[str, ...],
) -> None:
    url = f"redis://127.0.0.1:6379/0?password=s3cret{NOT_UTF8}"

    finished = katana(*command, "--broker", url)

    line = assert_one_line_error(finished, 2, "'--broker'", "not valid text")
    assert "s3cret" not in line


def test_an_undecodable_worker_app_is_one_line_and_exit_code_2() -> None:
    finished = katana("worker", NOT_UTF8, "--burst")

    assert_one_line_error(finished, 2, "'APP'", "not valid text")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf"])
def test_a_shutdown_timeout_that_is_not_finite_is_refused(value: str) -> None:
    finished = katana("worker", f"{APP}:plain", "--shutdown-timeout", value, "--burst")

    assert_one_line_error(finished, 2, "'--shutdown-timeout'", "not a finite number of seconds")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_watch_interval_that_is_not_finite_is_refused(value: str, redis_url: str) -> None:
    finished = katana("info", "--watch", "--interval", value, "--broker", redis_url)

    assert_one_line_error(finished, 2, "'--interval'", "not a finite number of seconds")


def test_a_delay_that_is_not_finite_is_refused(redis_url: str) -> None:
    finished = katana("enqueue", "noop", "--delay", "nan", "--broker", redis_url)

    assert_one_line_error(finished, 2, "'--delay'", "not a finite number of seconds")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        pytest.param(BIG_INT_PAYLOAD, "Integer exceeds 64-bit range", id="big-int"),
        pytest.param('{"a": -123456789012345678901234567890}', "64-bit", id="big-negative"),
        pytest.param('{"a": [NaN]}', "NaN is not JSON", id="nested-nan"),
        pytest.param('{"a": "\\ud800"}', "not JSON-serializable", id="lone-surrogate"),
    ],
)
def test_a_payload_json_cannot_carry_exactly_is_refused_and_nothing_is_stored(
    payload: str, fragment: str, redis_url: str, queue_name: str
) -> None:
    finished = katana(
        "enqueue", "noop", "--payload", payload, "--broker", redis_url, "--queue", queue_name
    )

    assert_one_line_error(finished, 2, "--payload", fragment)

    async def stored() -> int:
        async with RedisBroker(redis_url, queue=queue_name) as broker:
            return sum((await broker.count_by_status()).values())

    assert asyncio.run(stored()) == 0

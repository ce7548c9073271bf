"""Retries with backoff, Retry, retry_on and timeouts: the same on every broker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING, Any

import pytest

from katana.task_queue._validation import MAX_DELAY_SECONDS
from katana.task_queue.config import RetryPolicy
from katana.task_queue.errors import MAX_RETRY_DELAY_SECONDS, InvalidTaskError, Retry
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService

from ._clockwork import RetryLog, finish

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

GUARD_SECONDS = 30.0
#: Retry delays: small enough to keep the suite quick, exact because jitter is off.
FAST = RetryPolicy(max_retries=5, backoff_base_seconds=0.05, backoff_max_seconds=0.15, jitter=False)


@pytest.fixture
async def service(broker: AbstractBroker, clock: FakeClock) -> AsyncIterator[TaskQueueService]:
    service = TaskQueueService(broker=broker, clock=clock)
    yield service
    await service.shutdown(timeout=1)


async def run_to_idle(service: TaskQueueService, task: Task) -> Task:
    """Run a task that is not retried (no clock to move)."""
    service.start_workers(2)
    await service.wait_idle(timeout=GUARD_SECONDS)
    done = await service.get_task(task.id)
    assert done is not None
    return done


async def test_a_task_failing_twice_then_succeeding_completes_on_the_third_attempt(
    service: TaskQueueService, clock: FakeClock, retries: RetryLog
) -> None:
    starts: list[float] = []

    async def flaky(task: Task) -> str:
        starts.append(clock())
        if len(starts) < 3:
            raise ConnectionError(f"attempt {task.attempts} failed")
        return "done"

    # Given a task that fails twice, registered with up to 3 retries
    service.register("flaky", flaky, retry=FAST)
    task = await service.add_task("flaky", max_retries=3)

    # When the workers run it, the test moving the clock to each retry
    done = await finish(service, clock, retries, task)

    # Then it completed on attempt 3, with both failures kept
    assert (done.status, done.attempts, done.result) == (TaskStatus.COMPLETED, 3, "done")
    assert [entry["attempt"] for entry in done.errors] == [1, 2]
    assert [entry["error"] for entry in done.errors] == [
        "ConnectionError: attempt 1 failed",
        "ConnectionError: attempt 2 failed",
    ]
    assert all("ConnectionError" in (entry["traceback"] or "") for entry in done.errors)
    # ...after delays that doubled and stayed under the cap, and were never cut short
    assert retries.delays == [0.05, 0.1]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= delay for gap, delay in zip(gaps, retries.delays, strict=True))


async def test_a_task_that_always_fails_ends_failed_after_one_plus_max_retries_attempts(
    service: TaskQueueService, clock: FakeClock, retries: RetryLog
) -> None:

    async def broken(task: Task) -> None:
        raise ValueError(f"attempt {task.attempts}")

    service.register("broken", broken, retry=FAST)
    task = await service.add_task("broken", max_retries=4)

    done = await finish(service, clock, retries, task)

    assert (done.status, done.attempts) == (TaskStatus.FAILED, 5)
    assert done.error == "ValueError: attempt 5"
    assert [entry["attempt"] for entry in done.errors] == [1, 2, 3, 4, 5]
    assert retries.delays == [0.05, 0.1, 0.15, 0.15]  # capped


async def test_jittered_delays_stay_within_their_bounds(
    service: TaskQueueService, clock: FakeClock, retries: RetryLog
) -> None:

    async def broken(task: Task) -> None:
        raise ValueError("no")

    policy = RetryPolicy(max_retries=4, backoff_base_seconds=0.02, backoff_max_seconds=0.05)
    service.register("broken", broken, retry=policy)
    done = await finish(service, clock, retries, await service.add_task("broken"))

    assert (done.status, done.attempts) == (TaskStatus.FAILED, 5)
    bounds = [0.02, 0.04, 0.05, 0.05]
    delays = retries.delays
    assert len(delays) == len(bounds)
    assert all(0 <= delay <= bound for delay, bound in zip(delays, bounds, strict=True))


async def test_retry_asks_for_another_attempt_after_its_delay(
    service: TaskQueueService, clock: FakeClock, retries: RetryLog
) -> None:

    async def not_yet(task: Task) -> int:
        if task.attempts == 1:
            raise Retry("the report is not ready", delay_seconds=0.07)
        return task.attempts

    service.register("not_yet", not_yet, retry=FAST)
    done = await finish(service, clock, retries, await service.add_task("not_yet"))

    assert (done.status, done.result) == (TaskStatus.COMPLETED, 2)
    assert retries.delays == [0.07]
    assert done.errors[0]["error"] == "Retry: the report is not ready"


async def test_retry_without_retries_left_fails_the_task(
    service: TaskQueueService, clock: FakeClock, retries: RetryLog
) -> None:
    async def again(task: Task) -> None:
        raise Retry(delay_seconds=0)

    service.register("again", again, retry=FAST)
    done = await finish(service, clock, retries, await service.add_task("again", max_retries=1))

    assert (done.status, done.attempts) == (TaskStatus.FAILED, 2)
    assert done.error == "Retry: the executor asked to run again"


async def test_only_the_listed_exception_types_are_retried(service: TaskQueueService) -> None:
    async def wrong_key(task: Task) -> None:
        raise KeyError("missing")

    policy = RetryPolicy(max_retries=3, backoff_base_seconds=0.01, retry_on=(ConnectionError,))
    service.register("wrong_key", wrong_key, retry=policy)
    done = await run_to_idle(service, await service.add_task("wrong_key"))

    assert (done.status, done.attempts) == (TaskStatus.FAILED, 1)
    assert done.error == "KeyError: 'missing'"


async def test_a_long_task_is_stopped_at_its_timeout(service: TaskQueueService) -> None:
    loop = asyncio.get_running_loop()
    cancelled = asyncio.Event()

    async def slow(task: Task) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cancelled.set()

    # Given a 10 s task with a 0.5 s timeout
    service.register("slow", slow)
    task = await service.add_task("slow", timeout_seconds=0.5)

    # When it runs
    started = loop.time()
    done = await run_to_idle(service, task)

    # Then its coroutine was cancelled within a second and the attempt failed
    assert cancelled.is_set()
    assert loop.time() - started < 1.5
    assert (done.status, done.attempts) == (TaskStatus.FAILED, 1)
    assert done.error is not None
    assert done.error.startswith("TaskTimeoutError: the attempt ran longer than its timeout")


async def test_a_timed_out_attempt_is_retried_when_retries_remain(
    service: TaskQueueService, clock: FakeClock, retries: RetryLog
) -> None:
    async def slow_once(task: Task) -> str:
        if task.attempts == 1:
            await asyncio.sleep(10)
        return "second time lucky"

    service.register("slow_once", slow_once, retry=FAST, timeout_seconds=0.3)
    task = await service.add_task("slow_once", max_retries=1)
    done = await finish(service, clock, retries, task)

    assert (done.status, done.attempts, done.result) == (
        TaskStatus.COMPLETED,
        2,
        "second time lucky",
    )
    assert done.errors[0]["error"].startswith("TaskTimeoutError")


async def test_an_attempt_swallowing_its_timeout_still_fails_with_task_timeout_error(
    service: TaskQueueService,
) -> None:
    async def stubborn(task: Task) -> str:
        # A bug in the executor: it goes on as if nothing happened.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        return "finished anyway"

    service.register("stubborn", stubborn, timeout_seconds=0.1)
    done = await run_to_idle(service, await service.add_task("stubborn"))

    assert (done.status, done.attempts, done.result) == (TaskStatus.FAILED, 1, None)
    assert (done.error or "").startswith("TaskTimeoutError")


async def test_a_timeout_is_retried_only_when_the_policy_retries_timeout_errors(
    service: TaskQueueService, clock: FakeClock, retries: RetryLog
) -> None:
    # A timed-out attempt is a TaskTimeoutError (a TimeoutError), matched against retry_on
    # like any failure: the default policy (Exception) retries it, this one does not.
    async def slow(task: Task) -> None:
        await asyncio.sleep(10)

    policy = RetryPolicy(max_retries=3, backoff_base_seconds=0.01, retry_on=(ConnectionError,))
    service.register("slow", slow, retry=policy, timeout_seconds=0.1)
    done = await run_to_idle(service, await service.add_task("slow"))

    assert (done.status, done.attempts) == (TaskStatus.FAILED, 1)
    assert (done.error or "").startswith("TaskTimeoutError")
    assert retries.delays == []


async def test_an_executors_own_timeout_error_is_an_ordinary_failure(
    service: TaskQueueService,
) -> None:
    async def times_out_inside(task: Task) -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    service.register("inside", times_out_inside, timeout_seconds=5)
    done = await run_to_idle(service, await service.add_task("inside"))

    assert done.status is TaskStatus.FAILED
    assert done.error == "TimeoutError: "


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1001}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": float("nan")}, "timeout_seconds"),
        ({"timeout_seconds": "5"}, "timeout_seconds"),
    ],
)
async def test_invalid_retry_and_timeout_options_are_refused(
    service: TaskQueueService, options: dict[str, Any], message: str
) -> None:
    async def noop(task: Task) -> None:
        return None

    service.register("noop", noop)
    with pytest.raises(InvalidTaskError, match=message):
        await service.add_task("noop", **options)
    assert (await service.broker.count_by_status())[TaskStatus.PENDING] == 0


def test_retry_policies_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="backoff_base_seconds"):
        RetryPolicy(backoff_base_seconds=float("inf"))
    with pytest.raises(TypeError, match="retry_on"):
        RetryPolicy(retry_on=("ValueError",))  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(ValueError, match="delay_seconds"):
        Retry(delay_seconds=-1)


@pytest.mark.parametrize(
    "delay",
    [
        pytest.param(10**400, id="int-beyond-float"),
        pytest.param(1e15, id="beyond-timedelta"),
        pytest.param(30 * 24 * 3600 + 1, id="over-30-days"),
        pytest.param(float("nan"), id="nan"),
        pytest.param("5", id="str"),
    ],
)
def test_retry_refuses_a_delay_no_broker_can_schedule(delay: Any) -> None:
    with pytest.raises(ValueError, match="delay_seconds"):
        Retry(delay_seconds=delay)


def test_retry_allows_the_delays_add_task_allows() -> None:
    assert MAX_RETRY_DELAY_SECONDS == MAX_DELAY_SECONDS
    assert Retry(delay_seconds=MAX_DELAY_SECONDS).delay_seconds == MAX_DELAY_SECONDS
    assert Retry(delay_seconds=0).delay_seconds == 0


async def test_an_executor_asking_for_an_impossible_delay_fails_its_task(
    service: TaskQueueService,
) -> None:
    # Given an executor whose Retry asks for a delay beyond any date (it left the task
    # PROCESSING for good: the worker could not compute the due time)
    async def forever(task: Task) -> None:
        raise Retry(delay_seconds=10**400)

    # (retries remain, so a Retry is retried; other errors are not)
    service.register("forever", forever, retry=RetryPolicy(max_retries=3, retry_on=(KeyError,)))
    task = await service.add_task("forever")

    # When a worker runs it
    done = await run_to_idle(service, task)

    # Then the task failed with the reason, and nothing is left running
    assert done.status is TaskStatus.FAILED
    assert done.error is not None
    assert "delay_seconds" in done.error


async def test_a_result_json_cannot_hold_fails_the_task_and_the_worker_goes_on(
    service: TaskQueueService,
) -> None:
    async def huge(task: Task) -> int:
        return 2**70  # no JSON encoder takes it

    async def fine(task: Task) -> str:
        return "fine"

    service.register("huge", huge)
    service.register("fine", fine)
    bad = await service.add_task("huge")
    good = await service.add_task("fine")

    await run_to_idle(service, bad)

    failed, done = await service.get_task(bad.id), await service.get_task(good.id)
    assert failed is not None
    assert done is not None
    assert failed.status is TaskStatus.FAILED
    assert failed.error is not None
    assert "InvalidTaskError" in failed.error
    assert (done.status, done.result) == (TaskStatus.COMPLETED, "fine")


async def test_a_result_json_cannot_hold_fails_at_once_without_retries(
    service: TaskQueueService, retries: RetryLog
) -> None:
    runs: list[int] = []

    async def returns_a_set(task: Task) -> set[int]:
        runs.append(task.attempts)  # a side effect a retry would repeat
        return {1, 2}

    # Given an executor that returns what JSON cannot hold, with retries to spare
    service.register("returns_a_set", returns_a_set, retry=FAST)
    task = await service.add_task("returns_a_set", max_retries=3)

    # When it runs
    done = await run_to_idle(service, task)

    # Then it fails at once (a programming error: another attempt returns the same), and the
    # error names the type
    assert runs == [1]
    assert retries.delays == []
    assert (done.status, done.attempts) == (TaskStatus.FAILED, 1)
    assert done.error is not None
    assert done.error.startswith("InvalidTaskError: the executor's return value (set)")

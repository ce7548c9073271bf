"""TaskQueueService: adding tasks, running them on workers, and shutting down without loss."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.errors import InvalidTaskError, ServiceStateError, UnknownTaskError
from katana.task_queue.models import Task, TaskStatus, utcnow
from katana.task_queue.service import ServiceState, TaskQueueService

MakeService = Callable[[Mapping[str, Callable[[Task], Any]]], TaskQueueService]

#: Bounds for things that must happen eventually: generous, so a loaded machine is not flaky.
GUARD_SECONDS = 10.0
MiB = 1024 * 1024
THIRTY_DAYS = 30 * 24 * 3600


@pytest.fixture
async def broker() -> AsyncIterator[InMemoryBroker]:
    async with InMemoryBroker() as broker:
        yield broker


@pytest.fixture
async def make_service(broker: InMemoryBroker) -> AsyncIterator[MakeService]:
    """Builds services on the test's broker, and shuts each down afterwards."""
    services: list[TaskQueueService] = []

    def make(executors: Mapping[str, Callable[[Task], Any]]) -> TaskQueueService:
        service = TaskQueueService(broker=broker, task_executors=executors)
        services.append(service)
        return service

    yield make
    for service in services:
        await service.shutdown(timeout=1.0)


async def noop(task: Task) -> None:
    return None


async def all_zero(broker: InMemoryBroker) -> bool:
    return all(count == 0 for count in (await broker.count_by_status()).values())


async def stored(service: TaskQueueService, task_id: str) -> Task:
    task = await service.get_task(task_id)
    assert task is not None, f"task {task_id} is not in the broker"
    return task


async def let_workers_block() -> None:
    """Hand the loop over so freshly started workers reach their wait in ``dequeue``."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- add_task ----------------------------------------------------------------------------------


class TestAddTask:
    async def test_returns_the_created_task(self, make_service: MakeService) -> None:
        service = make_service({"send_email": noop})
        before = utcnow()

        task = await service.add_task(
            "send_email", payload={"to": "ada@example.com"}, priority=3, delay_seconds=5
        )

        after = utcnow()
        assert isinstance(task, Task)
        assert (task.name, task.payload, task.priority) == (
            "send_email",
            {"to": "ada@example.com"},
            3,
        )
        assert (task.status, task.attempts, task.claim_token) == (TaskStatus.PENDING, 0, None)
        assert re.fullmatch(r"[0-9a-f]{32}", task.id)
        assert before <= task.created_at <= after
        assert task.created_at.utcoffset() == timedelta(0)
        assert task.scheduled_at == task.created_at + timedelta(seconds=5)
        assert await stored(service, task.id) == task

    async def test_defaults(self, make_service: MakeService) -> None:
        service = make_service({"send_email": noop})

        task = await service.add_task("send_email")

        assert (task.payload, task.priority) == ({}, 0)
        assert task.scheduled_at == task.created_at
        assert await stored(service, task.id) == task

    async def test_every_task_gets_its_own_id(self, make_service: MakeService) -> None:
        service = make_service({"send_email": noop})

        tasks = [await service.add_task("send_email") for _ in range(100)]

        assert len({task.id for task in tasks}) == 100

    async def test_the_callers_payload_is_not_kept(self, make_service: MakeService) -> None:
        service = make_service({"send_email": noop})
        payload: dict[str, Any] = {"to": ["ada@example.com"]}

        task = await service.add_task("send_email", payload=payload)
        payload["to"].append("mallory@example.com")

        assert task.payload == {"to": ["ada@example.com"]}
        assert (await stored(service, task.id)).payload == {"to": ["ada@example.com"]}

    async def test_an_unregistered_name_raises_unknown_task_error(
        self, make_service: MakeService, broker: InMemoryBroker
    ) -> None:
        service = make_service({"send_email": noop})

        with pytest.raises(UnknownTaskError, match="'send_sms'") as caught:
            await service.add_task("send_sms")

        assert isinstance(caught.value, ValueError)  # what the seed promises
        assert await all_zero(broker)


class TestValidation:
    """Invalid arguments raise InvalidTaskError, a ValueError, and enqueue nothing."""

    @pytest.mark.parametrize(
        "priority",
        [
            pytest.param(True, id="bool"),
            pytest.param(False, id="bool-false"),
            pytest.param(1.0, id="float"),
            pytest.param("1", id="str"),
            pytest.param(None, id="none"),
            pytest.param(2**31, id="above-int32"),
            pytest.param(-(2**31) - 1, id="below-int32"),
        ],
    )
    async def test_bad_priority(
        self, make_service: MakeService, broker: InMemoryBroker, priority: Any
    ) -> None:
        service = make_service({"t": noop})

        with pytest.raises(InvalidTaskError, match="priority") as caught:
            await service.add_task("t", priority=priority)

        assert isinstance(caught.value, ValueError)
        assert await all_zero(broker)

    @pytest.mark.parametrize(
        "delay",
        [
            pytest.param(-1, id="negative"),
            pytest.param(-0.001, id="slightly-negative"),
            pytest.param(float("nan"), id="nan"),
            pytest.param(float("inf"), id="inf"),
            pytest.param(float("-inf"), id="-inf"),
            pytest.param(THIRTY_DAYS + 1, id="over-30-days"),
            pytest.param(10**400, id="int-beyond-float"),
            pytest.param(-(10**400), id="negative-int-beyond-float"),
            pytest.param(True, id="bool"),
            pytest.param("1", id="str"),
            pytest.param(None, id="none"),
        ],
    )
    async def test_bad_delay(
        self, make_service: MakeService, broker: InMemoryBroker, delay: Any
    ) -> None:
        service = make_service({"t": noop})

        with pytest.raises(InvalidTaskError, match="delay_seconds") as caught:
            await service.add_task("t", delay_seconds=delay)

        assert isinstance(caught.value, ValueError)
        assert await all_zero(broker)

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param([], id="list"),
            pytest.param("{}", id="str"),
            pytest.param((("a", 1),), id="tuple"),
            pytest.param({"a": float("nan")}, id="nan"),
            pytest.param({"a": float("inf")}, id="infinity"),
            pytest.param({"a": float("-inf")}, id="-infinity"),
            pytest.param({"a": {"b": [1, float("nan")]}}, id="nested-nan"),
            pytest.param({"a": (1, 2)}, id="tuple-value"),
            pytest.param({"a": datetime(2024, 1, 1, tzinfo=UTC)}, id="datetime"),
            pytest.param({"a": {1, 2}}, id="set"),
            pytest.param({1: "a"}, id="int-key"),
            pytest.param({("a",): "b"}, id="tuple-key"),
            pytest.param({"a": b"bytes"}, id="bytes"),
            pytest.param({"a": object()}, id="object"),
            pytest.param({"a": "x" * MiB}, id="over-1MiB"),
        ],
    )
    async def test_bad_payload(
        self, make_service: MakeService, broker: InMemoryBroker, payload: Any
    ) -> None:
        service = make_service({"t": noop})

        with pytest.raises(InvalidTaskError, match="payload") as caught:
            await service.add_task("t", payload=payload)

        assert isinstance(caught.value, ValueError)
        assert await all_zero(broker)

    @pytest.mark.parametrize(
        "timeout",
        [
            pytest.param(10**400, id="int-beyond-float"),
            pytest.param(-(10**400), id="negative-int-beyond-float"),
            pytest.param(0, id="zero"),
            pytest.param(float("nan"), id="nan"),
        ],
    )
    async def test_bad_timeout(
        self, make_service: MakeService, broker: InMemoryBroker, timeout: Any
    ) -> None:
        service = make_service({"t": noop})

        with pytest.raises(InvalidTaskError, match="timeout_seconds"):
            await service.add_task("t", timeout_seconds=timeout)
        with pytest.raises(InvalidTaskError, match="timeout_seconds"):
            service.register("u", noop, timeout_seconds=timeout)

        assert "u" not in service.task_names
        assert await all_zero(broker)

    @pytest.mark.parametrize(
        "name",
        [
            pytest.param("", id="empty"),
            pytest.param(None, id="none"),
            pytest.param(b"send", id="bytes"),
            pytest.param("\ud800bad", id="lone-surrogate"),
            pytest.param("bad\udfff", id="lone-low-surrogate"),
            pytest.param("n" * 201, id="over-200-chars"),
        ],
    )
    async def test_a_name_that_cannot_be_stored_is_refused_at_register(
        self, make_service: MakeService, name: Any
    ) -> None:
        service = make_service({})

        with pytest.raises(InvalidTaskError, match="task name") as caught:
            service.register(name, noop)

        assert isinstance(caught.value, ValueError)
        assert service.task_names == []
        assert len(str(caught.value)) < 400

    async def test_a_name_of_200_characters_with_any_unicode_is_accepted(
        self, make_service: MakeService
    ) -> None:
        name = "é😀" + "n" * 198
        service = make_service({name: noop})

        task = await service.add_task(name)

        assert task.name == name

    async def test_an_unknown_huge_name_is_not_echoed_whole(
        self, make_service: MakeService, broker: InMemoryBroker
    ) -> None:
        service = make_service({"send_email": noop})

        with pytest.raises(UnknownTaskError, match="send_email") as caught:
            await service.add_task("x" * 100_000)

        assert len(str(caught.value)) < 400
        assert await all_zero(broker)

    @pytest.mark.parametrize(
        ("priority", "delay"),
        [(2**31 - 1, 0), (-(2**31), 0.0), (0, THIRTY_DAYS), (0, 1), (0, 0.5)],
    )
    async def test_boundaries_are_accepted(
        self, make_service: MakeService, priority: int, delay: float
    ) -> None:
        service = make_service({"t": noop})

        task = await service.add_task("t", priority=priority, delay_seconds=delay)

        assert task.priority == priority
        assert task.scheduled_at == task.created_at + timedelta(seconds=delay)

    async def test_a_payload_of_exactly_1_mib_is_accepted(self, make_service: MakeService) -> None:
        service = make_service({"t": noop})
        payload = {"data": "x" * (MiB - len('{"data":""}'))}

        task = await service.add_task("t", payload=payload)

        assert (await stored(service, task.id)).payload == payload


# -- workers -----------------------------------------------------------------------------------


class TestWorkers:
    async def test_1000_tasks_on_8_workers_each_run_exactly_once(
        self, make_service: MakeService
    ) -> None:
        ran: list[str] = []
        workers: set[str] = set()

        async def record(task: Task) -> None:
            ran.append(task.id)
            current = asyncio.current_task()
            assert current is not None
            workers.add(current.get_name())
            await asyncio.sleep(0)  # let the other workers interleave

        # Given 500 tasks waiting, 8 workers, and 500 more tasks added while they run
        service = make_service({"record": record})
        first = [await service.add_task("record", {"n": n}) for n in range(500)]
        service.start_workers(8)
        second = await service.add_tasks([("record", {"n": n}) for n in range(500, 1000)])

        # When the queue drains
        await service.wait_idle(timeout=30)

        # Then every task ran once, spread over the workers
        counts = Counter(ran)
        assert set(counts.values()) == {1}
        assert set(counts) == {task.id for task in first + second}
        assert (await service.broker.count_by_status())[TaskStatus.COMPLETED] == 1000
        assert len(workers) > 1

    async def test_a_raising_executor_fails_the_task_and_the_worker_carries_on(
        self, make_service: MakeService
    ) -> None:
        async def explode(task: Task) -> None:
            raise ValueError(f"boom {task.payload['n']}")

        service = make_service({"explode": explode, "noop": noop})
        bad = await service.add_task("explode", {"n": 1}, priority=0)
        good = [await service.add_task("noop", priority=1) for _ in range(3)]

        service.start_workers(1)
        await service.wait_idle(timeout=GUARD_SECONDS)

        failed = await stored(service, bad.id)
        assert failed.status is TaskStatus.FAILED
        assert failed.error == "ValueError: boom 1"
        assert failed.traceback is not None
        assert failed.traceback.startswith("Traceback (most recent call last):")
        assert "in explode" in failed.traceback
        assert failed.traceback.rstrip().endswith("ValueError: boom 1")
        for task in good:
            assert (await stored(service, task.id)).status is TaskStatus.COMPLETED

    async def test_a_plain_function_executor_runs_in_a_thread(
        self, make_service: MakeService
    ) -> None:
        loop = asyncio.get_running_loop()
        entered = asyncio.Event()
        release = threading.Event()
        threads: list[int] = []

        def blocking(task: Task) -> str:
            threads.append(threading.get_ident())
            loop.call_soon_threadsafe(entered.set)
            if not release.wait(timeout=GUARD_SECONDS):
                raise TimeoutError("never released")
            return "from a thread"

        service = make_service({"blocking": blocking})
        task = await service.add_task("blocking")
        service.start_workers(1)
        try:
            # The loop keeps running while the executor blocks: it could not, on the loop thread
            async with asyncio.timeout(GUARD_SECONDS):
                await entered.wait()
        finally:
            release.set()
        await service.wait_idle(timeout=GUARD_SECONDS)

        assert threads
        assert threads[0] != threading.get_ident()
        done = await stored(service, task.id)
        assert (done.status, done.result) == (TaskStatus.COMPLETED, "from a thread")

    async def test_an_async_callable_object_executor_is_awaited(
        self, make_service: MakeService
    ) -> None:
        class Executor:
            async def __call__(self, task: Task) -> str:
                return "awaited"

        service = make_service({"callable": Executor()})
        task = await service.add_task("callable")

        service.start_workers(1)
        await service.wait_idle(timeout=GUARD_SECONDS)

        done = await stored(service, task.id)
        assert (done.status, done.error, done.result) == (TaskStatus.COMPLETED, None, "awaited")

    async def test_an_executor_raising_cancelled_error_does_not_stop_the_worker(
        self, make_service: MakeService
    ) -> None:
        good_done = asyncio.Event()

        async def cancelled_inside(task: Task) -> None:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future  # raises CancelledError here, though nobody cancels the worker

        async def good(task: Task) -> None:
            good_done.set()

        service = make_service({"cancelled_inside": cancelled_inside, "good": good})
        await service.add_task("cancelled_inside", priority=0)
        await service.add_task("good", priority=1)

        (worker,) = service.start_workers(1)
        waiting = asyncio.create_task(good_done.wait())
        await asyncio.wait(
            [waiting, worker], timeout=GUARD_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        waiting.cancel()

        assert not worker.done(), "the worker stopped"
        assert good_done.is_set()

    async def test_the_return_value_is_stored_as_the_result(
        self, make_service: MakeService
    ) -> None:
        async def add(task: Task) -> dict[str, Any]:
            return {"sum": task.payload["a"] + task.payload["b"], "inputs": [1, "two", None]}

        service = make_service({"add": add})
        task = await service.add_task("add", {"a": 1, "b": 2})

        service.start_workers(1)
        await service.wait_idle(timeout=GUARD_SECONDS)

        done = await stored(service, task.id)
        assert done.status is TaskStatus.COMPLETED
        assert done.result == {"sum": 3, "inputs": [1, "two", None]}

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param({1, 2}, id="set"),
            pytest.param(datetime(2024, 1, 1, tzinfo=UTC), id="datetime"),
            pytest.param((1, 2), id="tuple"),
            pytest.param(float("nan"), id="nan"),
            pytest.param({"a": float("inf")}, id="nested-infinity"),
            pytest.param(object(), id="object"),
        ],
    )
    async def test_a_return_value_that_is_not_json_fails_the_task(
        self, make_service: MakeService, value: Any
    ) -> None:
        async def returns(task: Task) -> Any:
            return value

        service = make_service({"returns": returns})
        task = await service.add_task("returns")

        service.start_workers(1)
        await service.wait_idle(timeout=GUARD_SECONDS)

        failed = await stored(service, task.id)
        assert failed.status is TaskStatus.FAILED
        assert failed.error is not None
        assert failed.error.startswith("InvalidTaskError: ")
        assert "return value" in failed.error
        assert failed.result is None

    async def test_a_single_worker_runs_tasks_in_priority_order(
        self, make_service: MakeService
    ) -> None:
        ran: list[int] = []

        async def record(task: Task) -> None:
            ran.append(task.payload["n"])

        service = make_service({"record": record})
        priorities = [5, 1, 3, 1, 0, 5, -2]
        for n, priority in enumerate(priorities):
            await service.add_task("record", {"n": n}, priority=priority)

        service.start_workers(1)
        await service.wait_idle(timeout=GUARD_SECONDS)

        # Lowest number first; equal priorities in the order they were added
        assert ran == [6, 4, 1, 3, 2, 0, 5]

    async def test_a_delayed_task_runs_after_its_delay(self, make_service: MakeService) -> None:
        ran: list[tuple[str, datetime]] = []

        async def record(task: Task) -> None:
            ran.append((task.id, utcnow()))

        service = make_service({"record": record})
        delayed = await service.add_task("record", delay_seconds=0.2)
        immediate = await service.add_task("record")

        service.start_workers(1)
        await service.wait_idle(timeout=GUARD_SECONDS)

        assert [task_id for task_id, _ in ran] == [immediate.id, delayed.id]
        assert delayed.scheduled_at == delayed.created_at + timedelta(seconds=0.2)
        assert ran[1][1] >= delayed.scheduled_at
        done = await stored(service, delayed.id)
        assert done.started_at is not None
        assert done.started_at >= delayed.scheduled_at

    async def test_a_task_with_no_executor_in_the_worker_fails(
        self, make_service: MakeService, broker: InMemoryBroker
    ) -> None:
        service = make_service({"known": noop})
        orphan = Task(name="unregistered", priority=0)
        await broker.enqueue(orphan)
        known = await service.add_task("known", priority=1)

        service.start_workers(1)
        await service.wait_idle(timeout=GUARD_SECONDS)

        failed = await stored(service, orphan.id)
        assert failed.status is TaskStatus.FAILED
        assert failed.error is not None
        assert failed.error.startswith("UnknownTaskError: ")
        assert "'unregistered'" in failed.error
        assert (await stored(service, known.id)).status is TaskStatus.COMPLETED


# -- shutdown ----------------------------------------------------------------------------------


class TestShutdown:
    async def test_idle_workers_stop_at_once(self, make_service: MakeService) -> None:
        service = make_service({"noop": noop})
        worker_tasks = service.start_workers(4)
        await let_workers_block()
        loop = asyncio.get_running_loop()

        start = loop.time()
        await service.shutdown()

        assert loop.time() - start < 0.5
        assert all(task.done() for task in worker_tasks)
        assert service.state is ServiceState.STOPPED

    async def test_a_running_task_finishes_within_the_grace_period(
        self, make_service: MakeService
    ) -> None:
        started, release = asyncio.Event(), asyncio.Event()

        async def slow(task: Task) -> str:
            started.set()
            await release.wait()
            return "finished"

        # Given a task running on one of two workers
        service = make_service({"slow": slow})
        task = await service.add_task("slow")
        service.start_workers(2)
        async with asyncio.timeout(GUARD_SECONDS):
            await started.wait()

        # When shutdown starts, Then it waits for the task...
        shutting_down = asyncio.create_task(service.shutdown(timeout=30))
        await let_workers_block()
        state_during_grace = service.state
        assert not shutting_down.done()
        assert state_during_grace is ServiceState.STOPPING

        # ...which completes once it may
        release.set()
        async with asyncio.timeout(GUARD_SECONDS):
            await shutting_down
        done = await stored(service, task.id)
        assert (done.status, done.result) == (TaskStatus.COMPLETED, "finished")
        assert service.state is ServiceState.STOPPED

    async def test_a_task_outliving_the_grace_period_is_pending_again(
        self, make_service: MakeService, broker: InMemoryBroker
    ) -> None:
        started, never, interrupted = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def stuck(task: Task) -> None:
            started.set()
            try:
                await never.wait()
            except asyncio.CancelledError:
                interrupted.set()
                raise

        # Given a task that will not finish
        service = make_service({"stuck": stuck})
        task = await service.add_task("stuck")
        service.start_workers(1)
        async with asyncio.timeout(GUARD_SECONDS):
            await started.wait()

        # When shutdown's grace period runs out
        loop = asyncio.get_running_loop()
        start = loop.time()
        await service.shutdown(timeout=0.2)
        elapsed = loop.time() - start

        # Then the task was interrupted and handed back, not lost and not left PROCESSING
        assert 0.15 <= elapsed < GUARD_SECONDS
        assert interrupted.is_set()
        handed_back = await stored(service, task.id)
        assert (handed_back.status, handed_back.claim_token) == (TaskStatus.PENDING, None)
        assert handed_back.attempts == 0  # nothing failed: the attempt does not count
        assert (await broker.count_by_status())[TaskStatus.PROCESSING] == 0

        # And the next service runs it
        successor = make_service({"stuck": noop})
        successor.start_workers(1)
        await successor.wait_idle(timeout=GUARD_SECONDS)
        done = await stored(successor, task.id)
        assert (done.status, done.attempts) == (TaskStatus.COMPLETED, 1)

    async def test_start_workers_after_shutdown_raises(self, make_service: MakeService) -> None:
        service = make_service({"noop": noop})
        service.start_workers(1)
        await service.shutdown()

        with pytest.raises(ServiceStateError) as caught:
            service.start_workers(1)

        assert isinstance(caught.value, RuntimeError)

    async def test_shutdown_is_idempotent(self, make_service: MakeService) -> None:
        service = make_service({"noop": noop})
        service.start_workers(2)

        async with asyncio.timeout(GUARD_SECONDS):
            await asyncio.gather(service.shutdown(), service.shutdown())
            await service.shutdown()

        assert service.state is ServiceState.STOPPED

    async def test_shutdown_of_a_service_that_never_started(
        self, make_service: MakeService
    ) -> None:
        service = make_service({"noop": noop})

        await service.shutdown()

        assert service.state is ServiceState.STOPPED


# -- logging -----------------------------------------------------------------------------------


class TestLifecycleLogging:
    async def test_lifecycle_records_carry_event_and_task_id(
        self, make_service: MakeService, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="katana")  # started/completed are DEBUG

        async def explode(task: Task) -> None:
            raise ValueError("boom")

        service = make_service({"noop": noop, "explode": explode})
        ok = await service.add_task("noop", {"secret": "hunter2"})
        bad = await service.add_task("explode", {"secret": "hunter2"})
        service.start_workers(1)
        await service.wait_idle(timeout=GUARD_SECONDS)

        def events(task_id: str) -> list[str]:
            return [
                getattr(record, "katana_event", "")
                for record in caplog.records
                if getattr(record, "task_id", None) == task_id
            ]

        assert events(ok.id) == ["task_created", "task_started", "task_completed"]
        assert events(bad.id) == ["task_created", "task_started", "task_failed"]
        (failure,) = [r for r in caplog.records if getattr(r, "katana_event", "") == "task_failed"]
        assert failure.levelno == logging.ERROR
        assert failure.exc_info is not None
        assert getattr(failure, "task_name", None) == "explode"
        # Payloads are never logged above DEBUG
        assert not any("hunter2" in record.getMessage() for record in caplog.records)

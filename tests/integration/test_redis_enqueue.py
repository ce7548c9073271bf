"""RedisBroker's enqueue path under load and when replies are lost: no false outage, no dupes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from katana.task_queue.broker._redis_codec import ENQUEUE_VALUES_PER_TASK
from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.errors import (
    BrokerOutcomeUnknownError,
    BrokerUnavailableError,
    ConfigurationError,
)
from katana.task_queue.models import TaskStatus
from katana.task_queue.service import TaskQueueService
from katana.task_queue.testing._support import make_task

from ._processes import wait_until
from ._redis_server import RedisServers, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from katana.task_queue.models import Task

#: Concurrent add_task calls on one broker: fifty times redis-py's default pool of 100.
BURST = 5000
#: Upper bound for anything that normally takes well under a second.
GUARD_SECONDS = 30.0


async def _noop(task: Task) -> None:
    return None


@pytest.fixture
def redis_servers() -> Iterator[RedisServers]:
    with RedisServers() as servers:
        yield servers


@pytest.fixture
async def broker(redis_url: str, queue_name: str) -> AsyncIterator[RedisBroker]:
    async with RedisBroker(redis_url, queue=queue_name) as broker:
        yield broker
        await broker.purge()


async def test_thousands_of_concurrent_add_task_calls_all_succeed_and_are_stored(
    broker: RedisBroker,
) -> None:
    service = TaskQueueService(broker, {"noop": _noop})

    created = await asyncio.gather(*(service.add_task("noop", {"n": n}) for n in range(BURST)))

    assert len({task.id for task in created}) == BURST
    assert (await broker.count_by_status())[TaskStatus.PENDING] == BURST
    stored = await broker.get_task(created[-1].id)
    assert stored is not None
    assert stored.payload == {"n": BURST - 1}


class CountingBroker(RedisBroker):
    """Counts enqueue.lua calls; while ``gate`` is set, the next call waits for it to open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.enqueue_calls: list[int] = []  # tasks per call
        self.gate: asyncio.Event | None = None
        self.in_flight = asyncio.Event()

    async def _run(self, script: str, args: list[Any]) -> Any:
        if script == "enqueue":
            self.enqueue_calls.append((len(args) - 3) // ENQUEUE_VALUES_PER_TASK)
            self.in_flight.set()
            if self.gate is not None:
                gate, self.gate = self.gate, None
                await gate.wait()
        return await super()._run(script, args)


@pytest.fixture
async def counting_broker(redis_url: str, queue_name: str) -> AsyncIterator[CountingBroker]:
    async with CountingBroker(redis_url, queue=queue_name) as broker:
        yield broker
        await broker.purge()


async def test_concurrent_enqueues_share_round_trips(counting_broker: CountingBroker) -> None:
    tasks = [make_task("t") for _ in range(100)]

    answers = await asyncio.gather(*(counting_broker.enqueue(task) for task in tasks))

    # The first is sent alone at once; the 99 that came while it was in flight go together
    assert answers == [None] * 100
    assert counting_broker.enqueue_calls == [1, 99]
    assert (await counting_broker.count_by_status())[TaskStatus.PENDING] == 100


async def test_an_enqueue_cancelled_before_it_was_sent_stores_nothing(
    counting_broker: CountingBroker,
) -> None:
    # Given an enqueue in flight, and two more waiting for the next round trip
    counting_broker.gate = gate = asyncio.Event()
    first, dropped, kept = make_task("first"), make_task("dropped"), make_task("kept")
    sending = asyncio.create_task(counting_broker.enqueue(first))
    async with asyncio.timeout(GUARD_SECONDS):
        await counting_broker.in_flight.wait()
    waiting = [asyncio.create_task(counting_broker.enqueue(t)) for t in (dropped, kept)]
    await asyncio.sleep(0)  # both join the queue behind the round trip in flight

    # When one of them is cancelled before its round trip starts
    waiting[0].cancel()
    gate.set()
    assert await sending is None
    assert await waiting[1] is None

    # Then it was never sent, and the other one was
    assert counting_broker.enqueue_calls == [1, 1]
    assert await counting_broker.get_task(dropped.id) is None
    assert await counting_broker.get_task(kept.id) is not None


async def test_commands_past_the_pool_size_wait_for_a_connection(
    redis_url: str, queue_name: str
) -> None:
    # Given a broker with two connections at most, and a task to read
    async with RedisBroker(redis_url, queue=queue_name, max_connections=2) as broker:
        service = TaskQueueService(broker, {"noop": _noop})
        task = await service.add_task("noop")

        # When ten times as many reads run at once
        read = await asyncio.gather(*(broker.get_task(task.id) for _ in range(20)))

        # Then each waited for a connection, none failed with "Too many connections"
        assert [t.id if t else None for t in read] == [task.id] * 20
        await broker.purge()


async def test_waiting_for_a_connection_is_bounded_and_nothing_was_sent(
    redis_url: str, queue_name: str
) -> None:
    async with RedisBroker(
        redis_url, queue=queue_name, max_connections=1, pool_timeout_seconds=0.2
    ) as broker:
        # Given the only connection busy with a blocking command
        async def block() -> None:
            await broker._client.blpop([f"{broker.prefix}:nothing"], 5)

        blocker = asyncio.create_task(block())
        try:
            await asyncio.sleep(0)  # let the blocking command take the connection
            started = time.monotonic()

            # When another command needs a connection
            with pytest.raises(BrokerUnavailableError, match="No connection available") as info:
                await broker.get_task("any")

            # Then it gave up after the pool timeout, and says nothing was sent
            assert time.monotonic() - started < GUARD_SECONDS / 3
            assert not isinstance(info.value, BrokerOutcomeUnknownError)
        finally:
            blocker.cancel()
            await asyncio.gather(blocker, return_exceptions=True)


async def test_nothing_listening_is_unavailable_not_unknown(queue_name: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    broker = RedisBroker(url, queue=queue_name, connect_timeout_seconds=1)
    service = TaskQueueService(broker, {"noop": _noop})
    try:
        with pytest.raises(BrokerUnavailableError) as info:
            await service.add_task("noop", task_id="never-sent")

        assert not isinstance(info.value, BrokerOutcomeUnknownError)
    finally:
        await broker.close()


async def test_a_connection_redis_refuses_to_set_up_is_configuration_not_unknown(
    redis_url: str, queue_name: str
) -> None:
    # Given a URL whose database the server does not have (SELECT fails during set-up)
    url = redis_url.rsplit("/", 1)[0] + "/99999"
    broker = RedisBroker(url, queue=queue_name)
    service = TaskQueueService(broker, {"noop": _noop})
    try:
        # When the broker connects, it is a configuration error naming Redis' reason
        with pytest.raises(ConfigurationError, match="DB index is out of range"):
            await broker.connect()

        # And a write or a read later is unavailable (nothing was sent), never "unknown"
        with pytest.raises(BrokerUnavailableError) as info:
            await service.add_task("noop", task_id="never-sent")
        assert not isinstance(info.value, BrokerOutcomeUnknownError)
        with pytest.raises(BrokerUnavailableError) as info:
            await broker.get_task("never-sent")
        assert not isinstance(info.value, BrokerOutcomeUnknownError)
        assert "may have been carried out" not in str(info.value)
    finally:
        await broker.close()


async def _pause_writes(url: str, milliseconds: int) -> aioredis.Redis:
    """CLIENT PAUSE WRITE on a private server: scripts are held, unanswered, until it ends."""
    admin = aioredis.Redis.from_url(url)
    await admin.client_pause(milliseconds, all=False)
    return admin


async def test_a_reply_that_times_out_is_unknown_and_a_retry_with_the_id_stores_once(
    redis_servers: RedisServers, queue_name: str
) -> None:
    # Given a short socket timeout, and a Redis that hangs (SIGSTOP) with a connection open
    server = redis_servers.new()
    url = f"{server.url}?socket_timeout=0.3"
    async with RedisBroker(url, queue=queue_name) as broker:
        service = TaskQueueService(broker, {"noop": _noop})
        await service.add_task("noop")  # Redis knows the script now: it runs at the first try
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()

            # When add_task's reply does not come within the timeout
            with pytest.raises(BrokerOutcomeUnknownError, match="same task_id") as info:
                await service.add_task("noop", {"try": 1}, task_id="order-17")

            # Then it gave up after the socket timeout, not ten seconds
            assert time.monotonic() - started < 3
            assert isinstance(info.value, BrokerUnavailableError)  # old handlers still catch it
        finally:
            os.kill(server.pid, signal.SIGCONT)

        # And Redis, once it runs again, carried the request out: the task is stored
        async def stored() -> bool:
            return await broker.get_task("order-17") is not None

        await wait_until(stored, GUARD_SECONDS, "the held enqueue to run")
        # So a retry with the same id creates nothing new and returns the stored task
        again = await service.add_task("noop", {"try": 2}, task_id="order-17")
        assert (again.id, again.payload) == ("order-17", {"try": 1})
        assert (await broker.count_by_status())[TaskStatus.PENDING] == 2


async def test_a_connection_lost_after_sending_is_unknown_and_a_retry_stores_once(
    redis_servers: RedisServers, queue_name: str
) -> None:
    # Given a Redis that holds writes, so the command is sent and waits there
    server = redis_servers.new()
    async with RedisBroker(server.url, queue=queue_name) as broker:
        service = TaskQueueService(broker, {"noop": _noop})
        await broker.count_by_status()  # a connection is open before writes are held
        admin = await _pause_writes(server.url, 10_000)
        try:
            adding = asyncio.create_task(service.add_task("noop", task_id="order-18"))

            async def held() -> bool:
                return any(c["cmd"] == "evalsha" for c in await admin.client_list())

            await wait_until(held, GUARD_SECONDS, "Redis to hold the script call")

            # When the server drops the connection before it answers
            await admin.client_kill_filter(_type="normal", skipme=True)

            # Then the outcome is unknown (here the held write was dropped with it)
            with pytest.raises(BrokerOutcomeUnknownError, match="same task_id"):
                await adding
            await admin.client_unpause()
        finally:
            await admin.aclose()

        # And a retry with the same id stores the task exactly once
        first = await service.add_task("noop", task_id="order-18")
        second = await service.add_task("noop", task_id="order-18")
        assert first.id == second.id == "order-18"
        assert (await broker.count_by_status())[TaskStatus.PENDING] == 1

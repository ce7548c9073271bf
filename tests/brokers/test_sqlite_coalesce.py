"""SqliteBroker coalesces concurrent enqueues: one transaction for many callers, one answer each."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest

from katana.task_queue.broker.sqlite import SqliteBroker
from katana.task_queue.errors import StorageError
from katana.task_queue.models import TaskStatus
from katana.task_queue.service import TaskQueueService
from katana.task_queue.testing._support import make_task

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from katana.task_queue.models import Task

#: Concurrent add_task calls on one broker.
BURST = 5000


class CountingBroker(SqliteBroker):
    """Counts the write transactions this broker runs (each one commit, one fsync)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes = 0
        write = self._db.write

        def counted(steps: Any) -> Any:
            self.writes += 1
            return write(steps)

        self._db.write = counted  # type: ignore[method-assign]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[CountingBroker]:
    broker = CountingBroker(tmp_path / "katana.db")
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


async def _noop(task: Task) -> None:
    return None


async def test_concurrent_enqueues_share_transactions_and_each_task_is_stored_once(
    broker: CountingBroker,
) -> None:
    tasks = [make_task(payload={"n": n}) for n in range(50)]

    answers = await asyncio.gather(*(broker.enqueue(task) for task in tasks))

    assert answers == [None] * 50
    assert broker.writes < 50  # the first alone, then the others together
    assert (await broker.count_by_status())[TaskStatus.PENDING] == 50
    for task in tasks:
        stored = await broker.get_task(task.id)
        assert stored is not None
        assert stored.payload == task.payload


async def test_a_repeated_id_in_one_batch_gets_the_task_stored_by_the_first(
    broker: CountingBroker,
) -> None:
    first = make_task(payload={"n": 1})
    again = dataclasses.replace(first, payload={"n": 2})
    others = [make_task() for _ in range(5)]

    answers = await asyncio.gather(*(broker.enqueue(t) for t in [*others, first, again]))

    assert broker.writes < 7
    assert answers[:6] == [None] * 6
    assert answers[6] is not None
    assert answers[6].id == first.id
    assert answers[6].payload == {"n": 1}
    assert (await broker.count_by_status())[TaskStatus.PENDING] == 6


async def test_a_held_unique_key_in_one_batch_gets_the_first_holder(
    broker: CountingBroker,
) -> None:
    first = make_task(payload={"n": 1})
    first.unique_key = "k"
    second = make_task(payload={"n": 2})
    second.unique_key = "k"
    same_id = dataclasses.replace(first, unique_key="other")
    filler = [make_task() for _ in range(3)]

    answers = await asyncio.gather(
        *(broker.enqueue(t) for t in filler),
        broker.enqueue_unique(first),
        broker.enqueue_unique(second),
        broker.enqueue_unique(same_id),
    )

    assert broker.writes < 6
    assert answers[:4] == [None] * 4
    assert answers[4] is not None  # the key is held by the first
    assert answers[4].id == first.id
    assert answers[5] is not None  # its id is stored
    assert answers[5].id == first.id
    assert await broker.get_task(second.id) is None
    assert (await broker.count_by_status())[TaskStatus.PENDING] == 4


async def test_a_bad_task_fails_alone_in_its_batch(broker: CountingBroker) -> None:
    good = [make_task(payload={"n": n}) for n in range(6)]
    not_json = make_task()
    not_json.payload = {"x": {1, 2}}  # not encodable
    no_key = make_task()  # enqueue_unique needs a unique_key

    answers = await asyncio.gather(
        *(broker.enqueue(t) for t in good[:3]),
        broker.enqueue(not_json),
        broker.enqueue_unique(no_key),
        *(broker.enqueue(t) for t in good[3:]),
        return_exceptions=True,
    )

    assert broker.writes < 8
    assert answers[:3] == [None] * 3
    assert answers[5:] == [None] * 3
    assert isinstance(answers[3], TypeError)
    assert isinstance(answers[4], ValueError)
    assert await broker.get_task(not_json.id) is None
    assert await broker.get_task(no_key.id) is None
    assert (await broker.count_by_status())[TaskStatus.PENDING] == 6


async def test_an_enqueue_meeting_a_malformed_row_fails_alone_as_a_storage_error(
    broker: CountingBroker,
) -> None:
    # Given a stored task whose payload was overwritten by hand with something not JSON
    spoiled = make_task()
    await broker.enqueue(spoiled)
    with contextlib.closing(sqlite3.connect(broker.path)) as raw:
        raw.execute("UPDATE katana_tasks SET payload = '{not json' WHERE id = ?", (spoiled.id,))
        raw.commit()
    good = [make_task() for _ in range(4)]

    # When its id is enqueued again among others
    answers = await asyncio.gather(
        *(broker.enqueue(t) for t in good[:2]),
        broker.enqueue(spoiled),
        *(broker.enqueue(t) for t in good[2:]),
        return_exceptions=True,
    )

    # Then that call hears what is wrong, naming the file, and the others are stored
    assert isinstance(answers[2], StorageError)
    assert broker.path in str(answers[2])
    assert "malformed" in str(answers[2])
    assert [answers[n] for n in (0, 1, 3, 4)] == [None] * 4
    for task in good:
        assert await broker.get_task(task.id) is not None


async def test_thousands_of_concurrent_add_task_calls_all_succeed_and_are_stored(
    broker: CountingBroker,
) -> None:
    service = TaskQueueService(broker, {"noop": _noop})

    created = await asyncio.gather(*(service.add_task("noop", {"n": n}) for n in range(BURST)))

    assert len({task.id for task in created}) == BURST
    assert broker.writes < BURST
    assert (await broker.count_by_status())[TaskStatus.PENDING] == BURST
    stored = await broker.get_task(created[-1].id)
    assert stored is not None
    assert stored.payload == {"n": BURST - 1}


async def test_close_answers_the_enqueues_already_accepted(broker: CountingBroker) -> None:
    tasks = [make_task() for _ in range(20)]
    calls = [asyncio.ensure_future(broker.enqueue(task)) for task in tasks]
    await asyncio.sleep(0)  # every call is made: the first in flight, the rest waiting

    await broker.close()

    assert await asyncio.gather(*calls) == [None] * 20

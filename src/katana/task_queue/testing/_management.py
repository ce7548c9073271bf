"""Conformance tests for what monitoring asks of a broker: listing, stats, pause, workers."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from ..listing import MAX_PAGE_SIZE, TaskQuery, WorkerInfo
from ..models import Task, TaskStatus, utcnow
from ._support import ContractBase, claim, make_task

if TYPE_CHECKING:
    from ..broker.base import AbstractBroker

__all__ = ["ManagementContract"]


def _ids(tasks: list[Task]) -> list[str]:
    return [task.id for task in tasks]


def _worker(worker_id: str, *, expires_in: float) -> WorkerInfo:
    now = utcnow().replace(microsecond=0)
    return WorkerInfo(
        id=worker_id,
        host="host-a",
        pid=4242,
        queue="default",
        concurrency=8,
        task_names=["send_email"],
        current_task_ids=["t1", "t2"],
        started_at=now - timedelta(minutes=5),
        last_seen_at=now,
        expires_at=now + timedelta(seconds=expires_in),
        processed=17,
    )


class ManagementContract(ContractBase):
    async def test_every_task_is_listed_newest_first(self, broker: AbstractBroker) -> None:
        start = utcnow() - timedelta(seconds=10)
        tasks = [Task(name="t", created_at=start + timedelta(seconds=i)) for i in range(5)]
        for task in tasks:
            await broker.enqueue(task)
        done = await claim(broker)
        await broker.mark_complete(done.id, "ok", claim_token=done.claim_token)

        page = await broker.list_tasks(TaskQuery(), limit=3)

        assert page.total == 5
        assert page.total_is_exact
        assert _ids(page.tasks) == [tasks[4].id, tasks[3].id, tasks[2].id]
        rest = await broker.list_tasks(TaskQuery(), limit=3, offset=3)
        assert _ids(rest.tasks) == [tasks[1].id, tasks[0].id]
        assert {task.id: task.status for task in rest.tasks}[tasks[0].id] is TaskStatus.COMPLETED

    async def test_pending_tasks_are_listed_in_run_order_then_the_scheduled_ones(
        self, broker: AbstractBroker
    ) -> None:
        low = make_task("low", priority=5)
        urgent = make_task("urgent", priority=1)
        urgent_later = make_task("urgent-2", priority=1)
        scheduled = make_task("scheduled", priority=0, delay_seconds=60)
        for task in (low, scheduled, urgent, urgent_later):
            await broker.enqueue(task)

        everything = await broker.list_tasks(TaskQuery(status=TaskStatus.PENDING))
        due = await broker.list_tasks(TaskQuery(status=TaskStatus.PENDING, scheduled=False))
        later = await broker.list_tasks(TaskQuery(scheduled=True))

        assert _ids(everything.tasks) == [urgent.id, urgent_later.id, low.id, scheduled.id]
        assert everything.total == 4
        assert (due.total, _ids(due.tasks)) == (3, [urgent.id, urgent_later.id, low.id])
        assert (later.total, _ids(later.tasks)) == (1, [scheduled.id])

    async def test_running_and_finished_tasks_are_listed_by_status(
        self, broker: AbstractBroker
    ) -> None:
        for name in ("a", "b", "c", "d"):
            await broker.enqueue(make_task(name))
        first, second, third, fourth = [await claim(broker) for _ in range(4)]
        await broker.mark_complete(first.id, 1, claim_token=first.claim_token)
        await broker.mark_complete(second.id, 2, claim_token=second.claim_token)
        await broker.mark_failed(third.id, "ValueError: boom", claim_token=third.claim_token)

        running = await broker.list_tasks(TaskQuery(status=TaskStatus.PROCESSING))
        completed = await broker.list_tasks(TaskQuery(status=TaskStatus.COMPLETED))
        failed = await broker.list_tasks(TaskQuery(status=TaskStatus.FAILED))

        assert _ids(running.tasks) == [fourth.id]
        assert _ids(completed.tasks) == [second.id, first.id]  # most recently finished first
        assert [task.result for task in completed.tasks] == [2, 1]
        assert _ids(failed.tasks) == [third.id]
        assert failed.tasks[0].error == "ValueError: boom"

    async def test_filters_by_name_and_by_text_in_payload_error_and_id(
        self, broker: AbstractBroker
    ) -> None:
        alice = make_task("send_email", payload={"to": "Alice@example.com"})
        bob = make_task("send_email", payload={"to": "bob@example.com"})
        report = make_task("build_report", payload={"owner": "alice"})
        for task in (alice, bob, report):
            await broker.enqueue(task)
        failing = make_task("charge", payload={"amount": 3})
        await broker.enqueue(failing)
        claimed = [await claim(broker) for _ in range(4)]
        charge = next(task for task in claimed if task.id == failing.id)
        await broker.mark_failed(charge.id, "CardDeclined: insufficient funds")

        by_name = await broker.list_tasks(TaskQuery(name="send_email"))
        by_text = await broker.list_tasks(TaskQuery(text="ALICE"))
        by_error = await broker.list_tasks(TaskQuery(text="declined"))
        by_id = await broker.list_tasks(TaskQuery(text=bob.id[:12]))
        nothing = await broker.list_tasks(TaskQuery(name="send_email", text="carol"))
        failed_named = await broker.list_tasks(
            TaskQuery(status=TaskStatus.FAILED, name="charge", text="funds")
        )

        assert set(_ids(by_name.tasks)) == {alice.id, bob.id}
        assert by_name.total == 2
        assert set(_ids(by_text.tasks)) == {alice.id, report.id}
        assert _ids(by_error.tasks) == [failing.id]
        assert _ids(by_id.tasks) == [bob.id]
        assert (nothing.total, nothing.tasks) == (0, [])
        assert _ids(failed_named.tasks) == [failing.id]

    async def test_a_filtered_listing_is_paged_and_counts_every_match(
        self, broker: AbstractBroker
    ) -> None:
        start = utcnow() - timedelta(seconds=30)
        wanted = []
        for i in range(12):
            task = Task(
                name="even" if i % 2 == 0 else "odd", created_at=start + timedelta(seconds=i)
            )
            await broker.enqueue(task)
            if i % 2 == 0:
                wanted.append(task.id)
        newest_first = wanted[::-1]

        first = await broker.list_tasks(TaskQuery(name="even"), limit=4)
        second = await broker.list_tasks(TaskQuery(name="even"), limit=4, offset=4)
        past_the_end = await broker.list_tasks(TaskQuery(name="even"), limit=4, offset=40)

        assert (first.total, _ids(first.tasks)) == (6, newest_first[:4])
        assert (second.total, _ids(second.tasks)) == (6, newest_first[4:])
        assert (past_the_end.total, past_the_end.tasks) == (6, [])

    async def test_a_deleted_task_is_no_longer_listed(self, broker: AbstractBroker) -> None:
        await broker.enqueue(make_task("gone"))
        task = await claim(broker)
        await broker.mark_complete(task.id, claim_token=task.claim_token)

        assert await broker.delete_task(task.id)

        assert (await broker.list_tasks(TaskQuery())).total == 0
        assert (await broker.list_tasks(TaskQuery(status=TaskStatus.COMPLETED))).total == 0

    @pytest.mark.parametrize(("limit", "offset"), [(0, 0), (MAX_PAGE_SIZE + 1, 0), (10, -1)])
    async def test_an_invalid_page_is_refused(
        self, broker: AbstractBroker, limit: int, offset: int
    ) -> None:
        with pytest.raises(ValueError, match=r"limit|offset"):
            await broker.list_tasks(TaskQuery(), limit=limit, offset=offset)

    async def test_scheduled_only_applies_to_pending_tasks(self) -> None:
        with pytest.raises(ValueError, match="PENDING"):
            TaskQuery(status=TaskStatus.COMPLETED, scheduled=True)

    async def test_the_oldest_due_task_is_reported_and_delayed_ones_are_not(
        self, broker: AbstractBroker
    ) -> None:
        assert await broker.oldest_due_at() is None
        await broker.enqueue(make_task("later", delay_seconds=60))
        assert await broker.oldest_due_at() is None

        now = utcnow()
        overdue = now - timedelta(seconds=30)
        await broker.enqueue(
            make_task("urgent", priority=0, scheduled_at=now - timedelta(seconds=1))
        )
        await broker.enqueue(make_task("long-waiting", priority=9, scheduled_at=overdue))

        oldest = await broker.oldest_due_at()
        assert oldest is not None
        assert abs((oldest - overdue).total_seconds()) <= self.timestamp_resolution_seconds

    async def test_finished_tasks_are_counted_in_time_windows(self, broker: AbstractBroker) -> None:
        for name in ("a", "b", "c"):
            await broker.enqueue(make_task(name))
        for _ in range(3):
            task = await claim(broker)
            await broker.mark_complete(task.id, claim_token=task.claim_token)
        now = utcnow()
        edges = [now - timedelta(minutes=2), now - timedelta(minutes=1), now + timedelta(seconds=5)]

        assert await broker.finished_counts(edges) == [0, 3]
        assert await broker.finished_counts(edges[:2]) == [0]
        assert await broker.finished_counts(edges[:1]) == []

    async def test_a_paused_queue_hands_out_nothing_until_resumed(
        self, broker: AbstractBroker
    ) -> None:
        await broker.set_paused(True)
        assert await broker.is_paused()
        task = make_task("held")
        await broker.enqueue(task)
        assert await broker.dequeue(timeout=0.2) is None

        consumer = asyncio.create_task(broker.dequeue(timeout=self.guard_seconds))
        await self.let_consumers_block()
        await broker.set_paused(False)

        async with asyncio.timeout(self.wake_seconds):
            claimed = await consumer
        assert claimed is not None
        assert claimed.id == task.id
        assert not await broker.is_paused()

    async def test_worker_records_are_listed_until_they_expire_or_are_removed(
        self, broker: AbstractBroker
    ) -> None:
        alive = _worker("host-a:4242:1", expires_in=60)
        expired = _worker("host-a:4243:1", expires_in=-1)
        other = _worker("host-b:7:1", expires_in=60)
        for info in (other, expired, alive):
            await broker.record_worker(info)

        listed = await broker.list_workers()
        assert listed == [alive, other]

        alive.current_task_ids = []
        await broker.record_worker(alive)
        await broker.remove_worker(other.id)
        assert await broker.list_workers() == [alive]

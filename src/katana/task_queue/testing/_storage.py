"""Conformance tests for what a broker stores: round trips, copies, claims and transitions."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from ..errors import TaskNotFoundError
from ..models import TaskStatus, utcnow
from ._support import ContractBase, claim, make_task

if TYPE_CHECKING:
    from ..broker.base import AbstractBroker

__all__ = ["StorageContract"]

_UNICODE_PAYLOAD: dict[str, Any] = {
    "text": "héllo wörld ✓ 日本語 Ελληνικά עברית",
    "emoji": "🎉👩‍💻",  # outside the BMP, and a ZWJ sequence
    "ключ ✓": "a key that is not ASCII",
    "nested": {
        "list": [1, -2, 2.5, None, True, False, "x", {"deep": [[], {}, [[{"a": "b"}]]]}],
        "empty_dict": {},
        "empty_list": [],
        "empty_string": "",
    },
}
_EDGE_PAYLOAD: dict[str, Any] = {
    "escapes": 'quote " backslash \\ slash / newline \n tab \t bell \x07',
    "nul": "before\x00after",
    "surrogate_free_high": "\uffff",
    "int64_max": 2**63 - 1,
    "int64_min": -(2**63),
    "beyond_double": 2**53 + 1,
    "tiny": 5e-324,
    "huge": 1.7976931348623157e308,
    "negative_zero": -0.0,
    "third": 1 / 3,
}


class StorageContract(ContractBase):
    """Round trips, copies, claims, transitions, counts and ``enqueue_many``."""

    # -- round trips -------------------------------------------------------------------------

    async def test_enqueued_task_round_trips_through_get_task(self, broker: AbstractBroker) -> None:
        task = make_task("round-trip", payload={"a": 1}, priority=7, delay_seconds=3600)
        await broker.enqueue(task)

        stored = await broker.get_task(task.id)

        assert stored == task, "get_task must return every field as it was enqueued"

    @pytest.mark.parametrize("payload", [_UNICODE_PAYLOAD, _EDGE_PAYLOAD, {}])
    async def test_payload_round_trips(
        self, broker: AbstractBroker, payload: dict[str, Any]
    ) -> None:
        await broker.enqueue(make_task(payload=payload))

        claimed = await claim(broker)
        stored = await broker.get_task(claimed.id)

        assert claimed.payload == payload
        assert stored is not None
        assert stored.payload == payload

    async def test_result_round_trips(self, broker: AbstractBroker) -> None:
        await broker.enqueue(make_task())
        claimed = await claim(broker)

        await broker.mark_complete(claimed.id, _UNICODE_PAYLOAD, claim_token=claimed.claim_token)

        stored = await broker.get_task(claimed.id)
        assert stored is not None
        assert stored.result == _UNICODE_PAYLOAD

    # -- claims ------------------------------------------------------------------------------

    async def test_dequeue_claims_the_task(self, broker: AbstractBroker) -> None:
        task = make_task()
        await broker.enqueue(task)

        claimed = await claim(broker)

        assert claimed.id == task.id
        assert claimed.status is TaskStatus.PROCESSING
        assert claimed.attempts == 1
        assert claimed.started_at is not None
        resolution = timedelta(seconds=self.timestamp_resolution_seconds)
        assert claimed.started_at >= claimed.scheduled_at - resolution, "started before due"
        assert isinstance(claimed.claim_token, str)
        assert claimed.claim_token
        assert await broker.get_task(task.id) == claimed, "get_task must show the claim"

    async def test_claim_tokens_are_unique(self, broker: AbstractBroker) -> None:
        await broker.enqueue_many([make_task() for _ in range(3)])
        first, second, third = [await claim(broker) for _ in range(3)]
        assert await broker.requeue(first.id, claim_token=first.claim_token)

        again = await claim(broker)

        assert again.id == first.id
        tokens = [first.claim_token, second.claim_token, third.claim_token, again.claim_token]
        assert len(set(tokens)) == len(tokens)

    async def test_every_transition_is_visible_through_get_task(
        self, broker: AbstractBroker
    ) -> None:
        # Given a task, enqueued
        task = make_task()
        await broker.enqueue(task)
        stored = await broker.get_task(task.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.claim_token) == (TaskStatus.PENDING, 0, None)
        assert (stored.started_at, stored.finished_at) == (None, None)

        # When it is claimed and fails, Then the failure is recorded
        first = await claim(broker)
        assert await broker.mark_failed(
            task.id, "ValueError: boom", traceback="Traceback ...", claim_token=first.claim_token
        )
        stored = await broker.get_task(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.FAILED
        assert (stored.error, stored.traceback) == ("ValueError: boom", "Traceback ...")
        assert stored.claim_token is None
        assert stored.finished_at is not None
        assert first.started_at is not None
        assert stored.finished_at >= first.started_at

        # When it is set PENDING again (a redrive: its retry budget starts again), claimed,
        # handed back, claimed and completed
        await broker.update_task_status(task.id, TaskStatus.PENDING)
        stored = await broker.get_task(task.id)
        assert stored is not None
        assert (stored.status, stored.claim_token) == (TaskStatus.PENDING, None)
        second = await claim(broker)
        assert second.attempts == 1
        assert await broker.requeue(task.id, claim_token=second.claim_token)
        stored = await broker.get_task(task.id)
        assert stored is not None
        assert (stored.status, stored.claim_token) == (TaskStatus.PENDING, None)
        third = await claim(broker)
        assert third.attempts == 2
        assert await broker.mark_complete(task.id, {"ok": True}, claim_token=third.claim_token)

        # Then get_task shows the success
        stored = await broker.get_task(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.COMPLETED
        assert stored.result == {"ok": True}
        assert stored.claim_token is None
        assert stored.finished_at is not None
        assert third.started_at is not None
        assert stored.finished_at >= third.started_at

    async def test_requeue_makes_the_task_dequeueable_again(self, broker: AbstractBroker) -> None:
        await broker.enqueue(make_task())
        first = await claim(broker)

        assert await broker.requeue(first.id, claim_token=first.claim_token) is True

        again = await claim(broker)
        assert again.id == first.id
        assert again.attempts == 2
        assert again.claim_token != first.claim_token

    async def test_hand_back_undoes_the_claim_without_using_up_an_attempt(
        self, broker: AbstractBroker
    ) -> None:
        # Given a task claimed twice: a failed attempt (a retry), then a running one
        await broker.enqueue(make_task())
        first = await claim(broker)
        assert await broker.requeue(first.id, claim_token=first.claim_token, error="E: first")
        second = await claim(broker)
        assert second.claim_token is not None
        assert second.attempts == 2

        # When its worker stops before it finished (shutdown) and hands it back
        assert await broker.hand_back(second.id, claim_token=second.claim_token) is True

        # Then it is PENDING again, due at once, as before the second claim: nothing failed
        stored = await broker.get_task(second.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.claim_token) == (
            TaskStatus.PENDING,
            1,
            None,
        )
        assert [entry["error"] for entry in stored.errors] == ["E: first"]
        again = await claim(broker)
        assert (again.id, again.attempts) == (second.id, 2)
        # And a stale claim cannot hand it back again
        assert await broker.hand_back(second.id, claim_token=second.claim_token) is False

    async def test_hand_back_of_a_task_cancelled_while_it_ran_ends_it_cancelled(
        self, broker: AbstractBroker
    ) -> None:
        await broker.enqueue(make_task())
        claimed = await claim(broker)
        assert claimed.claim_token is not None
        assert await broker.cancel(claimed.id) is True

        assert await broker.hand_back(claimed.id, claim_token=claimed.claim_token) is True

        stored = await broker.get_task(claimed.id)
        assert stored is not None
        assert stored.status is TaskStatus.CANCELLED
        assert await broker.dequeue(timeout=0) is None

    async def test_requeue_with_a_delay_postpones_the_task(self, broker: AbstractBroker) -> None:
        await broker.enqueue(make_task())
        claimed = await claim(broker)

        before = utcnow()
        assert await broker.requeue(claimed.id, delay_seconds=3600, claim_token=claimed.claim_token)
        after = utcnow()

        assert await broker.dequeue(timeout=0) is None
        stored = await broker.get_task(claimed.id)
        assert stored is not None
        assert stored.status is TaskStatus.PENDING
        # A minute of slack either way, for brokers that take the time from their server.
        slack = timedelta(minutes=1)
        assert before + timedelta(hours=1) - slack <= stored.scheduled_at
        assert stored.scheduled_at <= after + timedelta(hours=1) + slack

    async def test_a_stale_claim_token_changes_nothing(self, broker: AbstractBroker) -> None:
        # Given a task whose first claim was handed back and which is now claimed again
        await broker.enqueue(make_task())
        first = await claim(broker)
        assert await broker.requeue(first.id, claim_token=first.claim_token)
        second = await claim(broker)
        before = await broker.get_task(first.id)

        # When the first claimant (or a forger) reports an outcome
        for token in (first.claim_token, "forged-claim-token"):
            assert await broker.mark_complete(first.id, {"x": 1}, claim_token=token) is False
            failed = await broker.mark_failed(first.id, "E: x", traceback="tb", claim_token=token)
            assert failed is False
            assert await broker.requeue(first.id, claim_token=token) is False
            assert await broker.requeue(first.id, delay_seconds=60, claim_token=token) is False

        # Then nothing changed, and the current claim still counts
        assert await broker.get_task(first.id) == before
        assert (await broker.count_by_status())[TaskStatus.PROCESSING] == 1
        assert await broker.dequeue(timeout=0) is None
        assert await broker.mark_complete(second.id, None, claim_token=second.claim_token) is True

    async def test_the_claim_token_of_a_finished_task_is_stale(
        self, broker: AbstractBroker
    ) -> None:
        await broker.enqueue(make_task())
        claimed = await claim(broker)
        token = claimed.claim_token
        assert await broker.mark_complete(claimed.id, 1, claim_token=token) is True
        before = await broker.get_task(claimed.id)

        assert await broker.mark_complete(claimed.id, 2, claim_token=token) is False
        assert await broker.mark_failed(claimed.id, "E: late", claim_token=token) is False
        assert await broker.requeue(claimed.id, claim_token=token) is False

        assert await broker.get_task(claimed.id) == before
        assert await broker.dequeue(timeout=0) is None

    # -- update_task_status ------------------------------------------------------------------

    async def test_unknown_id(self, broker: AbstractBroker) -> None:
        await broker.enqueue(make_task())

        assert await broker.get_task("no-such-task") is None
        # TaskNotFoundError, a KeyError: callers catch one error for an unknown id everywhere
        with pytest.raises(TaskNotFoundError, match="no-such-task"):
            await broker.update_task_status("no-such-task", TaskStatus.CANCELLED)
        with pytest.raises(TaskNotFoundError, match="no-such-task"):
            await broker.delete_task("no-such-task")

    @pytest.mark.parametrize("task_id", ["\ud800", "a\udcff", "x" * 10_000, ""])
    async def test_an_id_no_broker_could_store_is_unknown(
        self, broker: AbstractBroker, task_id: str
    ) -> None:
        # Ids arrive from JSON bodies and argv, where a lone surrogate is a valid str: no
        # broker can encode it, so none has a task with it, and each answers as for any
        # unknown id instead of failing in its driver.
        await broker.enqueue(make_task())

        assert await broker.get_task(task_id) is None
        assert await broker.cancel(task_id) is False
        assert await broker.wait_finished(task_id, timeout=5) is None
        with pytest.raises(TaskNotFoundError):
            await broker.delete_task(task_id)
        assert (await broker.count_by_status())[TaskStatus.PENDING] == 1

    @pytest.mark.parametrize("status", [s for s in TaskStatus if s is not TaskStatus.PENDING])
    async def test_update_task_status_takes_a_task_out_of_the_queue(
        self, broker: AbstractBroker, status: TaskStatus
    ) -> None:
        task = make_task()
        await broker.enqueue(task)

        await broker.update_task_status(task.id, status)

        stored = await broker.get_task(task.id)
        assert stored is not None
        assert stored.status is status
        assert await broker.dequeue(timeout=0) is None
        counts = await broker.count_by_status()
        assert counts[status] == 1
        assert counts[TaskStatus.PENDING] == 0

    @pytest.mark.parametrize(
        "status", [TaskStatus.PROCESSING, TaskStatus.FAILED, TaskStatus.CANCELLED]
    )
    async def test_update_task_status_pending_requeues(
        self, broker: AbstractBroker, status: TaskStatus
    ) -> None:
        task = make_task()
        await broker.enqueue(task)
        await broker.update_task_status(task.id, status)

        await broker.update_task_status(task.id, TaskStatus.PENDING)

        stored = await broker.get_task(task.id)
        assert stored is not None
        assert (stored.status, stored.claim_token) == (TaskStatus.PENDING, None)
        assert (await claim(broker)).id == task.id

    async def test_update_task_status_pending_requeues_a_claimed_task(
        self, broker: AbstractBroker
    ) -> None:
        await broker.enqueue(make_task())
        claimed = await claim(broker)

        await broker.update_task_status(claimed.id, TaskStatus.PENDING)

        again = await claim(broker)
        assert again.id == claimed.id
        assert again.attempts == 2
        late = await broker.mark_complete(claimed.id, None, claim_token=claimed.claim_token)
        assert late is False

    async def test_a_cancelled_pending_task_is_never_dequeued(self, broker: AbstractBroker) -> None:
        due, delayed = make_task(), make_task(delay_seconds=0.05)
        await broker.enqueue_many([due, delayed])

        await broker.update_task_status(due.id, TaskStatus.CANCELLED)
        await broker.update_task_status(delayed.id, TaskStatus.CANCELLED)

        # Waits past the delayed task's due time: it must not come back when due.
        assert await broker.dequeue(timeout=0.3) is None
        for task in (due, delayed):
            stored = await broker.get_task(task.id)
            assert stored is not None
            assert stored.status is TaskStatus.CANCELLED
        assert (await broker.count_by_status())[TaskStatus.CANCELLED] == 2

    # -- copies ------------------------------------------------------------------------------

    async def test_mutating_an_enqueued_task_changes_nothing_stored(
        self, broker: AbstractBroker
    ) -> None:
        task = make_task("original", payload={"nested": {"list": [1, 2]}}, priority=3)
        await broker.enqueue(task)
        expected = task.copy()

        task.name = "changed"
        task.priority = -3
        task.status = TaskStatus.FAILED
        task.payload["added"] = True
        task.payload["nested"]["list"].append(3)

        assert await broker.get_task(task.id) == expected
        assert (await claim(broker)).payload == {"nested": {"list": [1, 2]}}

    async def test_mutating_a_dequeued_task_changes_nothing_stored(
        self, broker: AbstractBroker
    ) -> None:
        await broker.enqueue(make_task(payload={"nested": {"list": [1, 2]}}))
        claimed = await claim(broker)
        expected = claimed.copy()
        token = claimed.claim_token

        claimed.payload["nested"]["list"].append(3)
        claimed.status = TaskStatus.COMPLETED
        claimed.attempts = 99
        claimed.claim_token = "forged"

        assert await broker.get_task(claimed.id) == expected
        assert await broker.mark_complete(claimed.id, None, claim_token=token) is True

    async def test_mutating_a_task_from_get_task_changes_nothing_stored(
        self, broker: AbstractBroker
    ) -> None:
        task = make_task(payload={"nested": {"list": [1, 2]}})
        await broker.enqueue(task)
        claimed = await claim(broker)
        result: dict[str, Any] = {"rows": [{"id": 1}]}
        assert await broker.mark_complete(task.id, result, claim_token=claimed.claim_token)

        # The result handed to mark_complete is not kept by reference...
        result["rows"].append({"id": 2})
        first = await broker.get_task(task.id)
        assert first is not None
        assert first.result == {"rows": [{"id": 1}]}
        # ...and neither is anything get_task returns.
        first.payload["nested"]["list"].append(3)
        first.result["rows"].append({"id": 3})
        first.status = TaskStatus.FAILED

        second = await broker.get_task(task.id)
        assert second is not None
        assert second is not first
        assert second.payload == {"nested": {"list": [1, 2]}}
        assert second.result == {"rows": [{"id": 1}]}
        assert second.status is TaskStatus.COMPLETED

    # -- counts and batches ------------------------------------------------------------------

    async def test_count_by_status_of_an_empty_broker(self, broker: AbstractBroker) -> None:
        assert await broker.count_by_status() == dict.fromkeys(TaskStatus, 0)

    async def test_count_by_status_follows_every_transition(self, broker: AbstractBroker) -> None:
        # Given six tasks, one of them delayed
        tasks = [make_task() for _ in range(5)] + [make_task(delay_seconds=3600)]
        await broker.enqueue_many(tasks)
        assert await broker.count_by_status() == {
            **dict.fromkeys(TaskStatus, 0),
            TaskStatus.PENDING: 6,
        }

        # When four are claimed: one completes, one fails, one is handed back, one still runs,
        # and one pending task is cancelled
        claimed = [await claim(broker) for _ in range(4)]
        await broker.mark_complete(claimed[0].id, None, claim_token=claimed[0].claim_token)
        await broker.mark_failed(claimed[1].id, "E: x", claim_token=claimed[1].claim_token)
        await broker.requeue(claimed[2].id, claim_token=claimed[2].claim_token)
        await broker.update_task_status(tasks[4].id, TaskStatus.CANCELLED)

        # Then every status is counted
        assert await broker.count_by_status() == {
            TaskStatus.PENDING: 2,
            TaskStatus.PROCESSING: 1,
            TaskStatus.COMPLETED: 1,
            TaskStatus.FAILED: 1,
            TaskStatus.CANCELLED: 1,
            TaskStatus.DEAD: 0,
        }

    async def test_enqueue_many_stores_every_task_in_order(self, broker: AbstractBroker) -> None:
        now = utcnow()
        tasks = [make_task(payload={"n": n}, scheduled_at=now) for n in range(20)]

        await broker.enqueue_many(task for task in tasks)  # any iterable, even a generator

        assert (await broker.count_by_status())[TaskStatus.PENDING] == 20
        for task in tasks:
            assert await broker.get_task(task.id) == task
        assert [(await claim(broker)).id for _ in tasks] == [task.id for task in tasks]

    async def test_enqueue_many_of_nothing(self, broker: AbstractBroker) -> None:
        await broker.enqueue_many([])

        assert await broker.count_by_status() == dict.fromkeys(TaskStatus, 0)

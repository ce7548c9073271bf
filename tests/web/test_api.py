"""The JSON API on each broker: every endpoint, auth, read-only mode, CSRF and bad input."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, Header, HTTPException

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.listing import TaskQuery
from katana.task_queue.management import QueueManager
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService
from katana.task_queue.web import CSRF_HEADER, katana_router
from katana.task_queue.web.app import create_dashboard_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

WRITE = {CSRF_HEADER: "1"}


async def succeed(task: Task) -> dict[str, Any]:
    return {"echo": task.payload}


async def fail(task: Task) -> None:
    raise ValueError(f"cannot handle {task.payload}")


@pytest.fixture
async def service(broker: AbstractBroker, clock: FakeClock) -> AsyncIterator[TaskQueueService]:
    service = TaskQueueService(broker, {"ok": succeed, "bad": fail}, clock=clock)
    yield service
    await service.shutdown(timeout=5)


@pytest.fixture
def manager(broker: AbstractBroker, service: TaskQueueService, clock: FakeClock) -> QueueManager:
    return QueueManager(broker, service, clock=clock)


def make_client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://katana.test")


@pytest.fixture
async def client(manager: QueueManager) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(katana_router(manager), prefix="/katana")
    async with make_client(app) as client:
        yield client


async def finish_all(service: TaskQueueService) -> None:
    service.start_workers(2)
    await service.wait_idle(timeout=10)


async def test_enqueue_then_follow_a_task_to_its_result(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    created = await client.post(
        "/katana/api/tasks",
        json={"name": "ok", "payload": {"n": 1}, "priority": 2},
        headers=WRITE,
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    assert created.json()["status"] == "PENDING"

    await finish_all(service)
    detail = await client.get(f"/katana/api/tasks/{task_id}")

    assert detail.status_code == 200
    body = detail.json()
    assert (body["status"], body["result"], body["priority"]) == (
        "COMPLETED",
        {"echo": {"n": 1}},
        2,
    )
    assert body["attempts"] == 1
    assert body["attempts_summary"] == "1 of 1 allowed by retries"
    assert body["finished_at"] is not None


async def test_enqueue_with_a_task_id_is_idempotent(
    client: httpx.AsyncClient, broker: AbstractBroker
) -> None:
    bodies = [{"name": "ok", "payload": {"n": n}, "task_id": "relay-1"} for n in (1, 2)]

    first, again = [await client.post("/katana/api/tasks", json=b, headers=WRITE) for b in bodies]

    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert first.json()["id"] == again.json()["id"] == "relay-1"
    assert again.json()["payload"] == {"n": 1}
    assert (await broker.count_by_status())[TaskStatus.PENDING] == 1


async def test_overview_workers_and_listing(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    for n in range(3):
        await service.add_task("ok", {"n": n})
    await service.add_task("bad", {"n": 99, "tag": "Needle"})
    await finish_all(service)
    await service.add_task("ok", {"n": 100}, delay_seconds=600)

    overview = (await client.get("/katana/api/overview?minutes=5")).json()
    workers = (await client.get("/katana/api/workers")).json()
    completed = (await client.get("/katana/api/tasks?status=COMPLETED&limit=2")).json()
    by_text = (await client.get("/katana/api/tasks", params={"text": "needle"})).json()
    scheduled = (await client.get("/katana/api/scheduled")).json()
    letters = (await client.get("/katana/api/dead-letters")).json()

    assert overview["counts"]["COMPLETED"] == 3
    assert overview["counts"]["FAILED"] == 1
    assert overview["counts"]["PENDING"] == 1
    assert sum(overview["finished_per_minute"]) == 4
    assert [worker["concurrency"] for worker in workers] == [2]
    assert overview["workers"] == workers
    assert (completed["total"], len(completed["tasks"]), completed["limit"]) == (3, 2, 2)
    assert [task["payload"]["n"] for task in by_text["tasks"]] == [99]
    assert [task["payload"]["n"] for task in scheduled["tasks"]] == [100]
    [letter] = letters["tasks"]
    assert letter["error"] == "ValueError: cannot handle {'n': 99, 'tag': 'Needle'}"
    assert "Traceback" in letter["traceback"]


async def test_retry_cancel_delete_and_bulk(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    failed = await service.add_task("bad", {"n": 1})
    await finish_all(service)
    delayed = await service.add_task("ok", {"n": 2}, delay_seconds=600)
    other = await service.add_task("ok", {"n": 3}, delay_seconds=600)

    cancelled = await client.post(f"/katana/api/tasks/{delayed.id}/cancel", headers=WRITE)
    again = await client.post(f"/katana/api/tasks/{delayed.id}/cancel", headers=WRITE)
    deleted = await client.delete(f"/katana/api/tasks/{delayed.id}", headers=WRITE)
    retried = await client.post(f"/katana/api/tasks/{failed.id}/retry", headers=WRITE)
    bulk = await client.post(
        "/katana/api/tasks/bulk",
        json={"action": "cancel", "ids": [other.id, "ghost"]},
        headers=WRITE,
    )

    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "CANCELLED")
    assert again.status_code == 409
    assert "already finished" in again.json()["detail"]
    assert deleted.status_code == 204
    assert (await client.get(f"/katana/api/tasks/{delayed.id}")).status_code == 404
    assert retried.status_code == 200
    assert retried.json()["status"] in ("PENDING", "PROCESSING", "FAILED")
    assert bulk.json() == {"done": [other.id], "skipped": {"ghost": "no task has id 'ghost'"}}


async def test_retry_of_a_task_whose_unique_key_another_task_holds_is_a_409(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    # Given task A failed holding key K, and task B holds K now
    first = await service.add_task("ok", unique_key="K")
    claimed = await service.broker.dequeue(timeout=0)
    assert claimed is not None
    assert await service.broker.mark_failed(first.id, "boom", claim_token=claimed.claim_token)
    second = await service.add_task("ok", unique_key="K")

    # When A is retried
    retried = await client.post(f"/katana/api/tasks/{first.id}/retry", headers=WRITE)

    # Then it is refused as a conflict naming the holder, and A stays FAILED
    assert retried.status_code == 409
    assert retried.json()["detail"] == (
        f"task {first.id} cannot run again: unfinished task {second.id} holds its unique key"
    )
    task = (await client.get(f"/katana/api/tasks/{first.id}")).json()
    assert task["status"] == "FAILED"


async def test_dead_letters_are_listed_by_the_filter_purge_uses(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    # Given two FAILED tasks and a DEAD one
    for n in range(2):
        await service.add_task("bad", {"n": n})
    dead = await service.add_task("ok", {"n": 9})
    await service.broker.update_task_status(dead.id, TaskStatus.DEAD)
    await finish_all(service)

    # When the DEAD ones and those mentioning n=0 are listed, then purged by the same filters
    only_dead = (await client.get("/katana/api/dead-letters", params={"status": "DEAD"})).json()
    by_text = (await client.get("/katana/api/dead-letters", params={"text": '"n":0'})).json()
    refused = await client.get("/katana/api/dead-letters", params={"status": "COMPLETED"})
    purged = await client.post(
        "/katana/api/dead-letters/purge", json={"status": "DEAD"}, headers=WRITE
    )

    # Then each list is what its filter selects, and the purge removed what the list showed
    assert [task["id"] for task in only_dead["tasks"]] == [dead.id]
    assert (by_text["total"], by_text["tasks"][0]["payload"]) == (1, {"n": 0})
    assert refused.status_code == 422
    assert purged.json() == {"count": only_dead["total"]}
    assert (await client.get("/katana/api/dead-letters")).json()["total"] == 2


async def test_redrive_and_purge_dead_letters_by_filter(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    for n in range(3):
        await service.add_task("bad", {"n": n})
    await finish_all(service)

    purged = await client.post(
        "/katana/api/dead-letters/purge", json={"text": '"n":0'}, headers=WRITE
    )
    redriven = await client.post("/katana/api/dead-letters/redrive", json={}, headers=WRITE)

    assert purged.json() == {"count": 1}
    assert redriven.json() == {"count": 2}
    await service.wait_idle(timeout=10)
    letters = (await client.get("/katana/api/dead-letters")).json()
    assert sorted(len(task["errors"]) for task in letters["tasks"]) == [2, 2]


@pytest.mark.parametrize("blank", ["", " ", " \t\n "])
async def test_a_blank_text_filter_is_no_filter_in_the_query_and_the_api(
    client: httpx.AsyncClient, service: TaskQueueService, blank: str
) -> None:
    # The one rule (TaskQuery, the API, the dashboard and the CLI): blank text filters nothing.
    assert TaskQuery(text=blank) == TaskQuery()
    await service.add_task("ok", {"n": 1})
    await service.add_task("bad", {"n": 2})

    listed = (await client.get("/katana/api/tasks", params={"text": blank})).json()

    assert listed["total"] == 2
    assert sorted(task["payload"]["n"] for task in listed["tasks"]) == [1, 2]


async def test_pause_and_resume(client: httpx.AsyncClient, service: TaskQueueService) -> None:
    paused = await client.post("/katana/api/queue/pause", headers=WRITE)
    task = await service.add_task("ok", {"n": 1})
    service.start_workers(1)
    with pytest.raises(TimeoutError):
        await service.wait_for(task.id, timeout=0.3)
    assert (await client.get("/katana/api/overview")).json()["paused"] is True

    resumed = await client.post("/katana/api/queue/resume", headers=WRITE)

    assert paused.json() == {"paused": True}
    assert resumed.json() == {"paused": False}
    assert await service.wait_for(task.id, timeout=5) == {"echo": {"n": 1}}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/katana/api/tasks/nope", None, 404, "no task has id 'nope'"),
        ("POST", "/katana/api/tasks/nope/retry", None, 404, "no task has id"),
        ("DELETE", "/katana/api/tasks/nope", None, 404, "no task has id"),
        ("GET", "/katana/api/tasks?status=BOGUS", None, 422, "status"),
        ("GET", "/katana/api/tasks?limit=0", None, 422, "limit"),
        ("GET", "/katana/api/tasks?limit=501", None, 422, "limit"),
        ("GET", "/katana/api/tasks?offset=-1", None, 422, "offset"),
        ("GET", "/katana/api/tasks?status=COMPLETED&scheduled=true", None, 422, "PENDING"),
        ("GET", "/katana/api/overview?minutes=0", None, 422, "minutes"),
        ("POST", "/katana/api/tasks", {"name": "nope"}, 422, "no executor is registered"),
        ("POST", "/katana/api/tasks", {"name": "ok", "priority": "high"}, 422, "priority"),
        ("POST", "/katana/api/tasks", {"name": "ok", "delay_seconds": -1}, 422, "delay"),
        ("POST", "/katana/api/tasks", {"name": "ok", "payload": [1]}, 422, "payload"),
        ("POST", "/katana/api/tasks", {"name": "ok", "extra": 1}, 422, "extra"),
        ("POST", "/katana/api/tasks", {"name": "ok", "task_id": "a b"}, 422, "task_id must"),
        ("POST", "/katana/api/tasks", {"name": "ok", "task_id": "x" * 201}, 422, "task_id"),
        ("POST", "/katana/api/tasks/bulk", {"action": "explode", "ids": ["x"]}, 422, "action"),
        ("POST", "/katana/api/tasks/bulk", {"action": "retry", "ids": []}, 422, "ids"),
        ("POST", "/katana/api/dead-letters/purge", {"status": "PENDING"}, 422, "status"),
    ],
)
async def test_bad_input_gets_a_clear_4xx(  # one parameter per table column
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    message: str,
) -> None:
    response = await client.request(method, path, json=body, headers=WRITE)

    assert response.status_code == status, response.text
    assert message in response.text


NASTY_BODIES = [
    pytest.param('{"name": "\\ud800"}', id="name-surrogate"),
    pytest.param('{"name": "ok", "priority": "\\ud800"}', id="priority-surrogate"),
    pytest.param('{"name": "ok", "\\udfff": 1}', id="unknown-field-surrogate"),
    pytest.param('{"name": "ok", "priority": 1e400}', id="priority-inf"),
    pytest.param('{"name": "ok", "delay_seconds": NaN}', id="delay-nan"),
    pytest.param('{"name": "%s"}' % ("x" * 100_000), id="name-100k"),
    pytest.param('{"payload": {"k": "%s"}}' % ("x" * 100_000), id="name-missing-big-body"),
]


def assert_bounded_422(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text[:500]
    assert response.json()["detail"]
    assert len(response.content) < 5_000


@pytest.mark.parametrize("content", NASTY_BODIES)
async def test_the_router_answers_unencodable_or_huge_input_with_a_bounded_422_in_any_app(
    client: httpx.AsyncClient, broker: AbstractBroker, content: str
) -> None:
    # The client fixture mounts the router in a bare FastAPI app, with FastAPI's own handlers.
    response = await client.post(
        "/katana/api/tasks",
        content=content,
        headers={**WRITE, "content-type": "application/json"},
    )

    assert_bounded_422(response)
    assert sum((await broker.count_by_status()).values()) == 0


@pytest.mark.parametrize("content", NASTY_BODIES)
async def test_katana_dashboards_app_answers_bad_input_with_a_bounded_422(
    broker: AbstractBroker, content: str
) -> None:
    app = create_dashboard_app(broker)

    async with make_client(app) as client:
        response = await client.post(
            "/api/tasks", content=content, headers={**WRITE, "content-type": "application/json"}
        )

    assert_bounded_422(response)


@pytest.mark.parametrize("path", ["/api/tasks/some-id", "/api/overview"])
async def test_an_unreachable_broker_is_503_with_retry_after(path: str) -> None:
    app = create_dashboard_app(RedisBroker("redis://:s3cret@127.0.0.1:1/0"))  # nothing listens

    async with make_client(app) as client:
        response = await client.get(path)

    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert "unreachable" in response.json()["detail"]
    assert "s3cret" not in response.text


async def test_a_finished_task_cannot_be_cancelled_nor_a_pending_one_deleted(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    pending = await service.add_task("ok", {}, delay_seconds=60)

    response = await client.delete(f"/katana/api/tasks/{pending.id}", headers=WRITE)

    assert response.status_code == 409
    assert "cancel it before deleting it" in response.json()["detail"]
    assert (await service.get_task(pending.id)) is not None


async def test_state_changing_requests_need_the_csrf_header_and_same_origin(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    pending = await service.add_task("ok", {}, delay_seconds=60)

    bare = await client.post(f"/katana/api/tasks/{pending.id}/cancel")
    cross_site = await client.post(
        f"/katana/api/tasks/{pending.id}/cancel",
        headers={**WRITE, "Origin": "https://evil.example"},
    )
    same_site = await client.post(
        f"/katana/api/tasks/{pending.id}/cancel",
        headers={**WRITE, "Origin": "http://katana.test"},
    )

    assert bare.status_code == 403
    assert CSRF_HEADER in bare.json()["detail"]
    assert cross_site.status_code == 403
    assert "cross-site" in cross_site.json()["detail"]
    assert same_site.status_code == 200


async def test_read_only_mode_serves_reads_and_refuses_every_change(
    manager: QueueManager, service: TaskQueueService
) -> None:
    app = FastAPI()
    app.include_router(katana_router(manager, read_only=True))
    pending = await service.add_task("ok", {}, delay_seconds=60)
    changes = [
        ("POST", "/api/tasks", {"name": "ok"}),
        ("POST", f"/api/tasks/{pending.id}/cancel", None),
        ("POST", f"/api/tasks/{pending.id}/retry", None),
        ("DELETE", f"/api/tasks/{pending.id}", None),
        ("POST", "/api/tasks/bulk", {"action": "cancel", "ids": [pending.id]}),
        ("POST", "/api/dead-letters/redrive", {}),
        ("POST", "/api/dead-letters/purge", {}),
        ("POST", "/api/queue/pause", None),
        ("POST", "/api/queue/resume", None),
    ]
    async with make_client(app) as client:
        refused = [
            (await client.request(method, path, json=body, headers=WRITE)).status_code
            for method, path, body in changes
        ]
        listing = await client.get("/api/tasks")

    assert refused == [403] * len(changes)
    assert listing.status_code == 200
    assert listing.json()["total"] == 1
    task = await service.get_task(pending.id)
    assert task is not None
    assert task.status is TaskStatus.PENDING
    assert not await manager.is_paused()


async def test_the_apps_auth_hook_guards_every_route(manager: QueueManager) -> None:
    def require_token(authorization: str | None = Header(default=None)) -> None:
        if authorization != "Bearer s3cret":
            raise HTTPException(401, "missing or wrong token")

    app = FastAPI()
    app.include_router(katana_router(manager, auth=require_token))
    async with make_client(app) as client:
        anonymous = await client.get("/api/overview")
        wrong = await client.get("/api/tasks", headers={"Authorization": "Bearer guess"})
        metrics = await client.get("/metrics")
        allowed = await client.get("/api/overview", headers={"Authorization": "Bearer s3cret"})

    assert (anonymous.status_code, wrong.status_code, metrics.status_code) == (401, 401, 401)
    assert anonymous.json()["detail"] == "missing or wrong token"
    assert allowed.status_code == 200


async def test_openapi_schema_lists_every_endpoint(manager: QueueManager) -> None:
    app = FastAPI()
    app.include_router(katana_router(manager), prefix="/katana")

    paths = app.openapi()["paths"]

    assert {
        "/katana/api/overview",
        "/katana/api/tasks",
        "/katana/api/tasks/{task_id}",
        "/katana/api/tasks/{task_id}/retry",
        "/katana/api/tasks/{task_id}/cancel",
        "/katana/api/tasks/bulk",
        "/katana/api/dead-letters",
        "/katana/api/dead-letters/redrive",
        "/katana/api/dead-letters/purge",
        "/katana/api/scheduled",
        "/katana/api/workers",
        "/katana/api/queue/pause",
        "/katana/api/queue/resume",
        "/katana/metrics",
    } <= set(paths)
    assert "delete" in paths["/katana/api/tasks/{task_id}"]


async def test_totals_count_only_the_tasks_listed_on_redis(redis_url: str, queue_name: str) -> None:
    # Given a Redis queue whose listing indexes name a task whose record is gone (a DEAD one
    # deleted by hand, say), and one good task
    good = Task(name="ok")
    async with RedisBroker(redis_url, queue=queue_name) as broker:
        raw = aioredis.Redis.from_url(redis_url)
        try:
            await broker.enqueue(good)
            await raw.zadd(f"{broker.prefix}:all", {"gone": 1.0})
            await raw.zadd(f"{broker.prefix}:finished:DEAD", {"gone": 1.0})
            app = FastAPI()
            app.include_router(katana_router(QueueManager(broker)), prefix="/katana")

            # When the API lists every task, and the dead letters
            async with make_client(app) as client:
                tasks = (await client.get("/katana/api/tasks")).json()
                letters = (await client.get("/katana/api/dead-letters")).json()
        finally:
            await broker.purge()
            await raw.aclose()

    # Then each total is what the page shows
    assert (tasks["total"], [task["id"] for task in tasks["tasks"]]) == (1, [good.id])
    assert (letters["total"], letters["tasks"]) == (0, [])


async def post_raw(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST ``body`` as Python's json writes it: a lone surrogate becomes the escape "\\ud800",
    which every JSON parser reads back as that lone surrogate."""
    return await client.post(
        path,
        content=json.dumps(body).encode(),
        headers={**WRITE, "content-type": "application/json"},
    )


async def test_a_bulk_action_skips_an_id_with_a_lone_surrogate_and_acts_on_the_others(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    first = await service.add_task("ok", {"n": 1}, delay_seconds=600)
    last = await service.add_task("ok", {"n": 2}, delay_seconds=600)

    bulk = await post_raw(
        client, "/katana/api/tasks/bulk", {"action": "cancel", "ids": [first.id, "\ud800", last.id]}
    )

    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["done"] == [first.id, last.id]
    assert len(bulk.json()["skipped"]) == 1  # the id as the response could encode it
    for task in (first, last):
        stored = await service.get_task(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.CANCELLED


@pytest.mark.parametrize("action", ["purge", "redrive"])
@pytest.mark.parametrize("field", ["text", "name"])
async def test_a_dead_letter_filter_with_a_lone_surrogate_is_a_precise_422(
    client: httpx.AsyncClient, service: TaskQueueService, action: str, field: str
) -> None:
    await service.add_task("bad", {"n": 1})
    await finish_all(service)

    refused = await post_raw(client, f"/katana/api/dead-letters/{action}", {field: "\ud800"})

    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == f"{field} must be valid Unicode (no lone surrogates)"
    assert (await client.get("/katana/api/dead-letters")).json()["total"] == 1

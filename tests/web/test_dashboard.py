"""The dashboard's pages and actions over HTTP, on each broker, mounted at /katana."""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request

from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.management import QueueManager
from katana.task_queue.models import Task, TaskStatus
from katana.task_queue.service import TaskQueueService
from katana.task_queue.web import CSRF_HEADER, katana_router

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from katana.task_queue.broker.base import AbstractBroker
    from katana.task_queue.testing import FakeClock

PREFIX = "/katana"
WRITE = {CSRF_HEADER: "test"}


async def succeed(task: Task) -> dict[str, Any]:
    return {"echo": task.payload.get("n")}


async def fail(task: Task) -> None:
    raise ValueError(f"bad input {task.payload.get('n')}")


@pytest.fixture
async def service(broker: AbstractBroker, clock: FakeClock) -> AsyncIterator[TaskQueueService]:
    service = TaskQueueService(broker, {"ok": succeed, "bad": fail}, clock=clock)
    yield service
    await service.shutdown(timeout=5)


@pytest.fixture
def manager(broker: AbstractBroker, service: TaskQueueService, clock: FakeClock) -> QueueManager:
    return QueueManager(broker, service, clock=clock)


def make_client(
    manager: QueueManager, *, prefix: str = PREFIX, root_path: str = "", **options: Any
) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(katana_router(manager, **options), prefix=prefix)
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url="http://dash")


@pytest.fixture
async def client(manager: QueueManager) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(manager) as client:
        yield client


async def run_all(service: TaskQueueService) -> None:
    service.start_workers(2)
    await service.wait_idle(timeout=10)


def count_shown(page: str, status: TaskStatus) -> int:
    found = re.search(rf'data-count="{status.value}">(\d+)<', page)
    assert found is not None, page
    return int(found.group(1))


def task_ids_listed(page: str) -> list[str]:
    return re.findall(r'<tr data-task-id="([0-9a-f]+)">', page)


# -- pages -------------------------------------------------------------------------------


async def test_overview_shows_counts_waiting_age_finishes_and_workers(
    client: httpx.AsyncClient, service: TaskQueueService, manager: QueueManager, clock: FakeClock
) -> None:
    # Given three tasks that ran (one failed), and one that waits on the paused queue
    for n in range(2):
        await service.add_task("ok", {"n": n})
    await service.add_task("bad", {"n": 9})
    await run_all(service)
    await manager.pause()
    await service.add_task("ok", {"n": 3})
    clock.advance(12)  # less than a worker record lives

    # When the overview is shown
    response = await client.get(f"{PREFIX}/")

    # Then it has the counts, the oldest wait, this minute's finishes and the worker
    assert response.status_code == 200
    page = response.text
    assert count_shown(page, TaskStatus.COMPLETED) == 2
    assert count_shown(page, TaskStatus.FAILED) == 1
    assert count_shown(page, TaskStatus.PENDING) == 1
    assert '<span class="value" id="oldest-pending">12 s</span>' in page
    # (the clock moved 12 s: the finishes may be in the last minute or this one)
    assert sum(int(n) for n in re.findall(r'title="(\d+) finished', page)) == 3
    assert "1 process, 2 slots" in page
    [worker] = await manager.workers()
    assert f"<td>{worker.host}</td><td>{worker.pid}</td>" in page
    assert 'id="queue-state">paused<' in page
    # It loads the vendored htmx under the mount point and sends the CSRF header
    assert f'src="{PREFIX}/static/htmx.min.js"' in page
    assert f'hx-headers=\'{{"{CSRF_HEADER}": "dashboard"}}\'' in page
    # Its live region polls only while the tab is visible
    assert f'hx-get="{PREFIX}/_/overview"' in page
    assert "every 2s [document.visibilityState === 'visible']" in page


async def test_overview_partial_and_pages_work_with_no_workers(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    await service.add_task("ok", {"n": 1})

    for path in ("/", "/_/overview", "/workers", "/_/workers", "/tasks", "/scheduled"):
        response = await client.get(PREFIX + path)
        assert response.status_code == 200, (path, response.text)

    overview = (await client.get(f"{PREFIX}/_/overview")).text
    assert overview.lstrip().startswith('<section id="overview-live"')
    assert "No worker is running on this queue" in overview
    assert "<html" not in overview  # a fragment, for htmx to swap in


async def test_task_list_filters_and_pages(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    # Given five tasks, two of which fail
    for n in range(3):
        await service.add_task("ok", {"n": n})
    failing = [(await service.add_task("bad", {"n": 10 + n})).id for n in range(2)]
    await run_all(service)

    everything = (await client.get(f"{PREFIX}/tasks")).text
    failed = (await client.get(f"{PREFIX}/tasks", params={"status": "FAILED"})).text
    by_name = (await client.get(f"{PREFIX}/tasks", params={"name": "bad"})).text
    by_text = (await client.get(f"{PREFIX}/tasks", params={"text": "bad input 11"})).text
    first_page = (await client.get(f"{PREFIX}/tasks", params={"limit": 2})).text
    second_page = (await client.get(f"{PREFIX}/_/table/tasks?limit=2&offset=2")).text

    assert len(task_ids_listed(everything)) == 5
    assert sorted(task_ids_listed(failed)) == sorted(failing)
    assert sorted(task_ids_listed(by_name)) == sorted(failing)
    assert task_ids_listed(by_text) == [failing[1]]
    assert "ValueError: bad input 11" in by_text
    assert len(task_ids_listed(first_page)) == 2
    assert "1\N{EN DASH}2 of 5" in first_page
    assert f'href="{PREFIX}/tasks?limit=2&amp;offset=2"' in first_page
    assert "3\N{EN DASH}4 of 5" in second_page
    assert set(task_ids_listed(first_page)).isdisjoint(task_ids_listed(second_page))
    # The filter form keeps what was asked for
    assert '<option value="FAILED" selected>' in failed


async def test_task_detail_shows_payload_result_error_traceback_and_attempts(
    client: httpx.AsyncClient, service: TaskQueueService, manager: QueueManager
) -> None:
    good = await service.add_task("ok", {"n": 7})
    bad = await service.add_task("bad", {"n": 8})
    await run_all(service)
    await manager.retry(bad.id)  # a second attempt, failing too
    await service.wait_idle(timeout=10)

    good_page = (await client.get(f"{PREFIX}/tasks/{good.id}")).text
    bad_page = html.unescape((await client.get(f"{PREFIX}/tasks/{bad.id}")).text)

    assert '"echo": 7' in html.unescape(good_page)
    assert 'id="result"' in good_page
    assert 'id="traceback"' not in good_page
    assert "COMPLETED" in good_page
    assert '"n": 8' in bad_page
    assert "ValueError: bad input 8" in bad_page
    assert 'raise ValueError(f"bad input' in bad_page  # the traceback
    assert "Attempt 1 ·" in bad_page
    assert "Attempt 2 ·" in bad_page  # every failed attempt is listed
    assert "1 of 1 allowed by retries" in bad_page  # the retry's run had the full budget again
    assert f'hx-post="{PREFIX}/tasks/{bad.id}/retry"' in bad_page
    # A finished task's region does not poll; a waiting one's does
    assert f'hx-get="{PREFIX}/_/tasks/{bad.id}"' not in bad_page
    waiting = await service.add_task("ok", {"n": 9}, delay_seconds=60)
    waiting_page = (await client.get(f"{PREFIX}/tasks/{waiting.id}")).text
    assert f'hx-get="{PREFIX}/_/tasks/{waiting.id}"' in waiting_page
    assert f'hx-post="{PREFIX}/tasks/{waiting.id}/cancel"' in waiting_page


async def test_workers_page_lists_worker_processes(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    empty = (await client.get(f"{PREFIX}/workers")).text
    await service.add_task("ok", {"n": 1})
    await run_all(service)

    listed = (await client.get(f"{PREFIX}/workers")).text

    assert "No worker is running on this queue" in empty
    assert f'data-worker-id="{service.worker_id}"' in listed
    [worker] = await service.broker.list_workers()
    assert f"<td>{worker.host}</td>" in listed
    assert f"<td>{worker.pid}</td>" in listed
    assert "bad, ok" in listed or "ok, bad" in listed


async def test_dead_letters_and_scheduled_pages(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    dead = await service.add_task("bad", {"n": 1})
    await run_all(service)
    later = await service.add_task("ok", {"n": 2}, delay_seconds=600)

    letters = (await client.get(f"{PREFIX}/dead-letters")).text
    scheduled = (await client.get(f"{PREFIX}/scheduled")).text

    assert task_ids_listed(letters) == [dead.id]
    assert f'hx-post="{PREFIX}/dead-letters/redrive"' in letters
    assert task_ids_listed(scheduled) == [later.id]
    assert 'data-action="cancel"' in scheduled
    assert 'data-action="retry"' not in scheduled


async def test_everything_shown_is_escaped(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    evil = "<script>alert(1)</script>"
    task = await service.add_task("bad", {"n": evil})
    await run_all(service)

    for path in (f"/tasks/{task.id}", "/tasks", "/dead-letters", f"/tasks?text={evil}"):
        page = (await client.get(PREFIX + path)).text
        assert "<script>alert" not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path


# -- bad requests: 4xx with a clear message, never a 500 ---------------------------------------


async def test_an_unknown_task_is_a_404_page(client: httpx.AsyncClient) -> None:
    page = await client.get(f"{PREFIX}/tasks/nope")
    region = await client.get(f"{PREFIX}/_/tasks/nope")

    assert page.status_code == 404
    assert "No task has id &#39;nope&#39;." in page.text
    assert "<html" in page.text
    assert region.status_code == 200  # a task deleted while its page polls
    assert "This task no longer exists" in region.text
    assert "hx-get" not in region.text  # and its page stops polling


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=BOGUS", "status must be one of PENDING, PROCESSING"),
        ("limit=0", "limit must be from 1 to 500, got 0"),
        ("limit=501", "limit must be from 1 to 500, got 501"),
        ("limit=ten", "limit must be an integer, got &#39;ten&#39;"),
        ("offset=-1", "offset must be from 0"),
        ("scheduled=maybe", "scheduled must be yes, no or empty"),
        ("status=FAILED&scheduled=yes", "scheduled only applies to PENDING tasks"),
        ("name=" + "x" * 201, "name must be at most 200 characters"),
        # What the page repeats of a bad value is cut: it may be of any length
        ("status=" + "x" * 10_000, "status must be one of PENDING"),
        ("limit=" + "9" * 4000, "limit must be from 1 to 500"),
        ("limit=" + "x" * 10_000, "limit must be an integer"),
        ("scheduled=" + "x" * 10_000, "scheduled must be yes, no or empty"),
    ],
)
async def test_an_invalid_filter_is_a_400_page(
    client: httpx.AsyncClient, query: str, message: str
) -> None:
    page = await client.get(f"{PREFIX}/tasks?{query}")
    region = await client.get(f"{PREFIX}/_/table/tasks?{query}")

    assert page.status_code == 400
    assert message in page.text
    assert region.status_code == 400
    assert html.unescape(message) in region.json()["detail"]
    assert len(region.json()["detail"]) < 400


async def test_an_unknown_listing_or_static_file_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{PREFIX}/_/table/everything")).status_code == 404
    assert (await client.get(f"{PREFIX}/static/secret.py")).status_code == 404
    assert (await client.get(f"{PREFIX}/static/..%2F__init__.py")).status_code == 404


async def test_static_files_are_served_from_the_package(client: httpx.AsyncClient) -> None:
    htmx = await client.get(f"{PREFIX}/static/htmx.min.js")
    css = await client.get(f"{PREFIX}/static/katana.css")
    license_ = await client.get(f"{PREFIX}/static/htmx.LICENSE")

    assert htmx.status_code == 200
    assert 'version:"2.0.11"' in htmx.text
    assert htmx.headers["content-type"].startswith("text/javascript")
    assert css.headers["content-type"].startswith("text/css")
    assert "Zero-Clause BSD" in license_.text


# -- actions -------------------------------------------------------------------------------


async def test_retry_cancel_and_delete_one_task(
    client: httpx.AsyncClient, service: TaskQueueService, manager: QueueManager
) -> None:
    failed = await service.add_task("bad", {"n": 1})
    await run_all(service)
    await service.shutdown(timeout=5)  # so the retried task stays PENDING
    later = await service.add_task("ok", {"n": 2}, delay_seconds=600)

    retried = await client.post(f"{PREFIX}/tasks/{failed.id}/retry", headers=WRITE)
    cancelled = await client.post(f"{PREFIX}/tasks/{later.id}/cancel", headers=WRITE)
    deleted = await client.post(f"{PREFIX}/tasks/{later.id}/delete", headers=WRITE)

    assert retried.status_code == 200
    assert 'data-status="PENDING"' in retried.text  # the task's region, updated
    assert "katanaFlash" in retried.headers["hx-trigger"]
    assert (await manager.task(failed.id)).status is TaskStatus.PENDING
    assert cancelled.status_code == 200
    assert 'data-status="CANCELLED"' in cancelled.text
    assert "Task cancelled" in cancelled.headers["hx-trigger"]
    assert deleted.status_code == 204
    assert deleted.headers["hx-redirect"] == f"{PREFIX}/tasks"
    assert (await client.get(f"{PREFIX}/tasks/{later.id}")).status_code == 404


async def test_actions_refused_by_the_tasks_state_say_why(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    waiting = await service.add_task("ok", {"n": 1}, delay_seconds=600)

    retry = await client.post(f"{PREFIX}/tasks/{waiting.id}/retry", headers=WRITE)
    delete = await client.post(f"{PREFIX}/tasks/{waiting.id}/delete", headers=WRITE)
    missing = await client.post(f"{PREFIX}/tasks/ghost/cancel", headers=WRITE)

    assert retry.status_code == 409
    assert "only finished tasks retry" in retry.json()["detail"]
    assert delete.status_code == 409
    assert "cancel it before deleting it" in delete.json()["detail"]
    assert missing.status_code == 404
    assert "no task has id 'ghost'" in missing.json()["detail"]


async def test_bulk_actions_on_checked_tasks(
    client: httpx.AsyncClient, service: TaskQueueService, manager: QueueManager
) -> None:
    first = await service.add_task("ok", {"n": 1}, delay_seconds=600)
    second = await service.add_task("ok", {"n": 2}, delay_seconds=600)
    form = {"view": "scheduled", "action": "cancel", "ids": [first.id, second.id, "ghost"]}

    response = await client.post(f"{PREFIX}/tasks/bulk", data=form, headers=WRITE)

    assert response.status_code == 200
    assert response.text.lstrip().startswith('<section id="table-live"')
    assert task_ids_listed(response.text) == []  # neither is scheduled any more
    assert "Cancel: 2 done, 1 skipped (no task has id 'ghost')" in response.headers["hx-trigger"]
    for task in (first, second):
        assert (await manager.task(task.id)).status is TaskStatus.CANCELLED
    deleted = await client.post(
        f"{PREFIX}/tasks/bulk",
        data={"view": "tasks", "action": "delete", "ids": [first.id], "status": "CANCELLED"},
        headers=WRITE,
    )
    assert task_ids_listed(deleted.text) == [second.id]  # the table keeps its filter


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"view": "scheduled", "action": "retry", "ids": "x"}, "action must be one of cancel"),
        ({"view": "tasks", "action": "explode", "ids": "x"}, "action must be one of retry"),
        ({"view": "tasks", "action": "retry"}, "select at least one task first"),
        ({"action": "retry", "ids": "x", "status": "BOGUS"}, "status must be one of"),
    ],
)
async def test_a_bad_bulk_form_is_a_400(
    client: httpx.AsyncClient, form: dict[str, str], message: str
) -> None:
    response = await client.post(f"{PREFIX}/tasks/bulk", data=form, headers=WRITE)

    assert response.status_code == 400
    assert message in response.json()["detail"]


async def test_redrive_and_purge_dead_letters_by_filter(
    client: httpx.AsyncClient, service: TaskQueueService, manager: QueueManager
) -> None:
    for n in range(4):
        await service.add_task("bad", {"n": n, "group": "a" if n % 2 else "b"})
    await run_all(service)
    await service.shutdown(timeout=5)

    purged = await client.post(
        f"{PREFIX}/dead-letters/purge",
        data={"text": '"group":"a"', "expected": "2"},
        headers=WRITE,
    )
    redriven = await client.post(
        f"{PREFIX}/dead-letters/redrive", data={"status": "FAILED", "name": "bad"}, headers=WRITE
    )

    assert purged.status_code == 200
    assert "Purged: 2 tasks" in purged.headers["hx-trigger"]
    assert redriven.status_code == 200
    assert "Queued again: 2 tasks" in redriven.headers["hx-trigger"]
    assert task_ids_listed(redriven.text) == []  # no dead letters left
    counts = await manager.broker.count_by_status()
    assert counts[TaskStatus.PENDING] == 2
    assert counts[TaskStatus.FAILED] == 0


async def _dead_letter_mix(service: TaskQueueService) -> dict[str, Task]:
    """FAILED bad tasks of groups a and b, a DEAD one of group a, a COMPLETED one of group a."""
    tasks = {
        label: await service.add_task(name, {"n": n, "group": group})
        for label, name, n, group in [
            ("failed_a", "bad", 1, "a"),
            ("failed_b", "bad", 2, "b"),
            ("failed_a2", "bad", 3, "a"),
            ("dead_a", "ok", 4, "a"),
            ("done_a", "ok", 5, "a"),
        ]
    }
    await service.broker.update_task_status(tasks["dead_a"].id, TaskStatus.DEAD)
    await run_all(service)
    await service.shutdown(timeout=5)
    return tasks


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["failed_a", "failed_b", "failed_a2", "dead_a"]),
        ({"status": "DEAD"}, ["dead_a"]),
        ({"status": "FAILED"}, ["failed_a", "failed_b", "failed_a2"]),
        ({"name": "ok"}, ["dead_a"]),
        ({"text": '"group":"a"'}, ["failed_a", "failed_a2", "dead_a"]),
        ({"status": "FAILED", "text": '"group":"a"'}, ["failed_a", "failed_a2"]),
    ],
    ids=["none", "dead", "failed", "name", "text", "failed-and-text"],
)
async def test_the_dead_letters_list_count_and_purge_use_one_filter(
    client: httpx.AsyncClient,
    service: TaskQueueService,
    params: dict[str, str],
    expected: list[str],
) -> None:
    # Given dead letters of both statuses, names and groups, and a completed task
    tasks = await _dead_letter_mix(service)
    everything = {task.id for task in tasks.values()}
    wanted = {tasks[label].id for label in expected}

    # When the page is filtered, Then it lists, counts and offers to purge just those
    page = html.unescape((await client.get(f"{PREFIX}/dead-letters", params=params)).text)
    assert set(task_ids_listed(page)) == wanted
    assert f"of {len(wanted)}" in page
    assert f"All {len(wanted)} matching" in page
    assert f"Delete the {len(wanted)} dead letter(s) matching this filter?" in page

    # When those are purged with the count shown, Then exactly they are gone
    purged = await client.post(
        f"{PREFIX}/dead-letters/purge",
        data={**params, "expected": str(len(wanted))},
        headers=WRITE,
    )
    assert purged.status_code == 200
    count = len(wanted)
    assert f"Purged: {count} task{'' if count == 1 else 's'}" in purged.headers["hx-trigger"]
    left = {task_id for task_id in everything if await service.get_task(task_id) is not None}
    assert left == everything - wanted


async def test_a_purge_refuses_when_more_tasks_match_than_the_page_showed(
    client: httpx.AsyncClient, service: TaskQueueService
) -> None:
    # Given three FAILED dead letters, of which the page showed one (one failed since)
    tasks = await _dead_letter_mix(service)

    # When the purge says it showed fewer than match now
    purged = await client.post(
        f"{PREFIX}/dead-letters/purge", data={"status": "FAILED", "expected": "1"}, headers=WRITE
    )

    # Then nothing is deleted, and it says why
    assert purged.status_code == 409
    assert "3 tasks match the filter now, not 1" in purged.json()["detail"]
    for task in tasks.values():
        assert await service.get_task(task.id) is not None


@pytest.mark.parametrize(
    ("method", "path", "data", "message"),
    [
        ("GET", "/dead-letters?status=COMPLETED", None, "dead letters are FAILED or DEAD"),
        ("GET", "/_/table/dead-letters?scheduled=yes", None, "dead letters are FAILED or DEAD"),
        ("POST", "/dead-letters/purge", {"status": "FAILED"}, "expected"),
        ("POST", "/dead-letters/purge", {"expected": "9" * 5000}, "expected"),
        ("POST", "/dead-letters/redrive", {"status": "PENDING"}, "dead letters are"),
    ],
)
async def test_bad_dead_letter_filters_are_a_400(
    client: httpx.AsyncClient,
    service: TaskQueueService,
    method: str,
    path: str,
    data: dict[str, str] | None,
    message: str,
) -> None:
    response = await client.request(method, PREFIX + path, data=data, headers=WRITE)

    assert response.status_code == 400
    assert message in response.text


async def test_pause_and_resume_from_the_overview(
    client: httpx.AsyncClient, manager: QueueManager
) -> None:
    paused = await client.post(f"{PREFIX}/queue/pause", headers=WRITE)

    assert paused.status_code == 200
    assert '<span class="badge paused" id="queue-state">paused</span>' in paused.text
    assert f'hx-post="{PREFIX}/queue/resume"' in paused.text
    assert await manager.is_paused()
    assert "paused" in (await client.get(f"{PREFIX}/")).text
    resumed = await client.post(f"{PREFIX}/queue/resume", headers=WRITE)
    assert '<span class="badge running" id="queue-state">running</span>' in resumed.text
    assert not await manager.is_paused()


# -- protections ---------------------------------------------------------------------------

ACTIONS = [
    "/queue/pause",
    "/queue/resume",
    "/tasks/{id}/retry",
    "/tasks/{id}/cancel",
    "/tasks/{id}/delete",
    "/tasks/bulk",
    "/dead-letters/redrive",
    "/dead-letters/purge",
]


@pytest.mark.parametrize("action", ACTIONS)
async def test_a_post_without_the_csrf_header_or_from_another_site_is_403(
    client: httpx.AsyncClient, service: TaskQueueService, manager: QueueManager, action: str
) -> None:
    task = await service.add_task("ok", {"n": 1}, delay_seconds=600)
    path = PREFIX + action.format(id=task.id)
    form = {"view": "tasks", "action": "cancel", "ids": task.id}

    bare = await client.post(path, data=form)
    cross_site = await client.post(
        path, data=form, headers={**WRITE, "Origin": "https://evil.example"}
    )

    assert bare.status_code == 403
    assert CSRF_HEADER in bare.json()["detail"]
    assert cross_site.status_code == 403
    assert "cross-site" in cross_site.json()["detail"]
    assert (await manager.task(task.id)).status is TaskStatus.PENDING
    assert not await manager.is_paused()


async def test_read_only_hides_the_actions_and_refuses_them(
    manager: QueueManager, service: TaskQueueService
) -> None:
    failed = await service.add_task("bad", {"n": 1})
    await run_all(service)
    later = await service.add_task("ok", {"n": 2}, delay_seconds=600)

    async with make_client(manager, read_only=True) as client:
        pages = [
            (await client.get(PREFIX + path)).text
            for path in (
                "/",
                "/tasks",
                f"/tasks/{failed.id}",
                f"/tasks/{later.id}",
                "/dead-letters",
                "/scheduled",
                "/workers",
            )
        ]
        refused = [
            await client.post(PREFIX + action.format(id=failed.id), headers=WRITE)
            for action in ACTIONS
        ]

    for page in pages:
        assert "hx-post" not in page
        assert 'name="ids"' not in page
        assert "read-only" in page
    assert {response.status_code for response in refused} == {403}
    assert "read-only" in refused[0].json()["detail"]
    assert (await manager.task(failed.id)).status is TaskStatus.FAILED


async def test_the_apps_auth_hook_guards_the_dashboard(manager: QueueManager) -> None:
    def auth(request: Request) -> None:
        if request.headers.get("authorization") != "Bearer let-me-in":
            raise HTTPException(401, "who are you?")

    async with make_client(manager, auth=auth) as client:
        refused = await client.get(f"{PREFIX}/")
        static = await client.get(f"{PREFIX}/static/katana.css")
        allowed = await client.get(f"{PREFIX}/", headers={"authorization": "Bearer let-me-in"})

    assert refused.status_code == 401
    assert static.status_code == 401
    assert allowed.status_code == 200


# -- where it is mounted -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "root_path", "base"),
    [("", "", ""), ("/ops/queues/emails", "", "/ops/queues/emails"), (PREFIX, "/proxy", "/proxy")],
)
async def test_links_work_wherever_the_router_is_mounted(
    manager: QueueManager, service: TaskQueueService, prefix: str, root_path: str, base: str
) -> None:
    task = await service.add_task("ok", {"n": 1}, delay_seconds=600)
    expected = base if root_path == "" else root_path + prefix
    url = f"{root_path}{prefix}/tasks/{task.id}" if root_path else f"{prefix}/tasks/{task.id}"

    async with make_client(manager, prefix=prefix, root_path=root_path) as client:
        page = (await client.get(url)).text
        overview = (await client.get(f"{root_path}{prefix}/")).text

    assert f'href="{expected}/static/katana.css"' in page
    assert f'hx-post="{expected}/tasks/{task.id}/cancel"' in page
    assert f'hx-get="{expected}/_/tasks/{task.id}"' in page
    assert f'href="{expected}/tasks"' in overview
    assert f'hx-get="{expected}/_/overview"' in overview


# -- the broker down ---------------------------------------------------------------------------


@pytest.fixture
async def unreachable() -> AsyncIterator[QueueManager]:
    """A manager whose Redis does not answer (nothing listens on port 1)."""
    broker = RedisBroker("redis://127.0.0.1:1/0", queue="nowhere")
    yield QueueManager(broker)
    await broker.close()


@pytest.mark.parametrize(
    "path", ["/", "/tasks", "/tasks/abc", "/workers", "/dead-letters", "/scheduled"]
)
async def test_an_unreachable_broker_shows_a_banner(unreachable: QueueManager, path: str) -> None:
    live_path = {
        "/": "/_/overview",
        "/tasks": "/_/table/tasks",
        "/tasks/abc": "/_/tasks/abc",
        "/workers": "/_/workers",
        "/dead-letters": "/_/table/dead-letters",
        "/scheduled": "/_/table/scheduled",
    }[path]

    async with make_client(unreachable) as client:
        page = await client.get(PREFIX + path)
        region = await client.get(PREFIX + live_path)

    assert page.status_code == 503
    assert "The broker is unreachable." in page.text
    assert "127.0.0.1:1" in page.text
    # The live region answers 200, so htmx swaps the banner in, and keeps polling
    assert region.status_code == 200
    assert "The broker is unreachable." in region.text
    assert f'hx-get="{PREFIX}{live_path}' in region.text


async def test_an_action_on_an_unreachable_or_closed_broker_is_a_503(
    unreachable: QueueManager,
) -> None:
    closed = InMemoryBroker()
    await closed.close()

    for manager in (unreachable, QueueManager(closed)):
        async with make_client(manager) as client:
            paused = await client.post(f"{PREFIX}/queue/pause", headers=WRITE)
            page = await client.get(f"{PREFIX}/")
        assert paused.status_code == 503
        assert page.status_code == 503
        assert "The broker is unreachable." in page.text

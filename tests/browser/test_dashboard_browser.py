"""The dashboard in real headless Chromium, against a real server whose workers run the tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from playwright.sync_api import Page, expect

from katana.task_queue.broker.redis import RedisBroker
from katana.task_queue.management import QueueManager
from katana.task_queue.web import katana_router

from ._app import PREFIX, Controls
from ._server import RunningServer

if TYPE_CHECKING:
    from .conftest import Api


#: The status shown at the top of a task's page.
STATUS = "#task-live .task-head [data-status]"


def test_counts_move_and_tasks_complete_without_reloading(
    page: Page, api: Api, controls: Controls
) -> None:
    # Given the overview, open on an idle queue
    page.goto(f"{api.dashboard}/")
    completed = page.locator('[data-count="COMPLETED"]')
    processing = page.locator('[data-count="PROCESSING"]')
    expect(completed).to_have_text("0")
    expect(page.locator("#worker-count")).to_contain_text("1 process, 4 slots")

    # When a slow task and three quick ones are enqueued
    slow = api.enqueue("slow")
    for n in range(3):
        api.enqueue("quick", {"n": n})

    # Then the live counts show the quick ones done and the slow one running
    expect(completed).to_have_text("3")
    expect(processing).to_have_text("1")
    expect(page.locator("#worker-count")).to_contain_text("1 busy")

    # And its page shows its progress, then its result once it is let go
    page.goto(f"{api.dashboard}/tasks/{slow}")
    expect(page.locator(STATUS)).to_have_text("PROCESSING")
    expect(page.locator(".progress")).to_contain_text("50% · waiting for the test to let go")
    controls.release_slow.set()
    expect(page.locator(STATUS)).to_have_text("COMPLETED")
    expect(page.locator("#result")).to_contain_text('"released"')
    page.goto(f"{api.dashboard}/")
    expect(completed).to_have_text("4")
    expect(processing).to_have_text("0")


def test_a_failed_tasks_traceback_and_retry_until_it_completes(page: Page, api: Api) -> None:
    # Given a task whose first attempt fails, watched in the list of failed tasks
    page.goto(f"{api.dashboard}/tasks?status=FAILED")
    flaky = api.enqueue("flaky", {"order": 17})
    row = page.locator(f'tr[data-task-id="{flaky}"]')
    expect(row).to_contain_text("ValueError: flaky: the first attempt always fails")

    # When its page is opened from the list
    row.locator("a").click()

    # Then it shows the error, the traceback and the payload
    expect(page.locator(STATUS)).to_have_text("FAILED")
    traceback = page.locator("#traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text('raise ValueError("flaky: the first attempt always fails")')
    expect(page.locator("#payload")).to_contain_text('"order": 17')

    # When Retry is clicked, it runs again and completes
    page.locator("#retry-button").click()
    expect(page.locator("#flash")).to_have_text("Task queued again")
    expect(page.locator(STATUS)).to_have_text("COMPLETED")
    expect(page.locator("#result")).to_contain_text("worked on the second attempt")
    # (a retry gives the task its whole retry budget again; its history keeps both attempts)
    expect(page.locator("#attempts")).to_contain_text("1 of 1 allowed by retries")
    expect(page.locator("#attempt-history")).to_contain_text("Attempt 1")
    assert api.task(flaky)["status"] == "COMPLETED"


def test_cancel_delayed_tasks_one_and_in_bulk_then_delete_them(page: Page, api: Api) -> None:
    # Given three tasks due in an hour, listed as scheduled
    delayed = [api.enqueue("quick", {"n": n}, delay_seconds=3600) for n in range(3)]
    page.goto(f"{api.dashboard}/scheduled")
    for task_id in delayed:
        expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_be_visible()

    # When the first is cancelled from its page
    page.locator(f'tr[data-task-id="{delayed[0]}"] a').click()
    expect(page.locator(STATUS)).to_have_text("PENDING")
    page.locator("#cancel-button").click()

    # Then it is CANCELLED
    expect(page.locator(STATUS)).to_have_text("CANCELLED")
    expect(page.locator("#flash")).to_have_text("Task cancelled")
    assert api.task(delayed[0])["status"] == "CANCELLED"

    # When the other two are checked on the scheduled page and cancelled in bulk
    page.goto(f"{api.dashboard}/scheduled")
    page.locator("[data-select-all]").check()
    page.locator('button[data-action="cancel"]').click()

    # Then none is scheduled any more
    expect(page.locator("#flash")).to_have_text("Cancel: 2 done")
    expect(page.locator("#table-live")).to_contain_text("No tasks here.")
    assert {api.task(task_id)["status"] for task_id in delayed} == {"CANCELLED"}

    # And deleting all three from the filtered task list (after confirming) empties it
    page.goto(f"{api.dashboard}/tasks?status=CANCELLED")
    expect(page.locator("#table-total")).to_contain_text("1\N{EN DASH}3 of 3")
    page.locator("[data-select-all]").check()
    page.locator('button[data-action="delete"]').click()
    expect(page.locator("#flash")).to_have_text("Delete: 3 done")
    expect(page.locator("#table-live")).to_contain_text("No tasks here.")


def test_a_banner_when_the_broker_or_the_server_is_unreachable(page: Page) -> None:
    # Given a dashboard whose Redis does not answer (nothing listens on port 1)
    app = FastAPI()
    manager = QueueManager(RedisBroker("redis://127.0.0.1:1/0", queue="nowhere"))
    app.include_router(katana_router(manager), prefix=PREFIX)
    server = RunningServer(app)
    try:
        # When its overview is opened, the banner says so (and the page keeps polling)
        page.goto(f"{server.url}{PREFIX}/")
        banner = page.locator("#overview-live .banner.broker-down")
        expect(banner).to_contain_text("The broker is unreachable.")
        with page.expect_response(lambda response: "/_/overview" in response.url):
            pass
        expect(banner).to_be_visible()
    finally:
        server.stop()

    # When the dashboard's own server goes away, the next poll says that instead
    expect(page.locator("#flash")).to_contain_text("The dashboard server does not answer")


def test_live_regions_poll_only_while_the_tab_is_visible(page: Page, api: Api) -> None:
    # Given the overview, with the page's timers under the test's control
    page.clock.install()
    page.goto(f"{api.dashboard}/")
    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if "/_/" in request.url else None)
    with page.expect_request(lambda request: "/_/overview" in request.url):
        page.clock.run_for(2_100)

    # When the tab is hidden for a minute
    page.evaluate(
        "Object.defineProperty(document, 'visibilityState', "
        "{get: () => 'hidden', configurable: true})"
    )
    polls.clear()
    page.clock.run_for(60_000)

    # Then it polls again only once the tab is shown, at once
    with page.expect_request(lambda request: "/_/overview" in request.url):
        page.evaluate(
            "Object.defineProperty(document, 'visibilityState', "
            "{get: () => 'visible', configurable: true});"
            "document.dispatchEvent(new Event('visibilitychange'))"
        )
    assert len(polls) == 1, polls  # requests are reported in order: none while hidden

"""Fixtures of the browser tests: Debian's Chromium through Playwright, and a live server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from katana.task_queue.web import CSRF_HEADER

from ._app import PREFIX, Controls, build_app
from ._server import RunningServer

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Debian's package (`apt-get install chromium`); Playwright's own download is never used.
CHROMIUM = Path("/usr/bin/chromium")
#: How long an expectation waits: the dashboard polls every 2 s.
EXPECT_TIMEOUT_MS = 10_000


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The Chromium binary; the tests skip locally without it, and fail under CI=true."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: the browser tests need Debian's chromium package"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, and CI=true requires them (.ci/run installs it)")
        pytest.skip(message)
    return str(CHROMIUM)


# Module-scoped, not session-scoped: the sync Playwright API holds an event loop in this thread
# while it runs, and the async tests of the modules after this one need the thread's loop.
@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Browser]:
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    # Confirmation dialogs (delete, purge) are accepted, as a user who meant it would.
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()


@pytest.fixture
def controls() -> Controls:
    return Controls()


@pytest.fixture
def server(controls: Controls) -> Iterator[RunningServer]:
    running = RunningServer(build_app(controls))
    try:
        yield running
    finally:
        controls.release_slow.set()
        running.stop()


class Api:
    """The server's JSON API: how the tests enqueue tasks and check what the pages say."""

    def __init__(self, server: RunningServer) -> None:
        self.dashboard = f"{server.url}{PREFIX}"
        self._client = httpx.Client(base_url=f"{self.dashboard}/api", timeout=10)

    def enqueue(self, name: str, payload: dict[str, Any] | None = None, **options: Any) -> str:
        response = self._client.post(
            "/tasks", json={"name": name, "payload": payload, **options}, headers={CSRF_HEADER: "1"}
        )
        assert response.status_code == 201, response.text
        task_id: str = response.json()["id"]
        return task_id

    def task(self, task_id: str) -> dict[str, Any]:
        response = self._client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def api(server: RunningServer) -> Iterator[Api]:
    client = Api(server)
    yield client
    client.close()

"""A child of ``katana worker -p N`` stops when its parent is gone, without prctl too."""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import TYPE_CHECKING

from katana.task_queue import cli

if TYPE_CHECKING:
    import pytest


async def test_the_fallback_returns_once_the_child_is_reparented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a parent pid 4242 that the child sees twice, then init (what os.getppid says once
    # the parent died)
    seen = itertools.chain([4242, 4242], itertools.repeat(1))
    monkeypatch.setattr(os, "getppid", lambda: next(seen))
    monkeypatch.setattr(cli, "_PARENT_POLL_SECONDS", 0.0)

    # When the child watches its parent, Then the watch ends
    await asyncio.wait_for(cli._wait_orphaned(4242), timeout=5)


async def test_the_fallback_keeps_waiting_while_the_parent_lives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "getppid", lambda: 4242)
    monkeypatch.setattr(cli, "_PARENT_POLL_SECONDS", 0.0)

    watch = asyncio.create_task(cli._wait_orphaned(4242))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not watch.done()
    watch.cancel()

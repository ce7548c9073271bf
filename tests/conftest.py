"""Fixtures shared by every test package: the real services the tests talk to."""

from __future__ import annotations

import os
import uuid

import pytest


def _service_url(variable: str, what: str) -> str:
    """The service's URL from ``variable``; skipped locally when unset, an error under CI."""
    url = os.environ.get(variable)
    if not url:
        message = f"{variable} is not set: these tests need a running {what}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, and CI=true requires them")
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis, e.g. ``redis://127.0.0.1:6379/0`` (``KATANA_TEST_REDIS_URL``)."""
    return _service_url("KATANA_TEST_REDIS_URL", "Redis server")


@pytest.fixture
def queue_name() -> str:
    """A queue name no other test uses, so tests sharing one Redis never see each other."""
    return f"test-{uuid.uuid4().hex[:12]}"

"""Lifecycle tests run on the shared ``broker`` fixture (tests/conftest.py): memory and Redis."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from ._clockwork import RetryLog

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def retries() -> Iterator[RetryLog]:
    """Every retry the workers schedule, with its delay (see ``_clockwork.finish``)."""
    log = RetryLog()
    katana_logger = logging.getLogger("katana.task_queue")
    level = katana_logger.level
    katana_logger.setLevel(logging.INFO)
    katana_logger.addHandler(log)
    yield log
    katana_logger.removeHandler(log)
    katana_logger.setLevel(level)

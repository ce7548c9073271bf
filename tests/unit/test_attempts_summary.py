"""What the CLI, the API and the dashboard say about a task's attempts."""

from __future__ import annotations

import pytest

from katana.task_queue.management import attempts_summary
from katana.task_queue.models import Task


@pytest.mark.parametrize(
    ("attempts", "max_retries", "shown"),
    [
        (0, 0, "0 of 1 allowed by retries"),
        (1, 2, "1 of 3 allowed by retries"),
        (3, 2, "3 of 3 allowed by retries"),
        # max_retries=0 and a killed worker: the second run came from the lost delivery
        (2, 0, "2 (1 allowed by retries; 1 more after a lost worker)"),
        (5, 1, "5 (2 allowed by retries; 3 more after a lost worker)"),
    ],
)
def test_attempts_beyond_the_retries_are_put_down_to_lost_workers(
    attempts: int, max_retries: int, shown: str
) -> None:
    task = Task(name="t", attempts=attempts, max_retries=max_retries)
    assert attempts_summary(task) == shown

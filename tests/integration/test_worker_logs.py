"""`katana worker --log-format json`: one JSON object per line, task lines naming their task."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson

from ._processes import REPO_ROOT


def test_worker_json_logs_name_the_task_of_each_line_logged_while_it_runs() -> None:
    # Given an app whose queue holds a task that logs and succeeds, and one that fails
    # When a burst worker runs them with JSON logs
    done = subprocess.run(
        [sys.executable, "-m", "katana.task_queue.cli", "worker",
         "tests.integration.admin_app:seeded", "--burst", "--log-format", "json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip

    # Then every line on stderr but the banner's is a JSON object
    assert done.returncode == 0, done.stderr
    banner = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert banner[0].startswith("katana 0.1.0 worker on ")
    assert banner[-1] == "  tasks:       fail, send_email, welcome"
    assert len(banner) == 6
    lines: list[dict[str, Any]] = [
        orjson.loads(line) for line in done.stderr.splitlines() if line.startswith("{")
    ]
    for line in lines:
        assert {"time", "level", "logger", "message", "task_id", "task_name", "katana_event"} <= (
            line.keys()
        )
    # And the app's own lines carry the id of the task they were logged in
    sending = next(line for line in lines if line["logger"] == "admin_app" and "sending" in
                   line["message"])  # fmt: skip
    assert sending["message"] == "sending to ann@example.com"
    assert sending["task_name"] == "send_email"
    warning = next(line for line in lines if line["message"] == "about to fail")
    assert (warning["task_name"], warning["level"]) == ("fail", "WARNING")
    failed = next(line for line in lines if line["katana_event"] == "task_failed")
    assert failed["task_id"] == warning["task_id"] != sending["task_id"]
    assert "ValueError: bad input 7" in failed["exc_info"]
    started = next(line for line in lines if line["katana_event"] == "workers_started")
    assert started["task_id"] is None

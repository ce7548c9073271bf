"""Lifecycle event listeners: called on every event, and dropped with the object they belong to."""

from __future__ import annotations

import gc
import logging

from katana.task_queue._events import add_event_listener, log_task_event, remove_event_listener
from katana.task_queue.models import Task


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def observe(self, event: str, task: Task) -> None:
        self.events.append((event, task.id))


def test_listeners_see_events_even_when_the_log_level_hides_them() -> None:
    recorder = Recorder()
    add_event_listener(recorder.observe)
    add_event_listener(recorder.observe)  # once only
    task = Task(name="t")
    try:
        log_task_event(logging.DEBUG, "task_started", task, "started")
    finally:
        remove_event_listener(recorder.observe)
    log_task_event(logging.DEBUG, "task_completed", task, "completed")

    assert recorder.events == [("task_started", task.id)]


def test_a_listener_that_raises_does_not_stop_the_others() -> None:
    def broken(event: str, task: Task) -> None:
        raise RuntimeError("listener bug")

    recorder = Recorder()
    add_event_listener(broken)
    add_event_listener(recorder.observe)
    try:
        log_task_event(logging.DEBUG, "task_created", Task(name="t"), "created")
    finally:
        remove_event_listener(broken)
        remove_event_listener(recorder.observe)

    assert [event for event, _ in recorder.events] == ["task_created"]


def test_a_collected_objects_listener_is_dropped() -> None:
    seen: list[str] = []

    class Counting:
        def observe(self, event: str, task: Task) -> None:
            seen.append(event)

    counting = Counting()
    add_event_listener(counting.observe)
    del counting
    gc.collect()
    log_task_event(logging.DEBUG, "task_created", Task(name="t"), "created")

    assert seen == []

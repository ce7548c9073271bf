"""The exceptions Katana raises.

```
KatanaError
├── UnknownTaskError(KatanaError, ValueError)     add_task() with an unregistered name
├── InvalidTaskError(KatanaError, ValueError)     bad priority / delay, or a payload that isn't JSON
├── ConfigurationError(KatanaError, ValueError)   a bad broker URL or queue name, a missing extra
├── ServiceStateError(KatanaError, RuntimeError)  e.g. start_workers() after shutdown()
├── TaskNotFoundError(KatanaError, KeyError)      wait_for(), management: no task has this id
├── TaskStateError(KatanaError, ValueError)       management: not allowed in the task's status
├── TaskTimeoutError(KatanaError, TimeoutError)   an attempt ran past its timeout_seconds
├── TaskFailedError                               wait_for(): the task ended FAILED or DEAD
├── TaskCancelledError                            wait_for(): the task was cancelled
├── Retry                                         raised by an executor: "run me again later"
└── BrokerError
    ├── BrokerUnavailableError                    the backend cannot be reached; nothing happened
    │   └── BrokerOutcomeUnknownError             the request was sent, its reply lost: it may
    │                                             have happened (retry with the same task_id)
    ├── BrokerClosedError                         the broker was used after close(): a caller bug
    └── StorageError                              the broker's file is not one it may use
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Task

__all__ = [
    "MAX_RETRY_DELAY_SECONDS",
    "BrokerClosedError",
    "BrokerError",
    "BrokerOutcomeUnknownError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "InvalidTaskError",
    "KatanaError",
    "Retry",
    "ServiceStateError",
    "StorageError",
    "TaskCancelledError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskStateError",
    "TaskTimeoutError",
    "UnknownTaskError",
]


class KatanaError(Exception):
    """Base class of every exception Katana raises on purpose."""


class UnknownTaskError(KatanaError, ValueError):
    """No executor is registered under the task name."""


class TaskNotFoundError(KatanaError, KeyError):
    """No task with this id is stored (never was, or was deleted after its retention).

    A ``KeyError`` (so a ``LookupError``) because ``wait_for`` raised a bare ``KeyError`` before.
    """

    # KeyError's own __str__ shows the repr of its argument: the message would be quoted.
    __str__ = Exception.__str__

    @classmethod
    def for_id(cls, task_id: str) -> TaskNotFoundError:
        """The error for ``task_id``, named (cut short: ids arrive from users) in its message."""
        return cls(f"no task has id {task_id!r:.100}")


class TaskStateError(KatanaError, ValueError):
    """The task's status does not allow the requested action (e.g. deleting a running task)."""


class InvalidTaskError(KatanaError, ValueError):
    """A task argument (priority, delay, payload) is out of range or not serializable."""


class ConfigurationError(KatanaError, ValueError):
    """A setting is unusable: a malformed broker URL, a bad queue name, a missing extra."""


class ServiceStateError(KatanaError, RuntimeError):
    """The service was asked to do something its lifecycle state forbids."""


class BrokerError(KatanaError):
    """The broker could not carry out an operation."""


class BrokerUnavailableError(BrokerError):
    """The broker's backend cannot be reached; the operation did not happen.

    Except for the subclass ``BrokerOutcomeUnknownError``: there it may have happened.
    """


class BrokerOutcomeUnknownError(BrokerUnavailableError):
    """The request reached (or may have reached) the backend, but its reply was lost.

    The connection broke or timed out while waiting for the answer, so the operation may or
    may not have happened. An ``add_task`` that raised this is safe to retry with the same
    ``task_id``: the retry returns the task if the first call stored it. A subclass of
    ``BrokerUnavailableError``, so handlers of the backend being unreachable still catch it.
    """


class BrokerClosedError(BrokerError):
    """The broker was used after ``close()``."""


class StorageError(BrokerError):
    """The broker's storage cannot be used as it is (not a Katana database, a newer schema,
    no permission); the message names it, and nothing stored there was changed."""


class TaskTimeoutError(KatanaError, TimeoutError):
    """An attempt ran longer than the task's ``timeout_seconds`` and was cancelled."""


class Retry(KatanaError):  # control flow, named for what the executor asks
    """Raised by an executor to ask for another attempt, after ``delay_seconds`` if given.

    It counts as a failed attempt: once ``max_retries`` are used up the task is FAILED.
    """

    def __init__(self, message: str = "", *, delay_seconds: float | None = None) -> None:
        super().__init__(message or "the executor asked to run again")
        if delay_seconds is not None and not _is_retry_delay(delay_seconds):
            # Refused here, in the executor: a delay no date can hold once broke the worker
            # that computed the due time, and left the task PROCESSING for good.
            raise ValueError(
                f"delay_seconds must be a number from 0 to {MAX_RETRY_DELAY_SECONDS:.0f} "
                f"(30 days, as add_task allows), got {delay_seconds!r:.50}"
            )
        self.delay_seconds = delay_seconds


#: The longest delay a ``Retry`` may ask for: the same 30 days ``add_task`` allows.
MAX_RETRY_DELAY_SECONDS = 30 * 24 * 3600.0


def _is_retry_delay(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 <= value <= MAX_RETRY_DELAY_SECONDS  # NaN compares False; big ints compare exactly


class TaskFailedError(KatanaError):
    """The awaited task ended FAILED (or DEAD); ``task`` holds its error and history."""

    def __init__(self, task: Task) -> None:
        super().__init__(f"task {task.id} ({task.name}) ended {task.status}: {task.error}")
        self.task = task


class TaskCancelledError(KatanaError):
    """The awaited task was cancelled; ``task`` is its final state."""

    def __init__(self, task: Task) -> None:
        super().__init__(f"task {task.id} ({task.name}) was cancelled")
        self.task = task

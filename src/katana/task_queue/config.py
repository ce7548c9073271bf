"""Small frozen settings objects: how a task name's failures are retried."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["DEFAULT_RETRY_POLICY", "MAX_RETRIES_LIMIT", "RetryPolicy"]

#: More retries than this is a loop, not a retry policy.
MAX_RETRIES_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failed attempts of a task name are retried.

    Args:
        max_retries: Failed attempts retried by default (``add_task`` may override it).
        backoff_base_seconds: The first retry's delay bound; each retry doubles it.
        backoff_max_seconds: The cap on any retry's delay.
        retry_on: Exception types worth retrying; others fail the task at once. A ``Retry``
            raised by the executor is always retried while retries remain. A timed-out
            attempt counts as ``TaskTimeoutError``, a ``TimeoutError``.
        jitter: Full jitter (a uniform delay between 0 and the bound), so that tasks failing
            together do not retry together. ``False`` waits exactly the bound.
    """

    max_retries: int = 0
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    jitter: bool = True

    def __post_init__(self) -> None:
        if type(self.max_retries) is not int or not 0 <= self.max_retries <= MAX_RETRIES_LIMIT:
            raise ValueError(
                f"max_retries must be an int in 0..{MAX_RETRIES_LIMIT}, got {self.max_retries!r}"
            )
        for name in ("backoff_base_seconds", "backoff_max_seconds"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        try:
            exception_types = all(issubclass(kind, BaseException) for kind in self.retry_on)
        except TypeError:  # issubclass() of something that is not a class
            exception_types = False
        if not exception_types:
            raise TypeError(f"retry_on must hold exception types, got {self.retry_on!r}")

    def backoff_seconds(self, attempt: int) -> float:
        """The delay before retrying after failed attempt number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), 64)  # 2**64 s is past any cap already
        bound = min(self.backoff_max_seconds, self.backoff_base_seconds * 2.0**exponent)
        return random.uniform(0.0, bound) if self.jitter else bound  # not crypto


#: What a task name gets when it was registered without a policy: no retries.
DEFAULT_RETRY_POLICY = RetryPolicy()

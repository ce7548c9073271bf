"""Katana: an asyncio-native background task queue."""

from __future__ import annotations

import logging

from .broker import AbstractBroker, InMemoryBroker
from .errors import (
    BrokerClosedError,
    BrokerError,
    BrokerOutcomeUnknownError,
    BrokerUnavailableError,
    InvalidTaskError,
    KatanaError,
    ServiceStateError,
    UnknownTaskError,
)
from .models import TERMINAL_STATUSES, Task, TaskExecutor, TaskStatus
from .periodic import PeriodicJob
from .service import ServiceState, TaskQueueService

__all__ = [
    "TERMINAL_STATUSES",
    "AbstractBroker",
    "BrokerClosedError",
    "BrokerError",
    "BrokerOutcomeUnknownError",
    "BrokerUnavailableError",
    "InMemoryBroker",
    "InvalidTaskError",
    "KatanaError",
    "PeriodicJob",
    "ServiceState",
    "ServiceStateError",
    "Task",
    "TaskExecutor",
    "TaskQueueService",
    "TaskStatus",
    "UnknownTaskError",
    "__version__",
]

__version__ = "0.1.0"

logging.getLogger("katana").addHandler(logging.NullHandler())

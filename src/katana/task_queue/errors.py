"""The exceptions Katana raises.

```
KatanaError
├── UnknownTaskError(KatanaError, ValueError)     add_task() with an unregistered name
├── InvalidTaskError(KatanaError, ValueError)     bad priority / delay, or a payload that isn't JSON
├── ServiceStateError(KatanaError, RuntimeError)  e.g. start_workers() after shutdown()
└── BrokerError
    ├── BrokerUnavailableError                    the backend cannot be reached
    └── BrokerClosedError                         the broker was used after close(): a caller bug
```
"""

from __future__ import annotations

__all__ = [
    "BrokerClosedError",
    "BrokerError",
    "BrokerUnavailableError",
    "InvalidTaskError",
    "KatanaError",
    "ServiceStateError",
    "UnknownTaskError",
]


class KatanaError(Exception):
    """Base class of every exception Katana raises on purpose."""


class UnknownTaskError(KatanaError, ValueError):
    """No executor is registered under the task name."""


class InvalidTaskError(KatanaError, ValueError):
    """A task argument (priority, delay, payload) is out of range or not serializable."""


class ServiceStateError(KatanaError, RuntimeError):
    """The service was asked to do something its lifecycle state forbids."""


class BrokerError(KatanaError):
    """The broker could not carry out an operation."""


class BrokerUnavailableError(BrokerError):
    """The broker's backend cannot be reached; the operation did not happen."""


class BrokerClosedError(BrokerError):
    """The broker was used after ``close()``."""

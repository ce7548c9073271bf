"""FakeClock: time that moves only when a test says so."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FakeClock"]


class FakeClock:
    """A clock for brokers and services (their ``clock=`` argument) that tests move by hand.

    Call it for the current POSIX time; ``advance(seconds)`` moves it forward and tells the
    brokers using it, whose waiting consumers then look again at what became due. Retries,
    delays and leases can so be tested without sleeping for real::

        clock = FakeClock()
        broker = InMemoryBroker(clock=clock)
        service = TaskQueueService(broker=broker, task_executors=..., clock=clock)
        ...
        clock.advance(60)  # the task delayed by 60 s is due now
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = float(start)
        self._listeners: list[Callable[[], None]] = []

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward, got {seconds!r}")
        self._now += seconds
        for listener in list(self._listeners):
            listener()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every ``advance``; brokers register themselves here."""
        self._listeners.append(listener)

"""Periodic tasks: when each one is due (cron or a fixed interval), and the loop that fires it.

Every process running workers runs a ``Scheduler`` for the periodic jobs its service knows.
Each *slot* (the instant a job is due) is fired by whichever process first takes it with
``AbstractBroker.enqueue_in_slot``, which takes the slot and stores its task in one step, so a
slot becomes one task however many processes and hosts schedule the job, and a crash cannot
take a slot without its task. The slots are the same everywhere: cron instants in UTC, or
multiples of the interval since the Unix epoch, computed from the service's clock.

No catch-up: a scheduler starts with the first slot after it started, and one that falls
behind (the process was blocked or asleep) fires only the latest slot it missed, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cronsim import CronSim, CronSimError

from ._cancelling import cancel_safe
from .errors import InvalidTaskError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


__all__ = [
    "MAX_EVERY_SECONDS",
    "MAX_JOB_KEY_LENGTH",
    "MIN_EVERY_SECONDS",
    "PeriodicJob",
    "Schedule",
    "Scheduler",
]

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: The shortest interval ``every`` accepts.
MIN_EVERY_SECONDS = 0.001
#: The longest interval ``every`` accepts (100 years): its slots, multiples of it since the
#: epoch, must stay instants a ``datetime`` can hold.
MAX_EVERY_SECONDS = 100 * 365.25 * 24 * 3600
#: The longest job key: its slot keys (key plus an ISO instant) must stay valid unique keys.
MAX_JOB_KEY_LENGTH = 400
#: Longest the loop sleeps without reading the clock again, in case the wall clock jumped.
_MAX_SLEEP_SECONDS = 60.0
#: A slot's claim outlives the window in which it can fire by this much: how far apart the
#: clocks of hosts sharing a queue may be.
_CLOCK_SKEW_SECONDS = 60.0
#: After a failure (broker unreachable) the loop tries again after this long, doubling.
_RETRY_FIRST_SECONDS = 1.0
_RETRY_MAX_SECONDS = 30.0


class Schedule:
    """When a job is due: a cron expression in UTC, or every N seconds counted from the epoch.

    Raises:
        InvalidTaskError: not exactly one of ``cron`` and ``every``, a cron expression
            ``cronsim`` rejects, or an interval that is not a positive duration.
    """

    def __init__(self, *, cron: str | None = None, every: float | timedelta | None = None) -> None:
        if (cron is None) == (every is None):
            raise InvalidTaskError(
                "a periodic task needs exactly one of cron= (a cron expression) or every= "
                f"(an interval), got cron={cron!r} and every={every!r}"
            )
        self.cron = cron
        self._every_us = 0
        if cron is not None:
            if not isinstance(cron, str):
                raise InvalidTaskError(f"cron must be a str, got {cron!r}")
            try:
                CronSim(cron, _EPOCH)
            except CronSimError as exc:
                raise InvalidTaskError(f"bad cron expression {cron!r}: {exc}") from exc
        else:
            self._every_us = round(_seconds(every) * 1_000_000)

    @property
    def every_seconds(self) -> float | None:
        return self._every_us / 1_000_000 if self._every_us else None

    def __str__(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron}"
        return f"every {self._every_us / 1_000_000:g}s"

    def __repr__(self) -> str:
        if self.cron is not None:
            return f"Schedule(cron={self.cron!r})"
        return f"Schedule(every={self.every_seconds!r})"

    def next_after(self, instant: datetime) -> datetime:
        """The first slot strictly after ``instant``."""
        if self.cron is not None:
            return next(CronSim(self.cron, instant))
        return _EPOCH + _MICROSECOND * ((_micros(instant) // self._every_us + 1) * self._every_us)

    def latest_at_or_before(self, instant: datetime) -> datetime:
        """The last slot at or before ``instant``."""
        if self.cron is not None:
            # Going back, cronsim yields instants strictly before one without microseconds
            # and at or before one with them: one microsecond more includes ``instant``.
            return next(CronSim(self.cron, instant + _MICROSECOND, reverse=True))
        return _EPOCH + _MICROSECOND * (_micros(instant) // self._every_us * self._every_us)


def _micros(instant: datetime) -> int:
    return (instant - _EPOCH) // _MICROSECOND


def _seconds(every: object) -> float:
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, int | float) and not isinstance(every, bool):
        seconds = float(every)
    else:
        raise InvalidTaskError(f"every must be a number of seconds or a timedelta, got {every!r}")
    if not math.isfinite(seconds) or not MIN_EVERY_SECONDS <= seconds <= MAX_EVERY_SECONDS:
        raise InvalidTaskError(
            f"every must be a positive interval of at least {MIN_EVERY_SECONDS} s and at most "
            f"{MAX_EVERY_SECONDS:.0f} s (100 years), got {every!r:.80}"
        )
    return seconds


@dataclass(frozen=True)
class PeriodicJob:
    """A periodic job as ``TaskQueueService.periodic_jobs`` lists it (a snapshot).

    Attributes:
        key: Tells the job apart from others (the task name unless ``add_periodic`` got one).
        name: The task it creates.
        schedule: ``"cron */5 * * * *"`` or ``"every 60s"``.
        next_run_at: The next slot it fires (the first after now until the scheduler runs).
    """

    key: str
    name: str
    schedule: str
    next_run_at: datetime


@dataclass
class _Job:
    key: str
    name: str
    schedule: Schedule
    payload: dict[str, Any]
    priority: int
    max_retries: int | None
    timeout_seconds: float | None
    next_slot: datetime | None = None  # set once the scheduler runs


class Scheduler:
    """Fires the slots of periodic jobs, each once across every process sharing the broker.

    Args:
        fire: Takes a job's slot and enqueues its task in one step
            (``AbstractBroker.enqueue_in_slot``); called as ``fire(job, slot_key, ttl_seconds)``
            by every process when the slot is due, it returns ``False`` when another process
            took the slot. ``slot_key`` is ``periodic:<job key>:<ISO instant>``.
        clock: Returns the current POSIX time; a ``testing.FakeClock`` wakes the loop when
            it moves.
    """

    def __init__(
        self,
        fire: Callable[[_Job, str, float], Awaitable[bool]],
        clock: Callable[[], float],
    ) -> None:
        self._fire = fire
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        add_listener = getattr(clock, "add_listener", None)
        if add_listener is not None:  # a testing.FakeClock: look again when it moves
            add_listener(self._wake.set)

    def add(self, job: _Job) -> None:
        if job.key in self._jobs:
            raise InvalidTaskError(
                f"a periodic job with key {job.key!r} exists already; pass key= to tell two "
                "jobs of one task apart"
            )
        self._jobs[job.key] = job
        if self._task is not None:
            job.next_slot = job.schedule.next_after(self._now())
            self._wake.set()

    def jobs(self) -> list[PeriodicJob]:
        now = self._now()
        return [
            PeriodicJob(
                key=job.key,
                name=job.name,
                schedule=str(job.schedule),
                next_run_at=job.next_slot or job.schedule.next_after(now),
            )
            for job in sorted(self._jobs.values(), key=lambda job: job.key)
        ]

    def start(self) -> None:
        """Start the loop on the running event loop; each job from its first slot after now."""
        if self._task is not None:
            return
        now = self._now()
        for job in self._jobs.values():
            job.next_slot = job.schedule.next_after(now)
        self._task = asyncio.create_task(self._run(), name="katana-scheduler")

    async def stop(self) -> None:
        """Cancel the loop and wait for it to end; idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def _run(self) -> None:
        retry = _RETRY_FIRST_SECONDS
        while True:
            self._wake.clear()  # before reading the clock: a move from now on wakes us
            now = self._now()
            failed = False
            for job in list(self._jobs.values()):
                if job.next_slot is not None and job.next_slot <= now:
                    failed = not await self._fire_latest(job, now) or failed
            # A failed job's slot stays due: it is tried again after the backoff, or sooner
            # if another job's slot comes first.
            slots = [
                slot
                for job in self._jobs.values()
                if (slot := job.next_slot) is not None and slot > now
            ]
            delay = (min(slots) - now).total_seconds() if slots else None
            if failed:
                delay = retry if delay is None else min(delay, retry)
                retry = min(retry * 2, _RETRY_MAX_SECONDS)
            else:
                retry = _RETRY_FIRST_SECONDS
            await self._sleep(delay)

    async def _fire_latest(self, job: _Job, now: datetime) -> bool:
        """Fire the latest slot of ``job`` at or before ``now``; ``False`` to try again later."""
        assert job.next_slot is not None
        slot = job.schedule.latest_at_or_before(now)
        following = job.schedule.next_after(slot)
        if slot > job.next_slot:
            logger.warning(
                "periodic job %s fell behind: the slots from %s to before %s are skipped",
                job.key,
                job.next_slot.isoformat(),
                slot.isoformat(),
                extra={"katana_event": "periodic_slots_skipped", "periodic_job": job.key},
            )
        slot_key = f"periodic:{job.key}:{slot.isoformat()}"
        # The slot is held as long as another process may still try it: until the next one
        # is due, plus the clock skew between hosts.
        ttl = (following - now).total_seconds() + _CLOCK_SKEW_SECONDS
        try:
            # cancel_safe: stop() must not lose its cancel inside a driver call.
            fired = await cancel_safe(self._fire(job, slot_key, ttl))
        except Exception:
            # Broker outage or the like: keep the slot due and try again (while it is the
            # latest). Slot and task are stored in one step, so a call that did succeed
            # (its reply lost) makes the retry find the slot taken: no second task.
            _log_slot(
                logging.ERROR,
                "periodic_fire_failed",
                "periodic job %s: could not fire slot %s; trying again",
                (job, slot, slot_key),
                exc_info=True,
            )
            return False
        job.next_slot = following
        if fired:
            message = "periodic job %s fired for slot %s"
            _log_slot(logging.INFO, "periodic_fired", message, (job, slot, slot_key))
        else:
            message = "periodic job %s: slot %s was taken by another process"
            _log_slot(logging.DEBUG, "periodic_slot_lost", message, (job, slot, slot_key))
        return True

    async def _sleep(self, seconds: float | None) -> None:
        """Wait ``seconds`` (``None``: until woken), or less if the clock moves or a job comes."""
        timeout = None if seconds is None else min(max(seconds, 0.0), _MAX_SLEEP_SECONDS)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()


def _log_slot(
    level: int,
    event: str,
    message: str,
    where: tuple[_Job, datetime, str],
    *,
    exc_info: bool = False,
) -> None:
    """One line about a slot (job, slot, slot key): ``message`` takes the key and ISO time."""
    job, slot, slot_key = where
    logger.log(
        level,
        message,
        job.key,
        slot.isoformat(),
        exc_info=exc_info,
        extra={"katana_event": event, "periodic_job": job.key, "periodic_slot": slot_key},
    )

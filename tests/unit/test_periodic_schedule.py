"""Schedule: the slots of cron and interval jobs, computed the same way in every process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from katana.task_queue.periodic import Schedule

NOON = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def test_interval_slots_are_multiples_of_the_interval_since_the_epoch() -> None:
    schedule = Schedule(every=timedelta(minutes=15))

    assert schedule.next_after(NOON + timedelta(seconds=1)) == NOON + timedelta(minutes=15)
    assert schedule.next_after(NOON) == NOON + timedelta(minutes=15)  # strictly after
    assert schedule.latest_at_or_before(NOON) == NOON  # at or before
    assert schedule.latest_at_or_before(NOON - timedelta(microseconds=1)) == NOON - timedelta(
        minutes=15
    )
    assert (str(schedule), repr(schedule)) == ("every 900s", "Schedule(every=900.0)")


def test_fractional_intervals_are_exact_to_the_microsecond() -> None:
    schedule = Schedule(every=0.1)

    assert schedule.next_after(NOON + timedelta(microseconds=1)) == NOON + timedelta(
        milliseconds=100
    )
    assert schedule.every_seconds == 0.1


def test_cron_slots_are_utc_instants_before_and_after() -> None:
    schedule = Schedule(cron="*/5 * * * *")

    assert schedule.next_after(NOON) == NOON + timedelta(minutes=5)
    assert schedule.next_after(NOON - timedelta(microseconds=1)) == NOON
    assert schedule.latest_at_or_before(NOON) == NOON
    assert schedule.latest_at_or_before(NOON + timedelta(minutes=4, seconds=59.999999)) == NOON
    assert schedule.latest_at_or_before(NOON - timedelta(microseconds=1)) == NOON - timedelta(
        minutes=5
    )
    assert (str(schedule), repr(schedule)) == ("cron */5 * * * *", "Schedule(cron='*/5 * * * *')")
    assert schedule.every_seconds is None


def test_cron_with_seconds_first() -> None:
    schedule = Schedule(cron="*/10 * * * * *")

    assert schedule.next_after(NOON) == NOON + timedelta(seconds=10)

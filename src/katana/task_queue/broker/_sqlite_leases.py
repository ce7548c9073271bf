"""The claims one SqliteBroker holds, and the heartbeat that renews them and recovers others'.

Every ``heartbeat_seconds`` one write transaction renews this broker's leases, hands the
expired leases of any process back to the queue and prunes old tasks; every second in between
it probes the wake-up sockets of the other processes, and a process found dead has its claims
recovered at once (see ``_sqlite_wake``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import BrokerError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .sql._steps import Beat

__all__ = ["Leases"]

logger = logging.getLogger(__name__)

#: How often a consuming process checks that the other processes on the file still run.
_PRESENCE_SECONDS = 1.0


class Leases:
    """The claims held here (id -> claim token) and the loop that keeps them.

    Args:
        beat: Runs the heartbeat transaction for the held (id, token) pairs and the owners
            found dead.
        dead_owners: The processes whose wake-up socket refuses a probe.
        forget: Removes a dead process's socket once its claims were recovered.
        on_requeued: Called when the heartbeat made tasks PENDING again.
        on_cancel_requested: Called with each held task whose cancellation was requested.
        on_lost: Called with each task whose claim this process learned it lost (its run
            here must stop: its outcome would be refused, and it may overlap the new owner's).
    """

    def __init__(
        self,
        *,
        heartbeat_seconds: float,
        max_deliveries: int,
        beat: Callable[[list[tuple[str, str]], Sequence[str]], Awaitable[Beat]],
        dead_owners: Callable[[], list[str]],
        forget: Callable[[str], None],
        on_requeued: Callable[[], None],
        on_cancel_requested: Callable[[str], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self.held: dict[str, str] = {}
        self._heartbeat_seconds = heartbeat_seconds
        self._max_deliveries = max_deliveries
        self._beat = beat
        self._dead_owners = dead_owners
        self._forget = forget
        self._on_requeued = on_requeued
        self._on_cancel_requested = on_cancel_requested
        self._on_lost = on_lost

    async def keep(self) -> None:
        """Heartbeats, and presence looks in between, until cancelled."""
        loop = asyncio.get_running_loop()
        tick = min(self._heartbeat_seconds, _PRESENCE_SECONDS)
        beat_at = loop.time() + self._heartbeat_seconds
        while True:
            await asyncio.sleep(tick)
            try:
                dead = self._dead_owners()
                if dead or loop.time() >= beat_at:
                    beat_at = loop.time() + self._heartbeat_seconds
                    await self.heartbeat(dead)
            except BrokerError as exc:
                logger.warning(
                    "heartbeat failed (%s); leases of this process may expire",
                    exc,
                    extra={"katana_event": "broker_error"},
                )
            except Exception:  # the heartbeat must outlive a bad row: leases depend on it
                logger.exception("heartbeat failed", extra={"katana_event": "broker_error"})

    def lost(self, task_id: str, token: str) -> None:
        """The claim ``token`` on ``task_id`` is gone (a heartbeat or a progress report found
        its lease expired, or its row changed or deleted): stop holding it, stop its run."""
        if self.held.get(task_id) != token:
            return  # its outcome was handed over meanwhile: finished, not lost
        del self.held[task_id]
        logger.warning(
            "lost the claim on task %s: its lease expired, or its record was changed or "
            "deleted; it is not ours to run any more",
            task_id,
            extra={"katana_event": "lease_lost", "task_id": task_id},
        )
        self._on_lost(task_id)

    async def heartbeat(self, dead_owners: Sequence[str] = ()) -> None:
        held = list(self.held.items())
        beat = await self._beat(held, dead_owners)
        for owner in dead_owners:  # its claims are recovered: nobody needs its socket now
            self._forget(owner)
        tokens = dict(held)
        for task_id in beat.lost:
            self.lost(task_id, tokens[task_id])
        if beat.requeued:
            logger.warning(
                "%d tasks whose worker stopped renewing its lease are PENDING again",
                beat.requeued,
                extra={"katana_event": "leases_recovered"},
            )
            self._on_requeued()
        for task_id in beat.cancel_requested:
            self._on_cancel_requested(task_id)
        for task_id in beat.dead:
            logger.error(
                "task %s is DEAD: delivered %d times and each time its worker was lost",
                task_id,
                self._max_deliveries,
                extra={"katana_event": "task_dead", "task_id": task_id},
            )

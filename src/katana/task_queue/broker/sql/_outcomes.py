"""Outcomes waiting to be written: the next claim carries them, or a flush one loop turn later.

Driver-neutral: a SQL broker gives it the write of a batch (one transaction) and takes what is
waiting into its claim transaction with ``take``; either way ``settle`` resolves the futures.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ...errors import BrokerError, TaskNotFoundError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._steps import Outcome

__all__ = ["Batch", "OutcomeQueue"]

#: Outcomes with the futures their callers wait on.
Batch = list[tuple["Outcome", "asyncio.Future[bool]"]]


class OutcomeQueue:
    """Outcomes not yet written, and the task that writes them.

    Args:
        write: Writes a batch in one transaction; one code per outcome (1 applied, 0 the
            claim was lost, -1 unknown task).
        on_requeued: Called when a written outcome made a task PENDING again.
        on_written: Called with the id of each task whose outcome was written.
    """

    def __init__(
        self,
        write: Callable[[list[Outcome]], Awaitable[list[int]]],
        on_requeued: Callable[[], None],
        on_written: Callable[[str], None],
    ) -> None:
        self._write = write
        self._on_requeued = on_requeued
        self._on_written = on_written
        self._waiting: Batch = []
        self._flusher: asyncio.Task[None] | None = None

    def submit(self, outcome: Outcome) -> asyncio.Future[bool]:
        """Queue ``outcome``; the future resolves once it is written."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((outcome, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self.flush())
        return future

    def take(self) -> Batch:
        """Everything waiting, for a claim to carry; the claim then calls ``settle``."""
        batch, self._waiting = self._waiting, []
        return batch

    async def flush(self) -> None:
        """Write everything waiting, and what arrives meanwhile, batch by batch."""
        while self._waiting:
            batch = self.take()
            try:
                codes = await self._write([outcome for outcome, _ in batch])
            except BaseException as exc:
                self.settle(batch, exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            self.settle(batch, codes)

    def settle(self, batch: Batch, codes: list[int] | BaseException) -> None:
        """Resolve the futures: True, False (claim lost), ``TaskNotFoundError`` (unknown) or
        the error."""
        requeued = False
        for index, (outcome, future) in enumerate(batch):
            if future.done():
                continue
            if isinstance(codes, BaseException):
                error = codes if isinstance(codes, Exception) else BrokerError("write interrupted")
                future.set_exception(error)
            elif codes[index] < 0:
                future.set_exception(TaskNotFoundError.for_id(outcome.task_id))
            else:
                future.set_result(codes[index] == 1)
                if codes[index] == 1:
                    requeued |= outcome.op in ("requeue", "release")
                    self._on_written(outcome.task_id)
        if requeued:
            self._on_requeued()

"""One worker loop: claim a task, run its executor, record the outcome."""

from __future__ import annotations

import asyncio
import functools
import logging
import traceback
from typing import TYPE_CHECKING, Any, Literal

from . import tracing
from ._events import log_task_event, logger
from ._validation import json_safe
from .config import DEFAULT_RETRY_POLICY, RetryPolicy
from .context import reset_running, running
from .errors import (
    BrokerClosedError,
    BrokerError,
    InvalidTaskError,
    Retry,
    TaskNotFoundError,
    TaskTimeoutError,
    UnknownTaskError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .broker.base import AbstractBroker
    from .models import Task, TaskExecutor

__all__ = ["CANCEL_GRACE_SECONDS", "Worker"]

#: After Katana cancels an executor (time limit, ``cancel``, shutdown, lost claim), how long it
#: waits for the coroutine to end before it gives up on it: asyncio cannot stop a coroutine
#: that swallows ``CancelledError``, so Katana records the outcome the cancel stood for and
#: stops waiting. The worker slot stays with the abandoned coroutine and takes no other task.
CANCEL_GRACE_SECONDS = 1.0

#: Why an executor was cancelled; decides what is recorded if it ignores the cancellation.
_CancelReason = Literal["timeout", "cancel", "shutdown"]

#: A worker hands the event loop back at least this often even when every task it runs
#: finishes without awaiting anything, so one busy worker cannot starve the application.
_YIELD_EVERY_SECONDS = 0.005
#: How long a worker waits before asking the broker again after the broker failed.
_BACKOFF_FIRST_SECONDS = 0.1
_BACKOFF_MAX_SECONDS = 5.0


class Worker:
    """Runs tasks one at a time until told to stop.

    The service reads ``idle`` to cancel a worker that waits for work at shutdown, and is told
    through ``on_task_done`` whenever this worker finishes a task.
    """

    def __init__(
        self,
        name: str,
        broker: AbstractBroker,
        executors: Mapping[str, TaskExecutor],
        policies: Mapping[str, RetryPolicy],
        *,
        should_stop: Callable[[], bool],
        on_task_done: Callable[[], None],
        on_abandoned: Callable[[Worker, asyncio.Task[None] | None], None],
    ) -> None:
        self.name = name
        self._broker = broker
        self._executors = executors
        self._policies = policies
        self._should_stop = should_stop
        self._on_task_done = on_task_done
        self._on_abandoned = on_abandoned
        #: True once the worker gave up on an executor that ignored its cancellation: the
        #: abandoned coroutine keeps this slot, whose outcome is dropped when it ends.
        self.retired = False
        # Armed only when a cancel is sent or the task has a time limit: gives up on the
        # executor if it is still running CANCEL_GRACE_SECONDS after its cancel.
        self._watchdog: asyncio.TimerHandle | None = None
        #: True while the worker waits in ``dequeue``: cancelling it then loses nothing.
        self.idle = False
        #: The task being run, if any.
        self.current: Task | None = None
        # The asyncio task running this worker, and the id of a task it was told to cancel.
        self._runner: asyncio.Task[None] | None = None
        self._cancelling: str | None = None
        self._in_executor = False
        # Completions handed to the broker and not yet confirmed written.
        self._unconfirmed: set[asyncio.Future[bool]] = set()

    def cancel_current(self, task_id: str) -> None:
        """Stop the task ``task_id`` if this worker is running it; it ends CANCELLED.

        The broker also calls this when this process lost its claim on the task: then the
        fenced ``mark_cancelled`` records nothing, and the worker only logs it.
        """
        current = self.current
        # Only while the executor runs: a cancel landing while the outcome is being recorded
        # would stop the worker itself. A task past its executor just finishes.
        if current is None or current.id != task_id or self._runner is None:
            return
        if not self._in_executor:
            return
        if self._cancelling != task_id:
            self._cancelling = task_id
            self._runner.cancel()
            self._arm_watchdog(current, CANCEL_GRACE_SECONDS, "cancel")

    def abandon_if_stuck(self) -> None:
        """At shutdown, give up on an executor still running after its cancel and grace.

        The task is handed back (fenced by its claim token) as an interrupted one would be.
        """
        if self.current is not None and self._in_executor:
            self._give_up(self.current, "shutdown")
        elif not self.retired:
            # Stuck outside its executor (a broker call): nothing to record; its lease expires.
            self.retired = True
            self._on_abandoned(self, None)

    def _arm_watchdog(self, task: Task, delay: float, reason: _CancelReason) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(delay, self._give_up, task, reason)

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _give_up(self, task: Task, reason: _CancelReason) -> None:
        """The executor of ``task`` ignored its cancel: record its outcome and retire the slot."""
        self._watchdog = None
        if self.retired or self.current is not task or not self._in_executor:
            return  # it ended meanwhile
        self.retired = True
        log_task_event(
            logging.ERROR,
            "executor_ignored_cancel",
            task,
            "the executor of task %s (%s) ignored its cancellation (%s) for %gs; it is "
            "abandoned and its worker slot retired",
            task.id,
            task.name,
            reason,
            CANCEL_GRACE_SECONDS,
            details={"cancel_reason": reason},
        )
        recording = asyncio.create_task(
            self._record_abandoned(task, reason), name=f"katana-{self.name}-abandoned"
        )
        self._on_abandoned(self, recording)

    async def _record_abandoned(self, task: Task, reason: _CancelReason) -> None:
        """Record the outcome the cancel of an abandoned executor stood for."""
        try:
            if reason == "timeout":
                await self._handle_failure(task, _ignored_timeout(task.timeout_seconds))
            elif reason == "cancel":
                await self._record_cancelled(task)  # a lost claim: the fence records nothing
            else:
                await self._hand_back(task)
        finally:
            self._on_task_done()

    async def run(self) -> None:
        self._runner = asyncio.current_task()
        try:
            await self._run()
        finally:
            if self._unconfirmed:
                await asyncio.shield(asyncio.gather(*self._unconfirmed, return_exceptions=True))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_yield = loop.time()
        backoff = _BACKOFF_FIRST_SECONDS
        while not self._should_stop() and not self.retired:
            self.idle = True
            try:
                task = await self._broker.dequeue()
            except BrokerClosedError:
                logger.info(
                    "worker %s stops: the broker is closed",
                    self.name,
                    extra={"katana_event": "worker_stopped"},
                )
                return
            except Exception:
                logger.exception(
                    "worker %s could not claim a task; retrying in %.1fs",
                    self.name,
                    backoff,
                    extra={"katana_event": "broker_error"},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_SECONDS)
                continue
            finally:
                self.idle = False
            backoff = _BACKOFF_FIRST_SECONDS
            if task is None:
                continue
            self.current = task
            try:
                await self._process(task)
            finally:
                self.current = None
                if not self.retired:  # else _record_abandoned reported it
                    self._on_task_done()
            now = loop.time()
            if now - last_yield >= _YIELD_EVERY_SECONDS:
                await asyncio.sleep(0)
                last_yield = loop.time()

    async def _process(self, task: Task) -> None:
        """Run ``task`` and record its outcome; a bug on the way still leaves it finished.

        An exception escaping here ends this worker slot (the service replaces it). Left as it
        is, the task would stay PROCESSING for good: on a broker without leases nobody hands it
        back, and with leases this live process keeps renewing them. It is recorded FAILED
        instead (final, so a task that always crashes its slot cannot crash slot after slot);
        the operator can retry it.
        """
        try:
            if tracing.enabled:
                await tracing.traced_process(self._broker.queue, task, self._execute(task))
            else:
                await self._execute(task)
        except Exception as exc:
            await self._record_crash(task, exc)
            raise

    async def _record_crash(self, task: Task, exc: Exception) -> None:
        error = f"worker {self.name} crashed handling the task: {type(exc).__name__}: {exc}"
        try:
            await asyncio.shield(
                self._broker.mark_failed(
                    task.id,
                    error,
                    traceback="".join(traceback.format_exception(exc)),
                    claim_token=task.claim_token,
                )
            )
        except Exception as problem:  # the broker itself is what crashed: nothing more to try
            _log_not_recorded(task, problem)

    async def _execute(self, task: Task) -> None:
        broker = self._broker
        executor = self._executors.get(task.name)
        if executor is None:
            error = UnknownTaskError(f"no executor registered for {task.name!r} in this worker")
            await self._record_failure(task, error)
            return
        log_task_event(
            logging.DEBUG,
            "task_started",
            task,
            "task %s (%s) started, attempt %d",
            task.id,
            task.name,
            task.attempts,
        )
        if task.timeout_seconds is not None:
            self._arm_watchdog(task, task.timeout_seconds + CANCEL_GRACE_SECONDS, "timeout")
        try:
            self._in_executor = True
            token = running(broker, task)
            try:
                value = await _run(executor, task)
            finally:
                self._in_executor = False
                reset_running(token)
                self._disarm_watchdog()
        except asyncio.CancelledError as exc:
            if self.retired:
                raise  # abandoned: its outcome is recorded already; the slot ends
            await self._interrupted(task, exc)
            return
        except Exception as exc:
            if self.retired:
                return  # abandoned: the claim token is spent, the outcome dropped
            if self._cancelling == task.id:  # cancel() said yes: that outcome wins
                await self._end_cancelled(task)
            else:
                await self._handle_failure(task, exc)
            return
        if self.retired:
            return
        if self._cancelling == task.id:
            # cancel() said yes, yet the executor returned: it swallowed the CancelledError,
            # or a driver did (CPython gh-86296). It ends CANCELLED as promised; the result
            # is discarded.
            await self._end_cancelled(task)
            return
        await self._record_result(task, value)

    async def _interrupted(self, task: Task, exc: asyncio.CancelledError) -> None:
        """The executor was cancelled: by ``cancel_current``, by itself, or to stop the worker.

        Raises ``CancelledError`` when the worker itself is being stopped.
        """
        if self._cancelling == task.id:
            await self._end_cancelled(task)
            return
        current = asyncio.current_task()
        if current is None or not current.cancelling():
            # The executor's own code was cancelled (it cancelled something it awaited):
            # a failure of this task, not a request to stop the worker.
            await self._record_failure(task, exc)
            return
        # Stopped before finishing: give the task back so another worker runs it. Nothing
        # failed, so the interrupted attempt does not count against its retries.
        await self._hand_back(task)
        raise exc

    async def _hand_back(self, task: Task) -> None:
        try:
            handing_back = self._broker.hand_back(task.id, claim_token=task.claim_token or "")
            await asyncio.shield(handing_back)
        except (BrokerError, TaskNotFoundError) as error:  # its record was deleted
            _log_not_recorded(task, error)  # its lease will expire and hand it back
            return
        log_task_event(
            logging.WARNING,
            "task_requeued",
            task,
            "task %s was interrupted and is PENDING again",
            task.id,
        )

    async def _record_result(self, task: Task, value: Any) -> None:
        try:
            result = json_safe(value, f"the executor's return value ({type(value).__name__})")
        except InvalidTaskError as exc:
            # A programming error, not bad luck: another attempt would return the same, after
            # repeating the executor's side effects. The task fails at once.
            await self._record_failure(task, exc)
            return
        # Take the next task while the outcome is written: a batching broker sends it along
        # with its next claim. run() waits for every outcome before it returns.
        broker = self._broker
        outcome = broker.complete_soon(task.id, result, claim_token=task.claim_token)
        if outcome.done():
            problem = outcome.exception()
            if isinstance(problem, TypeError | ValueError):
                await self._record_failure(task, problem)  # the broker could not store it
                return
            _report_completion(task, outcome)
        else:
            self._unconfirmed.add(outcome)
            outcome.add_done_callback(functools.partial(self._confirmed, task))

    def _confirmed(self, task: Task, outcome: asyncio.Future[bool]) -> None:
        self._unconfirmed.discard(outcome)
        _report_completion(task, outcome)

    async def _end_cancelled(self, task: Task) -> None:
        """Record the task CANCELLED, then take back the cancel ``cancel_current`` sent.

        Raises ``CancelledError`` if someone else wants this worker stopped as well (shutdown).
        """
        await self._record_cancelled(task)
        current = asyncio.current_task()
        # cancel_current() cancelled this worker once: undo exactly that one, whether the
        # CancelledError came out of the executor or was swallowed on the way.
        if current is not None and current.uncancel() > 0:
            raise asyncio.CancelledError

    async def _record_cancelled(self, task: Task) -> None:
        self._cancelling = None
        try:
            recorded = await asyncio.shield(
                self._broker.mark_cancelled(task.id, claim_token=task.claim_token)
            )
        except (BrokerError, TaskNotFoundError) as error:
            _log_not_recorded(task, error)
            return
        if recorded:
            log_task_event(logging.INFO, "task_cancelled", task, "task %s was cancelled", task.id)
        else:
            log_task_event(
                logging.WARNING,
                "task_claim_lost",
                task,
                "task %s was stopped: its claim was lost; nothing recorded",
                task.id,
            )

    async def _handle_failure(self, task: Task, exc: Exception) -> None:
        """Retry the failed attempt if the task's policy allows it, else fail the task."""
        if tracing.enabled:
            tracing.record_failure(exc)  # on the attempt's `process` span
        policy = self._policies.get(task.name, DEFAULT_RETRY_POLICY)
        asked = isinstance(exc, Retry)
        if task.attempts > task.max_retries or not (asked or isinstance(exc, policy.retry_on)):
            await self._record_failure(task, exc)
            return
        if isinstance(exc, Retry) and exc.delay_seconds is not None:
            delay = exc.delay_seconds
        else:
            delay = policy.backoff_seconds(task.attempts)
        error = f"{type(exc).__name__}: {exc}"
        try:
            recorded = await self._broker.requeue(
                task.id,
                delay_seconds=delay,
                claim_token=task.claim_token,
                error=error,
                traceback=None if asked else "".join(traceback.format_exception(exc)),
            )
        except (BrokerError, TaskNotFoundError) as broker_error:  # its record was deleted
            _log_not_recorded(task, broker_error)
            return
        if recorded:
            log_task_event(
                logging.INFO if asked else logging.WARNING,
                "task_retry",
                task,
                "task %s attempt %d failed (%s); retry %d of %d in %.2fs",
                task.id,
                task.attempts,
                error,
                task.attempts,
                task.max_retries,
                delay,
                details={"retry_delay_seconds": delay, "attempt": task.attempts},
            )

    async def _record_failure(self, task: Task, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        try:
            recorded = await self._broker.mark_failed(
                task.id,
                error,
                traceback="".join(traceback.format_exception(exc)),
                claim_token=task.claim_token,
            )
        except (BrokerError, TaskNotFoundError) as broker_error:  # its record was deleted
            _log_not_recorded(task, broker_error)
            return
        if recorded:
            log_task_event(
                logging.ERROR,
                "task_failed",
                task,
                "task %s (%s) failed: %s",
                task.id,
                task.name,
                error,
                exc_info=exc,
            )
        else:
            log_task_event(
                logging.WARNING,
                "task_claim_lost",
                task,
                "task %s failed after its claim was lost; failure discarded",
                task.id,
            )


async def _run(executor: TaskExecutor, task: Task) -> Any:
    """Await the executor, within the task's time limit if it has one."""
    limit = task.timeout_seconds
    if limit is None:
        return await executor(task)
    scope = asyncio.timeout(limit)
    try:
        async with scope:
            value = await executor(task)
    except TimeoutError as exc:
        if scope.expired():
            raise _timed_out(limit) from exc
        raise
    if scope.expired():
        # The time was up, yet the executor returned: it swallowed the CancelledError, or a
        # driver did (CPython gh-86296). The attempt still ran over: its result is discarded.
        raise _timed_out(limit)
    return value


def _timed_out(limit: float) -> TaskTimeoutError:
    return TaskTimeoutError(
        f"the attempt ran longer than its timeout of {limit:g}s and was cancelled"
    )


def _ignored_timeout(limit: float | None) -> TaskTimeoutError:
    return TaskTimeoutError(
        f"the attempt ran longer than its timeout of {limit or 0:g}s and the executor ignored "
        f"its cancellation for {CANCEL_GRACE_SECONDS:g}s; it was abandoned"
    )


def _log_not_recorded(task: Task, error: BaseException) -> None:
    log_task_event(
        logging.ERROR,
        "outcome_not_recorded",
        task,
        "the outcome of task %s could not be recorded (%s); it will run again once its claim "
        "expires",
        task.id,
        error,
    )


def _report_completion(task: Task, outcome: asyncio.Future[bool]) -> None:
    error = outcome.exception()
    if error is not None:
        _log_not_recorded(task, error)
    elif outcome.result():
        log_task_event(logging.DEBUG, "task_completed", task, "task %s completed", task.id)
    else:
        log_task_event(
            logging.WARNING,
            "task_claim_lost",
            task,
            "task %s finished after its claim was lost; result discarded",
            task.id,
        )

"""RedisBroker: one queue shared by any number of processes and hosts, at-least-once delivery.

Needs the ``redis`` extra (``pip install 'katana-task-queue[redis]'``).

Layout, all under one ``{hash tag}`` so a Redis Cluster keeps a queue on one slot:

- ``katana:{queue}:task:<id>`` hash: the task's fields; payload and result are JSON (orjson).
- ``...:ready`` sorted set of due tasks: score = priority, member = ``<due ms>:<seq>:<id>``
  zero-padded, so equal priorities sort by due time and then arrival (``...:seq`` counts).
- ``...:delayed`` sorted set of not-yet-due task ids by due time (ms).
- ``...:processing`` sorted set of claimed task ids by lease deadline (ms).
- ``...:counts`` hash of terminal-status counters; ``...:quarantine`` list of rejected entries.
- ``...:all`` sorted set of every task id by creation time, for listing.
- ``...:workers`` hash of worker records (JSON); ``...:paused`` exists while the queue is paused.
- ``...:alive:<owner>`` a consuming process's liveness mark (expires 3 s after its last
  refresh); ``...:owned:<owner>`` set of the ids it claimed; ``...:owners`` set of owners that
  may hold claims; ``...:sweep`` hash: when orphans were last looked for.

Every state change is one Lua script (``redis_lua/*.lua``), which checks every key and value
it reads before its first write (a script is not a transaction: Redis keeps the writes of one
that fails halfway) and quarantines garbage instead of failing on it. A claim carries a
lease that this process's heartbeat renews while the task runs; the same heartbeat hands
expired leases of any process back to the queue, and gives up on a task (DEAD) after
``max_deliveries``. Each claim is also tagged with the process that made it, whose liveness
mark a thread refreshes every second (``_redis_liveness``): once a killed process's mark
expired, the next heartbeat of any process (every second) takes its claims back without
waiting for their leases.
Timestamps come from the clients' clocks, which must agree (NTP) across hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections import deque
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import orjson

try:
    from redis.exceptions import AuthenticationError, RedisError, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from ._redis_pool import (
        PoolSettings,
        SetupRefusedError,
        new_client,
        request_was_sent,
        settings_from_url,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "RedisBroker needs redis-py and hiredis: pip install 'katana-task-queue[redis]'"
    ) from exc

from .._cancelling import cancel_safe
from .._urls import check_redis_url, masked_url
from .._validation import could_be_task_id
from ..errors import (
    BrokerClosedError,
    BrokerError,
    BrokerOutcomeUnknownError,
    BrokerUnavailableError,
    ConfigurationError,
    TaskNotFoundError,
)
from ..listing import FILTER_SCAN_LIMIT, TaskPage, WorkerInfo, check_page
from ..models import TERMINAL_STATUSES, Task, TaskStatus, attempt_error, new_task_id
from ._batch import Coalescer
from ._claim_ahead import ClaimedAhead, RunTimes
from ._redis_codec import (
    ENQUEUE_VALUES_PER_TASK,
    MalformedRecordError,
    decode_task,
    encode_new_task,
)
from ._redis_finish_watch import FinishWatch
from ._redis_liveness import ALIVE_TTL_SECONDS, LivenessMark
from .base import DEFAULT_RESULT_TTL_SECONDS, AbstractBroker, failed_outcome, redrive_refused

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from redis.asyncio.client import PubSub

    from ..listing import TaskQuery

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
#: Idle consumers look at the queue at least this often, in case a wake-up was missed while
#: the notification connection was down.
_SAFETY_POLL_SECONDS = 1.0
_FETCH_LOOP = "katana-redis-fetch"
#: Claims one process keeps in flight: while Redis runs one, the process runs the tasks the
#: other brought, so neither waits for the other (each claim is for workers already waiting).
_FETCHERS = 2
#: How long close() lets a claim in flight finish before it cancels the fetch loop.
_CLAIM_GRACE_SECONDS = 2.0
#: Longest an outcome waits for a claim to carry it before it is written on its own.
_OUTCOME_FLUSH_DELAY_SECONDS = 0.002
#: A process claims ahead of its workers only while its tasks run shorter than this on
#: average, so that a task claimed ahead waits for a worker about that long at most.
_CLAIM_AHEAD_MAX_RUN_SECONDS = 0.02
#: A task claimed ahead that no worker of the process took within this long goes back to
#: the queue (its workers are all busy with something slow after all).
_CLAIM_AHEAD_HOLD_SECONDS = 0.1
#: Weight of the newest run time in the process's running average.
_RUN_TIME_WEIGHT = 0.2
#: How often a consumer looks for orphans (claims of processes whose liveness mark expired):
#: with marks living ALIVE_TTL_SECONDS, a killed process's tasks are back in the queue within
#: ALIVE_TTL_SECONDS + this of its death.
_ORPHAN_SWEEP_SECONDS = 1.0
_BACKOFF_FIRST_SECONDS = 0.05
_BACKOFF_MAX_SECONDS = 2.0
_POOL_DEFAULTS = PoolSettings()
#: Tasks one enqueue.lua call stores at most: the script blocks Redis while it runs.
_ENQUEUE_BATCH = 1000
#: How often an enqueue looks again for the task that kept it out, if that task vanished
#: (finished and deleted) in between.
_ENQUEUE_ATTEMPTS = 3


def _load_scripts() -> dict[str, str]:
    folder = resources.files(__package__).joinpath("redis_lua")
    prelude = folder.joinpath("_prelude.lua").read_text()
    # Every script file but the prelude, which each of them starts with.
    names = [
        entry.name.removesuffix(".lua")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua") and not entry.name.startswith("_")
    ]
    return {name: prelude + folder.joinpath(f"{name}.lua").read_text() for name in names}


_SCRIPTS = _load_scripts()


class RedisBroker(AbstractBroker):
    """A broker on Redis, for many worker processes on many hosts.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, or ``rediss://`` for TLS.
        queue: Name of the queue; brokers with the same URL and queue share it.
        lease_seconds: How long a claim lasts without a heartbeat before the task is handed
            to another worker. The claims of a process that is gone (killed, frozen, cut off)
            come back sooner, 3 to 4 s after it stopped, by its liveness mark.
        heartbeat_seconds: How often leases are renewed (default: a third of the lease).
            Expired leases and the claims of processes that are gone are recovered every
            second, or every ``heartbeat_seconds`` if that is shorter.
        max_deliveries: After this many deliveries that lost their worker (its lease or its
            process's liveness mark expired), the task is DEAD.
        claim_batch: The most tasks one claim round trip takes.
        claim_ahead: While the queue has a backlog and this process's tasks run shorter than
            20 ms on average, claim up to one task per worker ahead of need, so that no worker
            waits for a round trip to Redis. A task claimed ahead waits in the process for a
            free worker (higher priorities first) and goes back to the queue after 0.1 s, on
            ``pause()``, on cancellation and at shutdown. ``False`` claims only for workers
            already waiting: a task then never waits in one process while another is idle.
        result_ttl_seconds: How long finished tasks (results, failures, dead letters) are
            kept; consuming processes delete older ones. ``None`` keeps them.
        max_connections: Connections to Redis this broker opens at most; further commands
            wait for a free one (concurrent enqueues share round trips and need few).
        socket_timeout_seconds: Longest wait for Redis to take or answer a command; then the
            call raises ``BrokerOutcomeUnknownError`` (the command may have run).
        connect_timeout_seconds: Longest wait to open a connection.
        pool_timeout_seconds: Longest wait for a free connection; then the call raises
            ``BrokerUnavailableError`` (nothing was sent).
        clock: Returns the current POSIX time; every process must agree on it.

    The URL's query string may set ``max_connections``, ``socket_timeout``,
    ``socket_connect_timeout`` and ``pool_timeout`` (seconds); they win over the arguments.
    Of redis-py's other parameters only ``db``, ``username``, ``password``, ``client_name``,
    ``health_check_interval``, ``protocol`` (2 or 3), ``socket_keepalive`` and ``ssl_*``
    are accepted. Raises ``ValueError`` (``ConfigurationError``) for an invalid setting or
    any other parameter, naming it.
    """

    capabilities = frozenset({"leases", "multi_process"})

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        queue: str = "default",
        lease_seconds: float = 30.0,
        heartbeat_seconds: float | None = None,
        max_deliveries: int = 3,
        claim_batch: int = 100,
        claim_ahead: bool = True,
        result_ttl_seconds: float | None = DEFAULT_RESULT_TTL_SECONDS,
        key_prefix: str = "katana",
        max_connections: int = _POOL_DEFAULTS.max_connections,
        socket_timeout_seconds: float = _POOL_DEFAULTS.socket_timeout_seconds,
        connect_timeout_seconds: float = _POOL_DEFAULTS.connect_timeout_seconds,
        pool_timeout_seconds: float = _POOL_DEFAULTS.pool_timeout_seconds,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _QUEUE_NAME.fullmatch(queue):
            raise ConfigurationError(
                f"queue name must match {_QUEUE_NAME.pattern}, got {queue!r:.120}"
            )
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}")
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, got {max_deliveries!r}")
        self.url = url
        self.queue = queue
        self.lease_seconds = float(lease_seconds)
        self.heartbeat_seconds = (
            heartbeat_seconds if heartbeat_seconds is not None else self.lease_seconds / 3
        )
        self.max_deliveries = max_deliveries
        self.result_ttl_seconds = result_ttl_seconds
        self._ttl_ms: int | str = (
            "" if result_ttl_seconds is None else int(result_ttl_seconds * 1000)
        )
        self._claim_batch = claim_batch
        self._claim_ahead = claim_ahead
        self._clock = clock
        self.prefix = f"{key_prefix}:{{{queue}}}"
        self._ready_key = f"{self.prefix}:ready"
        try:
            client_url, self.pool_settings = settings_from_url(
                url,
                PoolSettings(
                    max_connections=max_connections,
                    socket_timeout_seconds=socket_timeout_seconds,
                    connect_timeout_seconds=connect_timeout_seconds,
                    pool_timeout_seconds=pool_timeout_seconds,
                ),
            )
        except ConfigurationError:
            raise
        except ValueError as exc:  # a bad connection setting, in the URL or an argument
            raise ConfigurationError(str(exc)) from exc
        check_redis_url(client_url)  # what is left of the URL is redis-py's to read
        # Whom this broker's claims belong to: its liveness mark tells others it is alive.
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{new_task_id()[:12]}"
        self._alive_ms = int(ALIVE_TTL_SECONDS * 1000)
        self._liveness = LivenessMark(client_url, f"{self.prefix}:alive:{self._owner}")
        self._client = new_client(client_url, self.pool_settings)
        # Concurrent enqueue calls share round trips: one enqueue.lua call for many tasks.
        self._enqueues: Coalescer[list[Any], bytes] = Coalescer(
            self._enqueue_batch, max_batch=_ENQUEUE_BATCH
        )
        self._scripts = {name: self._client.register_script(s) for name, s in _SCRIPTS.items()}
        self._closed = False
        self._closing = False
        self._checked_server = False
        # Consumer side: waiting dequeue calls, tasks claimed for none of them yet, and the
        # claims this process holds (id -> claim token) which the heartbeat renews.
        self._waiters: deque[asyncio.Future[Task]] = deque()
        self._held: dict[str, str] = {}
        # The ready entry each held task had, to put it back in its place if no worker runs it.
        self._members: dict[str, bytes] = {}
        self._held_empty = asyncio.Event()
        self._held_empty.set()
        # The last claim's mode: b"exclusive" (we hold a suspect task, alone) or
        # b"suspect_waiting" (a suspect waits for a consumer that holds nothing).
        self._claim_mode = b""
        # Claims in flight, the tasks they ask for, and whether one may take a suspect task.
        self._claims_in_flight = 0
        self._requested = 0
        self._exclusive_in_flight = False
        # Whether the last claim got all it asked for: the queue has a backlog.
        self._backlog = False
        # Tasks claimed ahead of need; those no worker takes in time are given back.
        self._ahead = ClaimedAhead(_CLAIM_AHEAD_HOLD_SECONDS, self._undo_claim)
        # Set once the latest claim's tasks are handed out (or it failed).
        self._last_claim: asyncio.Future[None] | None = None
        # Tasks handed to a worker and not finished, and how long tasks run here: claiming
        # ahead pays only for short ones.
        self._run_times = RunTimes(_RUN_TIME_WEIGHT)
        self._cancel_listeners: list[Callable[[str], None]] = []
        self._demand = asyncio.Event()
        self._wake = asyncio.Event()
        add_listener = getattr(clock, "add_listener", None)
        if add_listener is not None:  # a testing.FakeClock: look again when it moves
            add_listener(self._wake.set)
        self._background: list[asyncio.Task[None]] = []
        self._finish_watch = FinishWatch(self._client, f"{self.prefix}:finished")
        # Outcomes waiting to be written in one round trip.
        # Outcomes waiting to be written: they go with the next claim, or else with the next
        # flush, one loop turn after they were recorded.
        self._outcomes: list[_Outcome] = []
        self._flusher: asyncio.Task[None] | None = None
        self._flush_scheduled = False

    def __repr__(self) -> str:
        return f"RedisBroker({masked_url(self.url)!r}, queue={self.queue!r})"

    # -- plumbing ------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise BrokerClosedError(f"{self!r} is closed")

    async def _run(self, script: str, args: list[Any]) -> Any:
        self._ensure_open()
        try:
            return await self._scripts[script](keys=[self._ready_key], args=[self.prefix, *args])
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unreachable(exc) from exc
        except RedisError as exc:
            raise BrokerError(f"Redis refused {script}: {exc}") from exc

    async def _run_repairing(self, script: str, args: list[Any]) -> Any:
        """Run a script that replies ``{quarantined entry/reason pairs, result}``: the pairs
        (garbage its validation phase moved aside) are logged, the result returned."""
        quarantined, result = await self._run(script, args)
        self._log_quarantined(quarantined)
        return result

    @contextlib.contextmanager
    def _direct(self) -> Iterator[None]:
        """Around a plain command (no script): refuse use after close, and turn a failure to
        reach Redis into ``BrokerUnavailableError`` with the password masked."""
        self._ensure_open()
        try:
            yield
        except (RedisError, OSError) as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> BrokerUnavailableError:
        if request_was_sent(exc):
            return BrokerOutcomeUnknownError(
                f"Redis at {masked_url(self.url)} did not answer: {exc}; a write may have "
                "been carried out (add_task retried with the same task_id is safe)"
            )
        return BrokerUnavailableError(f"Redis at {masked_url(self.url)} is unreachable: {exc}")

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def connect(self) -> None:
        self._ensure_open()
        try:
            await self._client.ping()
        except (SetupRefusedError, AuthenticationError) as exc:  # the URL asks for what
            # this server refuses: a db out of range, a protocol it lacks, wrong credentials
            raise ConfigurationError(f"Redis at {masked_url(self.url)}: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise self._unreachable(exc) from exc
        await self._check_server()

    async def _check_server(self) -> None:
        """Warn once about server settings under which acknowledged tasks can be lost."""
        if self._checked_server:
            return
        self._checked_server = True
        try:
            config: dict[Any, Any] = dict(await self._client.config_get("appendonly"))
            config.update(await self._client.config_get("maxmemory-policy"))
        except ResponseError:
            logger.debug("CONFIG GET is not allowed; cannot check Redis persistence settings")
            return
        if _text(config.get(b"appendonly", config.get("appendonly"))) == "no":
            logger.warning(
                "Redis at %s runs without AOF (appendonly no): tasks acknowledged after the "
                "last snapshot are lost if Redis restarts",
                masked_url(self.url),
                extra={"katana_event": "redis_not_durable"},
            )
        policy = _text(config.get(b"maxmemory-policy", config.get("maxmemory-policy")))
        if policy.startswith("allkeys"):
            logger.warning(
                "Redis at %s evicts keys under memory pressure (maxmemory-policy %s): tasks "
                "can be lost; use noeviction",
                masked_url(self.url),
                policy,
                extra={"katana_event": "redis_evicts"},
            )

    async def close(self) -> None:
        if self._closed:
            return
        await self._enqueues.wait_sent()  # enqueues already accepted are answered first
        await self._stop_background()
        await self._finish_watch.close()
        self._give_back_ahead()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(BrokerClosedError(f"{self!r} closed while waiting"))
        # Whatever outcomes are still queued (tasks handed back included) get written now.
        with contextlib.suppress(BrokerError):
            await self._flush_outcomes()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        # Its claims are all written or handed back: no longer alive as far as others know.
        await asyncio.to_thread(self._liveness.stop)
        self._closed = True
        await self._client.aclose()

    async def _stop_background(self) -> None:
        """Stop the consumer loops; they also watch ``_closing`` and leave on their own.

        Cancelling a task while redis-py reads a reply can be swallowed by the client
        (redis-py#2028, #2551), so cancellation is repeated until every loop has ended.
        """
        self._closing = True
        self._demand.set()
        self._wake.set()
        self._held_empty.set()
        pending = {task for task in self._background if not task.done()}
        fetchers = {task for task in pending if task.get_name() == _FETCH_LOOP}
        if fetchers:
            # Claims in flight finish, so their tasks are handed back at once (no dequeue
            # waits for them any more), instead of waiting out their lease.
            await asyncio.wait(fetchers, timeout=_CLAIM_GRACE_SECONDS)
            pending = {task for task in pending if not task.done()}
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)

    # -- producing -----------------------------------------------------------------------

    async def enqueue(self, task: Task) -> Task | None:
        return await self._enqueue_one(encode_new_task(task))

    async def _enqueue_one(self, values: list[Any]) -> Task | None:
        """Store one encoded task, coalesced with concurrent calls; ``None`` or what kept it out."""
        for _ in range(_ENQUEUE_ATTEMPTS):
            self._ensure_open()
            held_by = await self._enqueues.submit(values)
            if not held_by:
                return None
            existing = await self.get_task(held_by.decode())
            if existing is not None:
                return existing
            # It was deleted in between (or its record is unreadable): try again.
        raise BrokerError(
            f"task {held_by.decode()!r} keeps {values[0].decode()!r} out but cannot be read"
        )

    async def _enqueue_batch(self, batch: list[list[Any]]) -> list[bytes]:
        """One enqueue.lua call for coalesced tasks: for each, b'' or the id that kept it out."""
        values = [value for task_values in batch for value in task_values]
        held_by, _ = await self._enqueue(values)
        return cast("list[bytes]", held_by)

    async def _enqueue(self, values: list[Any], slot: str = "", slot_ttl_ms: int = 0) -> Any:
        """Run enqueue.lua on encoded tasks; its reply without the quarantined entries."""
        args = [self._now_ms(), slot, slot_ttl_ms, *values]
        quarantined, *reply = await self._run("enqueue", args)
        self._log_quarantined(quarantined)
        return reply

    async def enqueue_unique(self, task: Task) -> Task | None:
        if not task.unique_key:
            raise ValueError("enqueue_unique needs a task with a unique_key")
        return await self._enqueue_one(encode_new_task(task, unique=True))

    async def enqueue_many(self, tasks: Iterable[Task]) -> None:
        args: list[Any] = []
        for task in tasks:
            args.extend(encode_new_task(task))
            # Keep each script call short: it blocks Redis while it runs.
            if len(args) >= ENQUEUE_VALUES_PER_TASK * _ENQUEUE_BATCH:
                await self._enqueue(args)
                args = []
        if args:
            await self._enqueue(args)

    # -- consuming -----------------------------------------------------------------------

    async def dequeue(self, timeout: float | None = None) -> Task | None:
        self._ensure_open()
        if self._closing:
            raise BrokerClosedError(f"{self!r} is closing")
        self._start_consuming()  # the heartbeat must renew whatever this process claims
        if self._ahead and not self._waiters:
            return self._hand_over(self._ahead.pop())
        if timeout == 0:
            exclusive = not self._held and not self._claims_in_flight
            _, tasks = await self._claim(1, exclusive=exclusive)
            return self._hand_over(tasks[0]) if tasks else None
        waiter: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._demand.set()
        try:
            if timeout is None:  # the worker's call: no timer to arm and disarm per task
                return self._hand_over(await waiter)
            async with asyncio.timeout(timeout):
                return self._hand_over(await waiter)
        except TimeoutError:
            self._pass_on(waiter)
            return None
        except asyncio.CancelledError:
            self._pass_on(waiter)
            raise
        finally:
            # Test membership first: a failed deque.remove formats the future's repr.
            if waiter in self._waiters:  # not already taken off by _deliver
                self._waiters.remove(waiter)

    def _hand_over(self, task: Task) -> Task:
        """Note when a worker took ``task``; its outcome then tells how long tasks run."""
        self._run_times.started(task.id)
        if self._claim_ahead:
            self._demand.set()  # a worker took a task: claim its replacement ahead if it pays
        return task

    def _pass_on(self, waiter: asyncio.Future[Task]) -> None:
        """A task claimed for a ``dequeue`` that left goes to the next one (see ``_deliver``)."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self._deliver(waiter.result())

    def _start_consuming(self) -> None:
        if self._background:
            return
        self._liveness.start()
        self._background = [
            *(asyncio.create_task(self._fetch_loop(), name=_FETCH_LOOP) for _ in range(_FETCHERS)),
            asyncio.create_task(self._heartbeat_loop(), name="katana-redis-heartbeat"),
            asyncio.create_task(self._listen_loop(), name="katana-redis-wake"),
        ]

    async def _claim(self, count: int, *, exclusive: bool) -> tuple[float | None, list[Task]]:
        """Claim up to ``count`` tasks, writing the queued outcomes in the same round trip.

        ``exclusive``: this process holds nothing and claims nothing else meanwhile, so the
        claim may take a suspect task (which then runs alone).
        """
        batch = self._take_outcomes()
        args: list[Any] = [
            self._now_ms(),
            count,
            int(self.lease_seconds * 1000),
            new_task_id(),
            1 if exclusive else 0,
            self._owner,
            self._alive_ms,
        ]
        for outcome in batch:
            args.extend(outcome.values)
        try:
            reply = await self._run("claim", args)
        except asyncio.CancelledError:
            if self._closing:
                # close() cut this claim short: the outcomes it carried go back to the buffer
                # for close()'s last flush. Had Redis run the claim already, that second write
                # changes nothing: each outcome is fenced by its claim token.
                self._outcomes[:0] = [o for o in batch if not o.future.done()]
            else:
                self._resolve(batch, BrokerError("write interrupted"))
            raise
        except BaseException as exc:
            self._resolve(batch, exc)
            raise
        self._resolve(batch, reply[1])
        self._log_quarantined(reply[2])
        self._claim_mode = reply[3]
        next_due = float(reply[0]) / 1000 if reply[0] else None
        tasks = []
        for record in reply[4:]:
            fields = dict(zip(record[::2], record[1::2], strict=True))
            task_id = fields[b"id"].decode(errors="replace")
            try:
                task = decode_task(fields, task_id)
            except MalformedRecordError as exc:
                await self._quarantine_record(task_id, exc)
                continue
            self._held[task_id] = task.claim_token or ""
            self._members[task_id] = fields.get(b"member", b"")
            self._held_empty.clear()
            tasks.append(task)
        return next_due, tasks

    def _release(self, task_id: str, claim_token: str) -> None:
        """Stop renewing the claim (its outcome is being written, or it was lost)."""
        self._run_times.ended(task_id)
        if not claim_token or self._held.get(task_id) == claim_token:
            self._held.pop(task_id, None)
            self._members.pop(task_id, None)
            if not self._held:
                self._held_empty.set()

    async def _quarantine_record(self, task_id: str, exc: MalformedRecordError) -> None:
        """Move a record that does not decode aside, so that no worker runs it (claimed) and
        no listing counts it (listed)."""
        logger.error(
            "task record %s is malformed and was quarantined: %s",
            task_id,
            exc,
            extra={"katana_event": "task_quarantined", "task_id": task_id},
        )
        try:
            await self._run_repairing(
                "quarantine", [self._now_ms(), task_id, f"malformed record: {exc}"]
            )
        except BrokerError as error:  # its lease expires and the next claim retries this
            logger.warning("could not quarantine task record %s: %s", task_id, error)

    def _log_quarantined(self, pairs: list[bytes]) -> None:
        """Log what a script moved to quarantine (entry, reason pairs)."""
        for raw_entry, raw_reason in zip(pairs[::2], pairs[1::2], strict=True):
            entry = raw_entry.decode(errors="replace")
            logger.warning(
                "quarantined %r: %s",
                entry[:200],
                raw_reason.decode(errors="replace"),
                extra={"katana_event": "task_quarantined", "entry": entry[:200]},
            )

    def _deliver(self, task: Task) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(task)
                return
        if self._closing or not self._claim_ahead:
            self._undo_claim(task)  # a dequeue that left (timed out, or cancelled by shutdown)
            return
        # Claimed ahead, or claimed for a dequeue that left: the next worker to ask takes it.
        self._ahead.add(task)

    def _undo_claim(self, task: Task) -> asyncio.Future[bool]:
        """Hand back a task no worker started: PENDING in its old place, no attempt counted."""
        member = self._members.get(task.id, b"")
        return self._submit("release", task.id, task.claim_token, member, "")

    def _give_back_ahead(self) -> list[asyncio.Future[bool]]:
        """Undo the claims of every task claimed ahead (pause, shutdown, close)."""
        return [self._undo_claim(task) for task in self._ahead.take_all()]

    async def release_claimed_ahead(self) -> None:
        if self._ahead and not self._closed:
            await asyncio.gather(*self._give_back_ahead(), return_exceptions=True)

    def _wanted_ahead(self, waiting: int) -> int:
        """How many tasks this process should hold claimed ahead of its workers now."""
        if (
            not self._claim_ahead
            or not self._backlog
            or self._claim_mode
            or self._run_times.average_seconds > _CLAIM_AHEAD_MAX_RUN_SECONDS
        ):
            return 0
        # One per worker of this process: those running a task and those waiting for one.
        return min(self._run_times.running + waiting, self._claim_batch)

    async def _fetch_loop(self) -> None:
        """Claim tasks for the waiting ``dequeue`` calls, as many per round trip as wait.

        ``_FETCHERS`` of these run. A claim asks for the ``dequeue`` calls waiting that no
        other claim serves, plus what ``_wanted_ahead`` allows.
        """
        backoff = _BACKOFF_FIRST_SECONDS
        while not self._stopping():
            await self._demand.wait()
            # Workers woken together finish together: let them all ask before claiming.
            await asyncio.sleep(0)
            waiting = sum(1 for waiter in self._waiters if not waiter.done())
            wanted = waiting + self._wanted_ahead(waiting) - len(self._ahead) - self._requested
            if wanted <= 0 or self._stopping() or self._exclusive_in_flight:
                self._demand.clear()  # a claim that returns sets it again
                continue
            if self._claim_mode and (self._held or self._claims_in_flight):
                # A suspect task runs alone: finish what we hold before claiming more.
                if self._claims_in_flight:
                    self._demand.clear()
                else:
                    await self._held_empty.wait()
                continue
            # Alone and idle with a backlog (and not after a suspect), a claim takes half of
            # what is wanted and leaves the rest to the other fetcher, so that two claims take
            # turns from then on. Without a backlog one claim serves every waiting worker, as
            # a new task then needs no second claim beside its own. Only a lone claim may
            # take a suspect task; two at once never do.
            exclusive = not self._held and not self._claims_in_flight
            count = min(wanted, self._claim_batch)
            if exclusive and count > 1 and self._backlog and not self._claim_mode:
                exclusive, count = False, (count + 1) // 2
            self._wake.clear()
            try:
                next_due, claimed = await self._claim_and_deliver(count, exclusive=exclusive)
            except Exception as exc:
                logger.warning(
                    "cannot claim tasks (%s); retrying in %.2fs",
                    exc,
                    backoff,
                    exc_info=not isinstance(exc, BrokerError),
                    extra={"katana_event": "broker_error"},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_SECONDS)
                continue
            backoff = _BACKOFF_FIRST_SECONDS
            if not claimed:
                await self._sleep_until_woken(next_due)

    async def _claim_and_deliver(self, count: int, *, exclusive: bool) -> tuple[float | None, int]:
        """One claim of the fetch loop: (next due time, how many tasks it handed out)."""
        self._claims_in_flight += 1
        self._requested += count
        self._exclusive_in_flight = exclusive
        earlier, self._last_claim = self._last_claim, asyncio.get_running_loop().create_future()
        this_claim = self._last_claim
        try:
            try:
                next_due, tasks = await self._claim(count, exclusive=exclusive)
            finally:
                self._claims_in_flight -= 1
                self._requested -= count
                self._exclusive_in_flight = False
                self._demand.set()  # whoever waits for this claim to end looks again
            if earlier is not None and not earlier.done():
                # Redis ran the earlier claim first, but its reply may be read after this
                # one's: hand out its tasks first, as they come first in the queue.
                await asyncio.wait([earlier])
            self._backlog = len(tasks) >= count
            for task in tasks:
                self._deliver(task)
            return next_due, len(tasks)
        finally:
            this_claim.set_result(None)

    async def _sleep_until_woken(self, next_due: float | None) -> None:
        """Wait for a wake-up notification, the next delayed task, or the safety poll."""
        wait = _SAFETY_POLL_SECONDS
        if next_due is not None:
            wait = min(wait, max(0.0, next_due - self._clock()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    def _stopping(self) -> bool:
        return self._closing

    async def _listen_loop(self) -> None:
        """Turn the queue's notifications into ``_wake`` events and cancellation requests."""
        wake_channel = f"{self.prefix}:wake".encode()
        cancel_channel = f"{self.prefix}:cancel".encode()
        backoff = _BACKOFF_FIRST_SECONDS
        while not self._stopping():
            pubsub: PubSub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(wake_channel, cancel_channel)
                self._wake.set()  # anything published while we were away is now missed
                backoff = _BACKOFF_FIRST_SECONDS
                while not self._stopping():
                    message = await pubsub.get_message(timeout=_SAFETY_POLL_SECONDS)
                    if message is None:
                        continue
                    if message.get("channel") == cancel_channel:
                        self._cancel_requested(bytes(message["data"]).decode(errors="replace"))
                    elif message.get("data") == b"paused":
                        self._give_back_ahead()
                    else:
                        self._wake.set()
            except (RedisError, OSError) as exc:
                logger.debug("wake-up channel lost (%s); resubscribing", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py lacks the hint

    async def _heartbeat_loop(self) -> None:
        # Every tick recovers orphans and expired leases; leases are renewed when due.
        tick = min(self.heartbeat_seconds, _ORPHAN_SWEEP_SECONDS)
        renewed_at = time.monotonic()
        while not self._stopping():
            await asyncio.sleep(tick)
            if self._stopping():
                return
            # Half a tick early rather than a whole tick late.
            renew = time.monotonic() - renewed_at >= self.heartbeat_seconds - tick / 2
            try:
                await self.heartbeat(renew=renew)
                if renew:
                    renewed_at = time.monotonic()
            except BrokerError as exc:
                logger.warning(
                    "heartbeat failed (%s); leases of this process may expire",
                    exc,
                    extra={"katana_event": "broker_error"},
                )

    async def heartbeat(self, *, renew: bool = True) -> None:
        """Renew this process's leases (unless ``renew`` is false) and recover expired leases
        and orphans (claims of processes whose liveness mark expired) of any process, in one
        step.

        Runs by itself every second (or ``heartbeat_seconds`` if shorter) once this broker
        consumes, renewing every ``heartbeat_seconds``.
        """
        held = list(self._held.items()) if renew else []
        args: list[Any] = [
            self._now_ms(),
            int(self.lease_seconds * 1000),
            self.max_deliveries,
            self._ttl_ms,
            self._alive_ms,
        ]
        for task_id, token in held:
            args += [task_id, token]
        reply = await self._run("heartbeat", args)
        lost, requeued, quarantined, dead, cancel_requested, orphans = reply
        renewed = dict(held)
        for raw_id in lost:
            task_id = raw_id.decode()
            self._claim_lost(task_id, renewed.get(task_id, ""))
        self._log_quarantined(quarantined)
        if orphans:
            logger.warning(
                "%d tasks of worker processes that are gone (liveness mark expired) were "
                "taken back",
                orphans,
                extra={"katana_event": "orphans_recovered"},
            )
        if requeued:
            logger.warning(
                "%d tasks whose worker stopped renewing its lease or liveness mark are "
                "PENDING again",
                requeued,
                extra={"katana_event": "leases_recovered"},
            )
        for raw_id in cancel_requested:
            self._cancel_requested(raw_id.decode())
        for raw_id in dead:
            logger.error(
                "task %s is DEAD: delivered %d times and each time its worker was lost",
                raw_id.decode(),
                self.max_deliveries,
                extra={"katana_event": "task_dead", "task_id": raw_id.decode()},
            )

    def _claim_lost(self, task_id: str, token: str) -> None:
        """This process learned that its claim ``token`` on ``task_id`` is gone."""
        if self._held.get(task_id) != token:
            return  # its outcome was handed over meanwhile: finished, not lost
        self._release(task_id, token)
        ahead = self._ahead.take(task_id)  # claimed ahead: no worker of ours may start it
        logger.warning(
            "lost the claim on task %s: its lease or this process's liveness mark expired, or "
            "its record was changed or deleted; it is not ours to run any more",
            task_id,
            extra={"katana_event": "lease_lost", "task_id": task_id},
        )
        if ahead is None:
            # A worker of ours runs it: stop it now, as its outcome would be discarded and it
            # may overlap the new owner's run.
            for listener in self._cancel_listeners:
                listener(task_id)

    # -- outcomes ------------------------------------------------------------------------

    def _submit(
        self, op: str, task_id: str, claim_token: str | None, a: Any, b: Any, c: Any = ""
    ) -> asyncio.Future[bool]:
        self._ensure_open()
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._outcomes.append(_Outcome([op, task_id, claim_token or "", a, b, c], future))
        self._release(task_id, claim_token or "")
        if self._background:
            # A consumer: the worker's next dequeue makes the fetcher claim, and that claim
            # carries the outcome. The timer only writes what no claim took.
            self._wake.set()
            delay = _OUTCOME_FLUSH_DELAY_SECONDS
        else:
            delay = 0.0
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(delay, self._start_flush)
        return future

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        if self._outcomes and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush_outcomes())

    def _take_outcomes(self) -> list[_Outcome]:
        batch, self._outcomes = self._outcomes[:500], self._outcomes[500:]
        return batch

    def _resolve(self, batch: list[_Outcome], codes: list[int] | BaseException) -> None:
        """Settle the futures of written outcomes: True, False (claim lost) or TaskNotFoundError."""
        for index, outcome in enumerate(batch):
            future = outcome.future
            if future.done():
                continue
            if isinstance(codes, BaseException):
                future.set_exception(
                    codes if isinstance(codes, Exception) else BrokerError("write interrupted")
                )
            elif int(codes[index]) < 0:
                future.set_exception(TaskNotFoundError.for_id(outcome.values[1]))
            else:
                future.set_result(int(codes[index]) == 1)

    async def _flush_outcomes(self) -> None:
        """Write every queued outcome, those that arrive meanwhile in the next round trip."""
        while self._outcomes:
            batch = self._take_outcomes()
            args: list[Any] = [self._now_ms()]
            for outcome in batch:
                args.extend(outcome.values)
            try:
                codes = await self._run_repairing("finish", args)
            except BaseException as exc:
                self._resolve(batch, exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            self._resolve(batch, codes)

    def complete_soon(
        self, task_id: str, result: Any = None, *, claim_token: str | None = None
    ) -> asyncio.Future[bool]:
        try:
            encoded = b"" if result is None else orjson.dumps(result)
        except TypeError as exc:  # orjson's JSONEncodeError is a TypeError
            return failed_outcome(exc)
        return self._submit("complete", task_id, claim_token, encoded, "")

    async def mark_complete(
        self, task_id: str, result: Any = None, *, claim_token: str | None = None
    ) -> bool:
        return await self.complete_soon(task_id, result, claim_token=claim_token)

    async def mark_failed(
        self,
        task_id: str,
        error: str,
        *,
        traceback: str | None = None,
        claim_token: str | None = None,
    ) -> bool:
        entry = self._error_entry(error, traceback)
        return await self._submit("fail", task_id, claim_token, error, traceback or "", entry)

    def _error_entry(self, error: str, traceback: str | None) -> bytes:
        # The attempt number is filled in from the record by the script: -1 here.
        at = datetime.fromtimestamp(self._clock(), UTC)
        return orjson.dumps(attempt_error(-1, error, traceback, at))

    async def requeue(
        self,
        task_id: str,
        *,
        delay_seconds: float = 0.0,
        claim_token: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        delay_ms = int(delay_seconds * 1000)
        if error is None:
            return await self._submit("requeue", task_id, claim_token, delay_ms, "")
        entry = self._error_entry(error, traceback)
        return await self._submit("requeue", task_id, claim_token, delay_ms, error, entry)

    async def hand_back(self, task_id: str, *, claim_token: str) -> bool:
        # The same step as undoing a claim made ahead: attempts and deliveries as before it,
        # back in its old place in the ready set.
        member = self._members.get(task_id, b"")
        return await self._submit("release", task_id, claim_token, member, "")

    async def set_progress(
        self, task_id: str, fraction: float, message: str, *, claim_token: str | None = None
    ) -> bool:
        args = [self._now_ms(), task_id, claim_token or "", repr(float(fraction)), message]
        code = int(await self._run("progress", args))
        if code <= 0:  # the claim is gone: no need to wait for the heartbeat to find out
            self._claim_lost(task_id, claim_token or "")
        if code < 0:
            raise TaskNotFoundError.for_id(task_id)
        return code == 1

    async def extend_lease(self, task_id: str, claim_token: str) -> bool:
        reply = await self._run(
            "heartbeat",
            [
                self._now_ms(),
                int(self.lease_seconds * 1000),
                self.max_deliveries,
                self._ttl_ms,
                self._alive_ms,
                task_id,
                claim_token,
            ],
        )
        return not reply[0]  # no lost ids: the claim was renewed

    async def cancel(self, task_id: str) -> bool:
        if not could_be_task_id(task_id):  # not encodable: no task has it
            self._ensure_open()
            return False
        return int(await self._run_repairing("cancel", [self._now_ms(), task_id])) > 0

    def add_cancel_listener(self, listener: Callable[[str], None]) -> None:
        self._cancel_listeners.append(listener)

    def _cancel_requested(self, task_id: str) -> None:
        ahead = self._ahead.take(task_id)
        if ahead is not None:  # claimed ahead, not started: it ends CANCELLED without running
            self._submit("cancel", ahead.id, ahead.claim_token, "", "")
            logger.info(
                "task %s was cancelled before it started",
                task_id,
                extra={"katana_event": "task_cancelled", "task_id": task_id},
            )
            return
        if task_id in self._held:  # ours: tell whoever runs it here
            for listener in self._cancel_listeners:
                listener(task_id)

    async def mark_cancelled(self, task_id: str, *, claim_token: str | None = None) -> bool:
        return await self._submit("cancel", task_id, claim_token, "", "")

    async def update_task_status(self, task_id: str, status: TaskStatus) -> None:
        code = await self._run_repairing(
            "set_status",
            [self._now_ms(), task_id, TaskStatus(status).value, int(self.lease_seconds * 1000)],
        )
        if isinstance(code, bytes):
            raise redrive_refused(task_id, code.decode())
        if code < 0:
            raise TaskNotFoundError.for_id(task_id)
        if status is not TaskStatus.PROCESSING:
            self._release(task_id, "")

    # -- reading -------------------------------------------------------------------------

    async def get_task(self, task_id: str) -> Task | None:
        if not could_be_task_id(task_id):  # not encodable: no task has it
            self._ensure_open()
            return None
        with self._direct():
            try:
                fields = await self._client.hgetall(f"{self.prefix}:task:{task_id}")
            except ResponseError:  # WRONGTYPE: garbage under the task's key
                logger.warning("task key %s does not hold a task record", task_id)
                return None
        if not fields:
            return None
        try:
            return decode_task(cast("dict[bytes, bytes]", fields), task_id)
        except MalformedRecordError as exc:
            logger.warning("task record %s is malformed: %s", task_id, exc)
            return None

    async def wait_finished(self, task_id: str, timeout: float | None = None) -> Task | None:
        """Woken by the scripts' message on ``<prefix>:finished``; looks again every second."""
        self._ensure_open()
        watch = self._finish_watch
        async with asyncio.timeout(timeout):
            while True:
                finished = watch.watch(task_id)
                try:
                    await watch.subscribed()  # before reading: a later finish is not missed
                    # cancel_safe: the timeout must not be lost inside redis-py (_cancelling).
                    task = await cancel_safe(self.get_task(task_id))
                    if task is None or task.status in TERMINAL_STATUSES:
                        return task
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_SAFETY_POLL_SECONDS):
                            await finished
                finally:
                    watch.unwatch(task_id, finished)

    async def list_tasks(self, query: TaskQuery, *, limit: int = 50, offset: int = 0) -> TaskPage:
        check_page(limit, offset)
        status = "" if query.status is None else query.status.value
        scheduled = {None: "", True: "1", False: "0"}[query.scheduled]
        text = (query.text or "").lower()
        reply = await self._run(
            "list",
            [
                self._now_ms(),
                status,
                scheduled,
                query.name or "",
                text,
                offset,
                limit,
                FILTER_SCAN_LIMIT,
            ],
        )
        tasks = []
        # A record that does not decode is neither listed nor counted, so the total and the
        # page agree, and is quarantined, so that later pages do not count it either
        # (list.lua drops the index entries whose record is gone as it meets them).
        malformed = 0
        for record in reply[2:]:
            fields = dict(zip(record[::2], record[1::2], strict=True))
            task_id = fields[b"id"].decode(errors="replace")
            try:
                tasks.append(decode_task(fields, task_id))
            except MalformedRecordError as exc:
                malformed += 1
                await self._quarantine_record(task_id, exc)
        return TaskPage(total=int(reply[0]) - malformed, tasks=tasks, total_is_exact=reply[1] == 1)

    async def oldest_due_at(self) -> datetime | None:
        raw = await self._run("oldest_due", [self._now_ms()])
        return None if not raw else datetime.fromtimestamp(int(raw) / 1000, UTC)

    async def finished_counts(self, edges: Sequence[datetime]) -> list[int]:
        bounds = [int(edge.timestamp() * 1000) for edge in edges]
        if len(bounds) < 2:
            return []
        return [
            int(count) for count in await self._run("finished_counts", [self._now_ms(), *bounds])
        ]

    async def set_paused(self, paused: bool) -> None:
        key = f"{self.prefix}:paused"
        with self._direct():
            if paused:
                await self._client.set(key, b"1")
                # Consumers give back what they claimed ahead; this process at once.
                await self._client.publish(f"{self.prefix}:wake", b"paused")
                await self.release_claimed_ahead()
            else:
                await self._client.delete(key)
                await self._client.publish(f"{self.prefix}:wake", b"resumed")

    async def is_paused(self) -> bool:
        with self._direct():
            return bool(await self._client.exists(f"{self.prefix}:paused"))

    async def record_worker(self, info: WorkerInfo) -> None:
        key = f"{self.prefix}:workers"
        with self._direct():
            try:
                await self._client.hset(key, info.id, info.to_json())
            except ResponseError:  # WRONGTYPE: garbage where the records belong
                aside = f"{key}:quarantined:{self._now_ms()}"
                await self._client.rename(key, aside)
                logger.warning(
                    "key %s did not hold worker records; moved to %s",
                    key,
                    aside,
                    extra={"katana_event": "task_quarantined", "entry": key},
                )
                await self._client.hset(key, info.id, info.to_json())

    async def remove_worker(self, worker_id: str) -> None:
        with self._direct():
            await self._client.hdel(f"{self.prefix}:workers", worker_id)

    async def list_workers(self) -> list[WorkerInfo]:
        key = f"{self.prefix}:workers"
        with self._direct():
            try:
                raw = cast("dict[bytes, bytes]", await self._client.hgetall(key))
            except ResponseError:  # WRONGTYPE: garbage where the records belong
                logger.warning("key %s does not hold worker records", key)
                return []
        now = datetime.fromtimestamp(self._clock(), UTC)
        workers, gone = [], []
        for worker_id, record in raw.items():
            try:
                info = WorkerInfo.from_json(record)
            except ValueError as exc:
                logger.warning("worker record %r is malformed: %s", worker_id[:100], exc)
                gone.append(worker_id)
                continue
            if info.expires_at <= now:
                gone.append(worker_id)
            else:
                workers.append(info)
        if gone:  # a process that died without saying so
            with contextlib.suppress(RedisError, OSError):
                await self._client.hdel(key, *gone)
        return sorted(workers, key=lambda info: info.id)

    async def delete_task(self, task_id: str) -> bool:
        if not could_be_task_id(task_id):  # not encodable: no task has it
            self._ensure_open()
            raise TaskNotFoundError.for_id(task_id)
        code = int(await self._run_repairing("delete", [self._now_ms(), task_id]))
        if code < 0:
            raise TaskNotFoundError.for_id(task_id)
        return code == 1

    async def count_by_status(self) -> dict[TaskStatus, int]:
        ready, delayed, processing, terminal, quarantined = await self._run(
            "counts", [self._now_ms()]
        )
        self._log_quarantined(quarantined)
        counts = dict.fromkeys(TaskStatus, 0)
        counts[TaskStatus.PENDING] = int(ready) + int(delayed)
        counts[TaskStatus.PROCESSING] = int(processing)
        for raw_status, raw_count in zip(terminal[::2], terminal[1::2], strict=True):
            with contextlib.suppress(KeyError, ValueError):
                counts[TaskStatus(raw_status.decode())] = int(raw_count)
        return counts

    async def claim_slot(self, key: str, ttl_seconds: float) -> bool:
        # ``...:slot:<key>``, one per periodic slot: SET NX PX is atomic on its own (the first
        # SET wins), and Redis expires the key, so no Lua script is needed.
        ttl_ms = _slot_ttl_ms(ttl_seconds)
        with self._direct():
            won = await self._client.set(f"{self.prefix}:slot:{key}", b"1", nx=True, px=ttl_ms)
        return bool(won)

    async def enqueue_in_slot(self, task: Task, key: str, ttl_seconds: float) -> bool:
        # One script call: the slot key (as claim_slot sets it) and the task, or neither.
        ttl_ms = _slot_ttl_ms(ttl_seconds)
        values = encode_new_task(task, unique=bool(task.unique_key))
        _, took = await self._enqueue(values, key, ttl_ms)
        return bool(took)

    async def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest entries moved to quarantine, each with the entry, reason and time."""
        key = f"{self.prefix}:quarantine"
        with self._direct():
            try:
                raw = cast("list[bytes]", await self._client.lrange(key, 0, limit - 1))
            except ResponseError:  # WRONGTYPE: the next script moves the garbage aside
                logger.warning("key %s does not hold a quarantine list", key)
                return []
        notes = []
        for item in raw:
            # Entries may hold the garbage's raw bytes, which Lua's cjson leaves unescaped.
            with contextlib.suppress(ValueError):
                note = orjson.loads(item.decode("utf-8", "replace"))
                if isinstance(note, dict):
                    notes.append(note)
        return notes

    async def purge(self) -> None:
        """Delete every key of this queue (tests and benchmarks start from nothing)."""
        self._ensure_open()
        batch: list[bytes] = []
        async for key in self._client.scan_iter(match=f"{self.prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self._client.unlink(*batch)
                batch = []
        if batch:
            await self._client.unlink(*batch)


def _slot_ttl_ms(ttl_seconds: float) -> int:
    if not ttl_seconds > 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
    return max(1, round(ttl_seconds * 1000))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


class _Outcome(NamedTuple):
    values: list[Any]  # the five values apply_outcomes reads
    future: asyncio.Future[bool]

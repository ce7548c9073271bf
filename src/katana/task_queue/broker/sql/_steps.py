"""Every state change of a SQL queue, once, as steps a driver runs in one write transaction.

The rules are those of ``InMemoryBroker`` and the Redis scripts: outcomes are fenced by the
claim token; a task cancelled while it ran is CANCELLED when handed back; a lease that expired
hands the task back (DEAD after ``max_deliveries`` lost workers); finished tasks give up their
unique key because the holder lookup reads only unfinished tasks; an id is stored once (an
enqueue of a stored id returns that task); a redrive restarts the retry budget, and the
attempts before it (``attempts_before``) keep the error history numbered.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import orjson

from ...models import TERMINAL_STATUSES, Task, TaskStatus, attempt_error
from ..base import redrive_refused
from ._codec import TASK_COLUMNS, decode_task, encode_task, from_us

__all__ = [
    "Beat",
    "Outcome",
    "Rows",
    "Statement",
    "Steps",
    "apply_outcomes",
    "cancel",
    "claim",
    "claim_slot",
    "claim_with_outcomes",
    "delete_task",
    "enqueue",
    "enqueue_each",
    "enqueue_in_slot",
    "enqueue_one",
    "enqueue_unique",
    "extend_lease",
    "heartbeat",
    "next_seq",
    "set_progress",
    "set_status",
    "slot_ttl_us",
]

Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement with ``?`` placeholders; ``many``: ``params`` is a list of rows."""

    sql: str
    params: Any = ()
    many: bool = False


_T = TypeVar("_T")
#: Yields statements, is sent each one's rows (``[]`` for ``many``), returns its result.
Steps = Generator[Statement, Rows, _T]

_UNFINISHED = ("PENDING", "PROCESSING")
_TERMINAL_SQL = "('COMPLETED', 'FAILED', 'CANCELLED', 'DEAD')"
#: At most this many expired leases or finished tasks are handled per heartbeat.
_SWEEP_BATCH = 1000


class Outcome(NamedTuple):
    """What a worker reports about a claimed task; ``token`` ``None`` is not checked.

    ``op``: ``complete`` (``value``: the result as JSON or ``None``), ``fail`` (``value``:
    error, ``traceback``), ``requeue`` (``delay_us``; ``value``: the error of a retried
    attempt or ``None``), ``cancel``, or ``release`` (a claim undone before the task ran).
    """

    op: str
    task_id: str
    token: str | None
    value: str | None = None
    traceback: str | None = None
    delay_us: int = 0


_INSERT_TASK = (
    f"INSERT INTO katana_tasks (queue, {TASK_COLUMNS}, seq, lease_until, cancel_requested, lost)"
    f" VALUES (?, {', '.join('?' * 21)}, ?, NULL, 0, 0)"
    # A stored id stays as it is: the first enqueue stands (a producer retrying its write).
    " ON CONFLICT (queue, id) DO NOTHING"
)


def next_seq(queue: str, count: int) -> Steps[int]:
    """Reserve ``count`` arrival numbers; returns the first."""
    rows = yield Statement(
        "UPDATE katana_queues SET seq = seq + ? WHERE queue = ? RETURNING seq", (count, queue)
    )
    return int(rows[0][0]) - count + 1


def enqueue(queue: str, tasks: list[Task]) -> Steps[None]:
    """Store ``tasks`` PENDING, leaving out those whose id is stored already."""
    if not tasks:
        return
    encoded = [encode_task(task) for task in tasks]  # may raise: before any write
    first = yield from next_seq(queue, len(tasks))
    rows = [(queue, *values, first + index) for index, values in enumerate(encoded)]
    yield Statement(_INSERT_TASK, rows, many=True)


def _stored(queue: str, task_id: str) -> Steps[Task | None]:
    rows = yield Statement(
        f"SELECT {TASK_COLUMNS} FROM katana_tasks WHERE queue = ? AND id = ?", (queue, task_id)
    )
    return decode_task(rows[0]) if rows else None


def enqueue_one(queue: str, task: Task) -> Steps[Task | None]:
    """Store ``task`` unless its id is stored already; returns that stored task."""
    encode_task(task)  # a payload that is not JSON fails before anything is read
    stored = yield from _stored(queue, task.id)
    if stored is None:
        yield from enqueue(queue, [task])
    return stored


def _holder(queue: str, key: str) -> Steps[Task | None]:
    rows = yield Statement(
        f"SELECT {TASK_COLUMNS} FROM katana_tasks WHERE queue = ? AND unique_key = ?"
        " AND status IN ('PENDING', 'PROCESSING') LIMIT 1",
        (queue, key),
    )
    return decode_task(rows[0]) if rows else None


def enqueue_unique(queue: str, task: Task) -> Steps[Task | None]:
    """Store ``task`` unless its id is stored or an unfinished task holds its unique key;
    returns the stored task, or else that holder."""
    if not task.unique_key:
        raise ValueError("enqueue_unique needs a task with a unique_key")
    encode_task(task)
    stored = yield from _stored(queue, task.id)
    if stored is not None:
        return stored
    holder = yield from _holder(queue, task.unique_key)
    if holder is None:
        yield from enqueue(queue, [task])
    return holder


def enqueue_each(
    queue: str, requests: Sequence[tuple[Task, bool]]
) -> Steps[list[Task | Exception | None]]:
    """Several ``enqueue_one`` (``enqueue_unique`` where the flag is set) in one transaction,
    in order, so that each sees those before it; one answer each, or the exception it
    failed with, its writes undone (a savepoint) and the others' kept."""
    answers: list[Task | Exception | None] = []
    for task, unique in requests:
        yield Statement("SAVEPOINT katana_enqueue")
        try:
            if unique:
                answer = yield from enqueue_unique(queue, task)
            else:
                answer = yield from enqueue_one(queue, task)
        except Exception as exc:  # a task that cannot be stored fails alone
            yield Statement("ROLLBACK TO katana_enqueue")
            answers.append(exc)
        else:
            answers.append(answer)
        yield Statement("RELEASE katana_enqueue")
    return answers


def claim_slot(queue: str, key: str, ttl_us: int, now_us: int) -> Steps[bool]:
    rows = yield Statement(
        "SELECT expires_at FROM katana_slots WHERE queue = ? AND key = ?", (queue, key)
    )
    if rows and rows[0][0] > now_us:
        return False
    yield Statement(
        "INSERT INTO katana_slots (queue, key, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (queue, key) DO UPDATE SET expires_at = excluded.expires_at",
        (queue, key, now_us + ttl_us),
    )
    return True


def enqueue_in_slot(queue: str, task: Task, key: str, ttl_us: int, now_us: int) -> Steps[bool]:
    """The slot key and the task, or neither: one transaction."""
    if not (yield from claim_slot(queue, key, ttl_us, now_us)):
        return False
    if task.unique_key:
        yield from enqueue_unique(queue, task)
    else:
        yield from enqueue_one(queue, task)
    return True


def slot_ttl_us(ttl_seconds: float) -> int:
    """``ttl_seconds`` of a slot in microseconds; ``ValueError`` unless it is positive."""
    if not ttl_seconds > 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
    return max(1, round(ttl_seconds * 1_000_000))


def claim(
    queue: str, count: int, now_us: int, lease_us: int, token_prefix: str, owner: str | None
) -> Steps[tuple[list[Task], int | None]]:
    """Claim up to ``count`` due tasks in run order for ``owner``; returns them and the next
    due time.

    The next due time (of the first PENDING task, due or not) is ``None`` when there is none
    or the queue is paused. Each claim token is ``token_prefix`` and the task's arrival number.
    """
    rows = yield Statement("SELECT paused FROM katana_queues WHERE queue = ?", (queue,))
    if rows and rows[0][0]:
        return [], None
    claimed: list[Task] = []
    if count > 0:
        rows = yield Statement(
            "UPDATE katana_tasks SET status = 'PROCESSING', attempts = attempts + 1,"
            " started_at = ?, finished_at = NULL, lease_until = ?, owner = ?,"
            # Progress belongs to one attempt: each starts without.
            " progress = NULL, progress_message = NULL,"
            " claim_token = ? || CAST(seq AS TEXT)"
            " WHERE queue = ? AND id IN (SELECT id FROM katana_tasks WHERE queue = ?"
            " AND status = 'PENDING' AND scheduled_at <= ?"
            " ORDER BY priority, scheduled_at, seq LIMIT ?)"
            f" RETURNING {TASK_COLUMNS}, seq",
            (now_us, now_us + lease_us, owner, token_prefix, queue, queue, now_us + 1, count),
        )
        # RETURNING gives no order: put them back in run order.
        rows.sort(key=lambda row: (row[3], row[5], row[-1]))
        claimed = [decode_task(row) for row in rows]
        if len(claimed) == count:
            return claimed, now_us  # there may be more: look again at once
    rows = yield Statement(
        "SELECT MIN(scheduled_at) FROM katana_tasks WHERE queue = ? AND status = 'PENDING'",
        (queue,),
    )
    return claimed, rows[0][0]


def _error_entries(errors: str, attempt: int, error: str, tb: str | None, now_us: int) -> str:
    """``errors`` with ``attempt`` (counted over the task's whole life) failing ``error``."""
    entries = orjson.loads(errors)
    entries.append(attempt_error(attempt, error, tb, from_us(now_us)))
    return orjson.dumps(entries).decode()


_FINISH = (
    "UPDATE katana_tasks SET status = ?, finished_at = ?, claim_token = NULL,"
    " lease_until = NULL, cancel_requested = 0"
)


def apply_outcomes(queue: str, outcomes: list[Outcome], now_us: int) -> Steps[list[int]]:
    """Record ``outcomes``; one code each: 1 applied, 0 the claim was lost, -1 unknown task."""
    codes = []
    for outcome in outcomes:
        rows = yield Statement(
            "SELECT status, claim_token, cancel_requested, attempts_before + attempts, errors"
            " FROM katana_tasks"
            " WHERE queue = ? AND id = ?",
            (queue, outcome.task_id),
        )
        if not rows:
            codes.append(-1)
            continue
        status, token, cancel_requested, attempts, errors = rows[0]
        if outcome.token is not None and (status != "PROCESSING" or token != outcome.token):
            codes.append(0)
            continue
        codes.append(1)
        yield from _apply(queue, outcome, now_us, bool(cancel_requested), attempts, errors)
    return codes


def _apply(
    queue: str, outcome: Outcome, now_us: int, cancel_requested: bool, attempt: int, errors: str
) -> Steps[None]:
    op, key = outcome.op, (queue, outcome.task_id)
    if op == "complete":
        yield Statement(
            f"{_FINISH}, result = ?, error = NULL, traceback = NULL WHERE queue = ? AND id = ?",
            ("COMPLETED", now_us, outcome.value, *key),
        )
        return
    if op == "fail":
        value = outcome.value or ""
        entries = _error_entries(errors, attempt, value, outcome.traceback, now_us)
        yield Statement(
            f"{_FINISH}, error = ?, traceback = ?, errors = ? WHERE queue = ? AND id = ?",
            ("FAILED", now_us, value, outcome.traceback, entries, *key),
        )
        return
    if op == "requeue" and outcome.value is not None:
        entries = _error_entries(errors, attempt, outcome.value, outcome.traceback, now_us)
        yield Statement(
            "UPDATE katana_tasks SET error = ?, traceback = ?, errors = ?"
            " WHERE queue = ? AND id = ?",
            (outcome.value, outcome.traceback, entries, *key),
        )
    if op == "cancel" or (op in ("requeue", "release") and cancel_requested):
        # Cancelled while it ran (or before a worker here started it): it does not run again.
        yield Statement(f"{_FINISH} WHERE queue = ? AND id = ?", ("CANCELLED", now_us, *key))
        return
    if op == "release":  # the claim is undone: attempts as before, its old place in the queue
        yield Statement(
            "UPDATE katana_tasks SET status = 'PENDING', attempts = attempts - 1,"
            " started_at = NULL, claim_token = NULL, lease_until = NULL"
            " WHERE queue = ? AND id = ?",
            key,
        )
        return
    seq = yield from next_seq(queue, 1)
    yield Statement(
        "UPDATE katana_tasks SET status = 'PENDING', scheduled_at = ?, seq = ?,"
        " claim_token = NULL, finished_at = NULL, lease_until = NULL WHERE queue = ? AND id = ?",
        (now_us + outcome.delay_us, seq, *key),
    )


def set_progress(
    queue: str, task_id: str, token: str | None, fraction: float, message: str
) -> Steps[int]:
    """1 recorded, 0 the claim was lost (or the task is not running), -1 unknown task."""
    rows = yield Statement(
        "SELECT status, claim_token FROM katana_tasks WHERE queue = ? AND id = ?",
        (queue, task_id),
    )
    if not rows:
        return -1
    status, current = rows[0]
    if status != "PROCESSING" or (token is not None and token != current):
        return 0
    yield Statement(
        "UPDATE katana_tasks SET progress = ?, progress_message = ? WHERE queue = ? AND id = ?",
        (fraction, message, queue, task_id),
    )
    return 1


def extend_lease(queue: str, task_id: str, token: str, until_us: int) -> Steps[bool]:
    rows = yield Statement(
        "UPDATE katana_tasks SET lease_until = ? WHERE queue = ? AND id = ?"
        " AND status = 'PROCESSING' AND claim_token = ? RETURNING id",
        (until_us, queue, task_id, token),
    )
    return bool(rows)


def cancel(queue: str, task_id: str, now_us: int) -> Steps[int]:
    """1: a PENDING task is CANCELLED; 2: a running task's cancellation is requested; else 0
    (finished, unknown, or its cancellation was requested already: only that request counts)."""
    rows = yield Statement(
        "SELECT status, cancel_requested FROM katana_tasks WHERE queue = ? AND id = ?",
        (queue, task_id),
    )
    if not rows or rows[0][0] not in _UNFINISHED or rows[0][1]:
        return 0
    if rows[0][0] == "PENDING":
        yield Statement(
            f"{_FINISH} WHERE queue = ? AND id = ?", ("CANCELLED", now_us, queue, task_id)
        )
        return 1
    yield Statement(
        "UPDATE katana_tasks SET cancel_requested = 1 WHERE queue = ? AND id = ?",
        (queue, task_id),
    )
    return 2


def set_status(
    queue: str, task_id: str, status: TaskStatus, now_us: int, lease_us: int
) -> Steps[bool]:
    """The seed's ``update_task_status`` as one step; ``False`` for an unknown task.

    Raises ``TaskStateError`` (nothing changed) to redrive a finished task whose unique key
    another unfinished task holds.
    """
    rows = yield Statement(
        "SELECT status, unique_key FROM katana_tasks WHERE queue = ? AND id = ?",
        (queue, task_id),
    )
    if not rows:
        return False
    key = (queue, task_id)
    if status is TaskStatus.PENDING:
        current, unique_key = rows[0]
        if current == "PENDING":
            return True
        if TaskStatus(current) in TERMINAL_STATUSES:
            yield from _redrive(queue, task_id, unique_key)
        seq = yield from next_seq(queue, 1)  # a fresh start: its lost workers are forgotten
        yield Statement(
            "UPDATE katana_tasks SET status = 'PENDING', seq = ?, claim_token = NULL,"
            " finished_at = NULL, lease_until = NULL, cancel_requested = 0, lost = 0"
            " WHERE queue = ? AND id = ?",
            (seq, *key),
        )
        return True
    if status is TaskStatus.PROCESSING:
        # Set by hand, not claimed: nobody renews this lease, so it expires and comes back.
        yield Statement(
            "UPDATE katana_tasks SET status = 'PROCESSING', started_at = ?, lease_until = ?"
            " WHERE queue = ? AND id = ?",
            (now_us, now_us + lease_us, *key),
        )
        return True
    finished_at = now_us if status in TERMINAL_STATUSES else None
    yield Statement(
        "UPDATE katana_tasks SET status = ?, claim_token = NULL, lease_until = NULL,"
        " finished_at = ? WHERE queue = ? AND id = ?",
        (status.value, finished_at, *key),
    )
    return True


def _redrive(queue: str, task_id: str, unique_key: str | None) -> Steps[None]:
    """A finished task runs again: it retakes its unique key and its full retry budget."""
    if unique_key is not None:
        holder = yield from _holder(queue, unique_key)
        if holder is not None:  # not the task itself: it is finished
            raise redrive_refused(task_id, holder.id)
    yield Statement(
        "UPDATE katana_tasks SET attempts_before = attempts_before + attempts, attempts = 0"
        " WHERE queue = ? AND id = ?",
        (queue, task_id),
    )


def delete_task(queue: str, task_id: str) -> Steps[int]:
    """1 deleted, 0 not finished (kept), -1 unknown."""
    rows = yield Statement(
        "SELECT status FROM katana_tasks WHERE queue = ? AND id = ?", (queue, task_id)
    )
    if not rows:
        return -1
    if TaskStatus(rows[0][0]) not in TERMINAL_STATUSES:
        return 0
    yield Statement("DELETE FROM katana_tasks WHERE queue = ? AND id = ?", (queue, task_id))
    return 1


class Beat(NamedTuple):
    """What a heartbeat found: claims lost, tasks requeued or given up, cancels requested."""

    lost: list[str]
    requeued: int
    dead: list[str]
    cancel_requested: list[str]


def heartbeat(
    queue: str,
    held: list[tuple[str, str]],
    now_us: int,
    lease_us: int,
    max_deliveries: int,
    ttl_us: int | None,
    dead_owners: Sequence[str] = (),
) -> Steps[Beat]:
    """Renew the ``held`` (id, token) claims; recover expired leases of any process, and the
    claims of ``dead_owners`` (processes known to be gone) at once; prune."""
    for owner in dead_owners:
        yield Statement(
            "UPDATE katana_tasks SET lease_until = ? WHERE queue = ? AND status = 'PROCESSING'"
            " AND owner = ?",
            (now_us, queue, owner),
        )
    lost, cancel_requested = [], []
    for task_id, token in held:
        rows = yield Statement(
            "UPDATE katana_tasks SET lease_until = ? WHERE queue = ? AND id = ?"
            " AND status = 'PROCESSING' AND claim_token = ? RETURNING cancel_requested",
            (now_us + lease_us, queue, task_id, token),
        )
        if not rows:
            lost.append(task_id)
        elif rows[0][0]:
            cancel_requested.append(task_id)  # in case the notification was missed
    expired = yield Statement(
        "SELECT id, cancel_requested, lost, scheduled_at FROM katana_tasks WHERE queue = ?"
        " AND status = 'PROCESSING' AND lease_until <= ? LIMIT ?",
        (queue, now_us, _SWEEP_BATCH),
    )
    requeued, dead = 0, []
    for task_id, cancelled, lost_before, scheduled_us in expired:
        key = (queue, task_id)
        if cancelled:  # its worker was lost while the task was being cancelled
            yield Statement(f"{_FINISH} WHERE queue = ? AND id = ?", ("CANCELLED", now_us, *key))
            continue
        if lost_before + 1 >= max_deliveries:
            error = (
                f"WorkerLost: delivered {lost_before + 1} times and each time the worker "
                "stopped renewing its lease before the task finished"
            )
            yield Statement(
                f"{_FINISH}, error = ?, lost = lost + 1 WHERE queue = ? AND id = ?",
                ("DEAD", now_us, error, *key),
            )
            dead.append(task_id)
            continue
        # Back at its original due time, so it runs before tasks that arrived after it.
        seq = yield from next_seq(queue, 1)
        yield Statement(
            "UPDATE katana_tasks SET status = 'PENDING', claim_token = NULL, lease_until = NULL,"
            " lost = lost + 1, scheduled_at = ?, seq = ? WHERE queue = ? AND id = ?",
            (min(scheduled_us, now_us), seq, *key),
        )
        requeued += 1
    if ttl_us is not None:
        yield Statement(
            "DELETE FROM katana_tasks WHERE queue = ? AND id IN (SELECT id FROM katana_tasks"
            f" WHERE queue = ? AND status IN {_TERMINAL_SQL} AND finished_at <= ? LIMIT ?)",
            (queue, queue, now_us - ttl_us, _SWEEP_BATCH),
        )
    yield Statement("DELETE FROM katana_slots WHERE queue = ? AND expires_at <= ?", (queue, now_us))
    return Beat(lost, requeued, dead, cancel_requested)


def claim_with_outcomes(
    queue: str,
    outcomes: list[Outcome],
    count: int,
    now_us: int,
    lease_us: int,
    token_prefix: str,
    owner: str | None,
) -> Steps[tuple[list[int], list[Task], int | None]]:
    """Record ``outcomes`` and claim up to ``count`` tasks, in one transaction."""
    codes = (yield from apply_outcomes(queue, outcomes, now_us)) if outcomes else []
    tasks, next_due = yield from claim(queue, count, now_us, lease_us, token_prefix, owner)
    return codes, tasks, next_due

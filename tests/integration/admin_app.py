"""The app the admin CLI and worker tests load with ``--app`` / ``katana worker``."""

from __future__ import annotations

import logging
import os

from katana.task_queue import InMemoryBroker, Task, TaskQueueService, tracing

log = logging.getLogger("admin_app")


class KeptOpenBroker(InMemoryBroker):
    """An in-memory queue that outlives each CLI invocation of a test, as it would in a
    long-running application; the test closes it for real with ``close_for_real``."""

    async def close(self) -> None:
        pass

    async def close_for_real(self) -> None:
        await super().close()


#: Set by the test; the ``service`` factory builds the app's service on it.
BROKER: InMemoryBroker | None = None


async def send_email(task: Task) -> str:
    log.info("sending to %s", task.payload.get("to"))
    return f"sent to {task.payload.get('to')}"


async def fail(task: Task) -> None:
    log.warning("about to fail")
    raise ValueError(f"bad input {task.payload.get('n')}")


async def welcome(task: Task) -> str:
    return f"Welcome, {task.payload['email']}"


EXECUTORS = {"send_email": send_email, "fail": fail, "welcome": welcome}


def service() -> TaskQueueService:
    """The admin CLI tests' app: its tasks on the test's in-memory broker."""
    assert BROKER is not None, "the test sets admin_app.BROKER first"
    return TaskQueueService(BROKER, EXECUTORS)


def plain() -> TaskQueueService:
    """A worker's app on its own in-memory queue, with nothing queued."""
    return TaskQueueService(InMemoryBroker(), EXECUTORS)


async def seeded() -> TaskQueueService:
    """A worker's app with two tasks already queued in memory: one succeeds, one fails."""
    app = TaskQueueService(InMemoryBroker(), EXECUTORS)
    await app.add_task("send_email", {"to": "ann@example.com"})
    await app.add_task("fail", {"n": 7})
    return app


def traced() -> TaskQueueService:
    """A worker's app (its broker given with --broker) exporting its spans, one JSON per
    line, to the file named by KATANA_TEST_SPANS_FILE."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    out = open(os.environ["KATANA_TEST_SPANS_FILE"], "a")  # noqa: SIM115  # open until exit
    provider = TracerProvider()
    exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(tracer_provider=provider)
    return TaskQueueService(InMemoryBroker(), EXECUTORS)


def on_redis() -> TaskQueueService:
    """An app whose own broker is Redis on the queue KATANA_TEST_APP_QUEUE names, at a URL
    where nothing listens: only KATANA_BROKER_URL (or --broker) gives it a connection."""
    from katana.task_queue.broker.redis import RedisBroker  # the tests that use it have redis

    broker = RedisBroker("redis://127.0.0.1:1/0", queue=os.environ["KATANA_TEST_APP_QUEUE"])
    return TaskQueueService(broker, EXECUTORS)

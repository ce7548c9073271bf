"""``/metrics`` for a worker process: a small HTTP server thread beside the event loop.

Prometheus scrapes each worker process for its own counters; the queue gauges are read from
the broker at scrape time, on the worker's event loop, so the answer is current.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from .metrics import CONTENT_TYPE_LATEST, KatanaMetrics

if TYPE_CHECKING:
    from .broker.base import AbstractBroker

__all__ = ["MetricsServer"]

logger = logging.getLogger(__name__)

#: Longest a scrape waits for the broker before it answers 503.
_REFRESH_TIMEOUT_SECONDS = 5.0


class MetricsServer:
    """Serves ``GET /metrics`` on ``host:port`` until ``stop()``; call ``start()`` on the loop."""

    def __init__(
        self,
        broker: AbstractBroker,
        *,
        host: str = "127.0.0.1",
        port: int = 9100,
        metrics: KatanaMetrics | None = None,
    ) -> None:
        self.broker = broker
        self.metrics = KatanaMetrics(queue=broker.queue) if metrics is None else metrics
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.metrics.install()
        server = ThreadingHTTPServer(self._address, _handler(self, loop))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="katana-metrics", daemon=True
        )
        self._thread.start()
        logger.info("metrics on http://%s:%d/metrics", self._address[0], self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.metrics.uninstall()

    def exposition(self, loop: asyncio.AbstractEventLoop) -> bytes:
        """Called on the server thread: refresh the gauges on the loop, then render."""
        refresh = asyncio.run_coroutine_threadsafe(self.metrics.refresh(self.broker), loop)
        refresh.result(timeout=_REFRESH_TIMEOUT_SECONDS)
        return self.metrics.render()


def _handler(
    server: MetricsServer, loop: asyncio.AbstractEventLoop
) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._reply(404, b"only /metrics is served here\n", "text/plain")
                return
            try:
                body = server.exposition(loop)
            except Exception as exc:  # the broker is down or slow: say so, keep serving
                self._reply(503, f"cannot read the queue: {exc}\n".encode(), "text/plain")
                return
            self._reply(200, body, CONTENT_TYPE_LATEST)

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # stdlib's name
            logger.debug("metrics request from %s: %s", self.address_string(), format % args)

    return MetricsHandler

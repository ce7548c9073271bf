"""A real uvicorn server on a free loopback port, in a thread, for the browser to talk to."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["RunningServer"]


class RunningServer:
    """Serves ``app`` on 127.0.0.1 (a port the OS picks) until ``stop()``.

    In its own thread and event loop, so a test can drive a browser with the sync Playwright
    API while the app's lifespan runs its workers.
    """

    def __init__(self, app: FastAPI, *, startup_timeout: float = 20.0) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + startup_timeout
        while not self._server.started:  # uvicorn has no startup callback: poll its flag
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        [listening] = self._server.servers
        port = listening.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self, timeout: float = 15.0) -> None:
        """Ask uvicorn to exit (running the app's lifespan exit) and wait for it."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the test server did not stop")

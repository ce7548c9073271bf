"""A private redis-server on a free loopback port that tests may stop, kill and restart."""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self

import pytest

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

__all__ = ["DURABLE", "RedisServer", "RedisServers", "free_port"]

#: Every acknowledged write is on disk before Redis replies: a ``kill -9`` loses none of them.
DURABLE: Mapping[str, str] = {"appendonly": "yes", "appendfsync": "always"}

_HOST = "127.0.0.1"
#: How long a server may take to answer PING after it was started (AOF loading included).
_START_SECONDS = 15.0
#: How long a server may take to exit after SIGTERM before it is killed.
_STOP_SECONDS = 10.0


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    """True if a Redis server on ``port`` replies ``+PONG`` (not ``-LOADING``) right now."""
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process bound to 127.0.0.1, with its data in ``directory``.

    The port and directory stay the same across ``kill``/``stop`` and ``start``, so a restart
    loads what the previous run persisted. ``options`` are passed as ``--name value``.
    """

    def __init__(
        self, directory: Path, *, options: Mapping[str, str] | None = None, port: int | None = None
    ) -> None:
        self.directory = directory
        self.options = {"save": "", **(options or {})}
        self.port = port if port is not None else free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def _command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            _HOST,
            "--dir",
            str(self.directory),
            "--logfile",
            str(self._log),
            "--daemonize",
            "no",
        ]
        for name, value in self.options.items():
            command += [f"--{name}", value]
        return command

    def start(self, timeout: float = _START_SECONDS) -> None:
        """Start the server and return once it answers PING; raise if it does not in time."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self._process = subprocess.Popen(
            self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        atexit.register(self._kill_quietly)
        deadline = time.monotonic() + timeout
        while not _answers_ping(self.port):
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(
                    f"redis-server on port {self.port} exited at start:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(
                    f"redis-server on port {self.port} did not answer PING within {timeout}s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)

    def kill(self) -> None:
        """``kill -9`` the server, as a crash or the OOM killer would, and reap it."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM), killing it if it does not exit in time."""
        self._end(signal.SIGTERM)

    def restart(self) -> None:
        """Start again on the same port and directory (kill it first if it is running)."""
        if self.running:
            self.kill()
        self.start()

    def _end(self, signum: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self._kill_quietly)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
            try:
                process.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _kill_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class RedisServers:
    """Creates private servers, each in its own temporary directory; ``close`` ends them all."""

    def __init__(self) -> None:
        self._servers: list[RedisServer] = []
        self._directories: list[Path] = []

    def new(
        self,
        options: Mapping[str, str] | None = None,
        *,
        start: bool = True,
        port: int | None = None,
    ) -> RedisServer:
        """A server with ``options``; started (and answering PING) unless ``start`` is False."""
        directory = Path(tempfile.mkdtemp(prefix="katana-redis-"))
        self._directories.append(directory)
        server = RedisServer(directory, options=options, port=port)
        self._servers.append(server)
        if start:
            server.start()
        return server

    def close(self) -> None:
        for server in self._servers:
            server.kill()
        for directory in self._directories:
            shutil.rmtree(directory, ignore_errors=True)
        self._servers.clear()
        self._directories.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
